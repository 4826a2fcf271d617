"""``python -m anomalib_dhkd.weights``: the offline ImageNet weights (:mod:`anomalib_dhkd.tools.weights`).

Command line::

    python -m anomalib_dhkd.weights install [--force] [--cache-dir DIR]
    python -m anomalib_dhkd.weights check [--cache-dir DIR]
"""

import sys

from anomalib_dhkd.tools.weights import check_efficientnet_lite0, install_efficientnet_lite0, main

__all__ = ["check_efficientnet_lite0", "install_efficientnet_lite0", "main"]

if __name__ == "__main__":
    sys.exit(main())
