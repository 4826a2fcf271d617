"""DHKD: Denoising Heterogeneous Knowledge Distillation.

Our reading of "Unsupervised Image Anomaly Detection with Denoised Heterogeneous Networks via Knowledge
Distillation": a normalizing-flow teacher, dual-domain denoising students (the paper's Sec. 3.2 distillation) and
the family's scorer. What the paper leaves open, and the measurements behind each choice, are in the model README.
"""

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
