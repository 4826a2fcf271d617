"""``python -m anomalib_dhkd.demo``: train, test and visualise DHKD offline (:mod:`anomalib_dhkd.tools.demo`)."""

from anomalib_dhkd.tools.demo import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
