"""DHKD: Denoising Heterogeneous Knowledge Distillation."""

from anomalib_dhkd.models.dhkd.lightning_model import Dhkd
from anomalib_dhkd.models.dhkd.loss import DhkdLossWeights
from anomalib_dhkd.models.dhkd.presets import (
    OFFLINE_BACKBONE,
    OFFLINE_LAYERS,
    OFFLINE_SCORE_LAYERS,
    offline_dhkd,
    offline_preset,
)
from anomalib_dhkd.models.dhkd.torch_model import DhkdModel

__all__ = [
    "OFFLINE_BACKBONE",
    "OFFLINE_LAYERS",
    "OFFLINE_SCORE_LAYERS",
    "Dhkd",
    "DhkdLossWeights",
    "DhkdModel",
    "offline_dhkd",
    "offline_preset",
]
