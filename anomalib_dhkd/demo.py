"""``python -m anomalib_dhkd.demo``: train, test and visualise DHKD offline (:mod:`anomalib_dhkd.tools.demo`).

Command line::

    python -m anomalib_dhkd.demo [--data ROOT:CATEGORY] [--out results/demo] [--epochs 8] [--image-size 256]
"""

from anomalib_dhkd.tools.demo import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
