"""Knowledge-distillation anomaly detection models for anomalib.

Importing this package is cheap: the models (and torch) load on first attribute access, so the start-up hook
(:mod:`anomalib_dhkd._autoload`) can import it from every interpreter without a cost.

Example:
    >>> from anomalib_dhkd import Dhkd
    >>> model = Dhkd(backbone="tf_efficientnet_lite0")  # offline ImageNet weights needed  # doctest: +SKIP
    >>> model = Dhkd(backbone="resnet18", pre_trained=False)  # a random encoder, no weights

"""

from typing import TYPE_CHECKING

from anomalib_dhkd._lazy import lazy_attributes

__version__ = "0.1.0"
__all__ = ["AsymmetricTs", "Bikd", "Dhkd", "Dmdd"]

if TYPE_CHECKING:
    from anomalib_dhkd.models import AsymmetricTs, Bikd, Dhkd, Dmdd


__getattr__ = lazy_attributes(__name__, "anomalib_dhkd.models", __all__)
