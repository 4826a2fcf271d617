"""DHKD: Denoising Heterogeneous Knowledge Distillation."""

from anomalib_dhkd.models.dhkd.lightning_model import Dhkd
from anomalib_dhkd.models.dhkd.torch_model import DhkdModel

__all__ = ["Dhkd", "DhkdModel"]
