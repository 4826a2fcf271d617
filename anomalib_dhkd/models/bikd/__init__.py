"""Bikd: bidirectional knowledge distillation (forward student, reverse decoder, reciprocal exchange)."""

from anomalib_dhkd.models.bikd.lightning_model import Bikd
from anomalib_dhkd.models.bikd.loss import BikdLoss
from anomalib_dhkd.models.bikd.torch_model import BikdModel

__all__ = ["Bikd", "BikdLoss", "BikdModel"]
