"""Dmdd: dual-modeling decouple distillation (decoupled student, foreground-aware synthesis, segmentation head)."""

from anomalib_dhkd.models.dmdd.lightning_model import Dmdd
from anomalib_dhkd.models.dmdd.loss import DmddLoss
from anomalib_dhkd.models.dmdd.torch_model import DmddModel

__all__ = ["Dmdd", "DmddLoss", "DmddModel"]
