"""``python -m anomalib_dhkd.check``: the dataset checker (:mod:`anomalib_dhkd.tools.check`).

Command line::

    python -m anomalib_dhkd.check ROOT [--category C] [--image-size 256] [--min-size 32]
"""

import sys

from anomalib_dhkd.tools.check import check_dataset, main

__all__ = ["check_dataset", "main"]

if __name__ == "__main__":
    sys.exit(main())
