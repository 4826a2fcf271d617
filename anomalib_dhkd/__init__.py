"""Knowledge-distillation anomaly detection models for anomalib.

Importing this package is cheap: the models (and torch) load on first attribute access, so the start-up hook
(:mod:`anomalib_dhkd._autoload`) can import it from every interpreter without a cost.

Example:
    >>> from anomalib_dhkd import Dhkd
    >>> model = Dhkd(backbone="tf_efficientnet_lite0")

"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Dhkd"]

if TYPE_CHECKING:
    from anomalib_dhkd.models import Dhkd


def __getattr__(name: str) -> Any:
    """Import models lazily so that ``import anomalib_dhkd`` does not import torch."""
    if name in __all__:
        from anomalib_dhkd import models

        return getattr(models, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
