"""Models of the plugin and their registration with anomalib."""

import importlib
from types import ModuleType

from anomalib_dhkd.models.dhkd import OFFLINE_BACKBONE, OFFLINE_LAYERS, OFFLINE_SCORE_LAYERS, Dhkd, offline_dhkd

__all__ = ["OFFLINE_BACKBONE", "OFFLINE_LAYERS", "OFFLINE_SCORE_LAYERS", "Dhkd", "offline_dhkd", "register"]


def register(anomalib_models: ModuleType) -> None:
    """Expose the plugin's models as attributes of ``anomalib.models``.

    ``anomalib.models.get_model`` and ``anomalib benchmark`` look models up there by class name.

    Args:
        anomalib_models: The imported ``anomalib.models`` module.

    """
    for model_class in (Dhkd,):
        setattr(anomalib_models, model_class.__name__, model_class)
        if model_class.__name__ not in anomalib_models.__all__:
            anomalib_models.__all__.append(model_class.__name__)


register(importlib.import_module("anomalib.models"))
