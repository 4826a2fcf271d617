"""Losses shared by the family's models."""

from anomalib_dhkd.components.losses.affinity import AffinityLoss, affinity_matrix

__all__ = ["AffinityLoss", "affinity_matrix"]
