"""Models of the plugin and their registration with anomalib.

Importing this module adds every model of :data:`MODELS` to ``anomalib.models``; the start-up hook
(:mod:`anomalib_dhkd._autoload`) imports it as soon as ``anomalib.models`` is imported, so
``anomalib train --model Dhkd`` and ``get_model("dhkd")`` work without importing the plugin.

Example:
    >>> from anomalib.models import get_model
    >>> type(get_model("dhkd", backbone="resnet18", pre_trained=False)).__name__
    'Dhkd'

"""

import importlib
from types import ModuleType

from anomalib_dhkd.models.asymmetric_ts import AsymmetricTs
from anomalib_dhkd.models.base import KnowledgeDistillationModule
from anomalib_dhkd.models.bikd import Bikd
from anomalib_dhkd.models.dhkd import (
    OFFLINE_BACKBONE,
    OFFLINE_LAYERS,
    OFFLINE_SCORE_LAYERS,
    Dhkd,
    offline_dhkd,
    offline_preset,
)
from anomalib_dhkd.models.dmdd import Dmdd

# Every model of the family: registered with anomalib, covered by the contract tests and the benchmark suite.
MODELS: tuple[type[KnowledgeDistillationModule], ...] = (Dhkd, AsymmetricTs, Bikd, Dmdd)

__all__ = [
    "MODELS",
    "OFFLINE_BACKBONE",
    "OFFLINE_LAYERS",
    "OFFLINE_SCORE_LAYERS",
    "AsymmetricTs",
    "Bikd",
    "Dhkd",
    "Dmdd",
    "KnowledgeDistillationModule",
    "offline_dhkd",
    "offline_preset",
    "register",
]


def register(anomalib_models: ModuleType) -> None:
    """Expose the plugin's models as attributes of ``anomalib.models``.

    ``anomalib.models.get_model`` and ``anomalib benchmark`` look models up there by class name.

    Args:
        anomalib_models: The imported ``anomalib.models`` module.

    """
    for model_class in MODELS:
        setattr(anomalib_models, model_class.__name__, model_class)
        if model_class.__name__ not in anomalib_models.__all__:
            anomalib_models.__all__.append(model_class.__name__)


register(importlib.import_module("anomalib.models"))
