"""``python -m anomalib_dhkd.predict``: score images with an exported model (:mod:`.deployment.predict`).

Command line::

    python -m anomalib_dhkd.predict MODEL.xml|MODEL.onnx IMAGES [--out results/predictions] [--runtime openvino]
"""

import sys

from anomalib_dhkd.deployment.predict import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    sys.exit(main())
