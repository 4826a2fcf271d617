"""Losses shared by the family's models."""

from anomalib_dhkd.components.losses.affinity import AffinityLoss, affinity_matrix
from anomalib_dhkd.components.losses.segmentation import segmentation_loss, soft_dice_loss

__all__ = ["AffinityLoss", "affinity_matrix", "segmentation_loss", "soft_dice_loss"]
