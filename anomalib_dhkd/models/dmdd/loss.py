"""Loss of Dmdd: normality-guided mimicking, abnormality inverse mimicking and the segmentation head's loss.

Dual-modeling distillation (Liu et al., ACM MM 2024) on a pair of a normal image ``I`` and its copy ``I_a`` with
synthetic anomalies in the mask ``M``:

* NGM: the normality features of both images mimic the teacher's features of the *normal* image,
  ``mean(1 - cos(F_n(I_a), T(I))) + mean(1 - cos(F_n(I), T(I)))``;
* AIM: the abnormality features of ``I_a`` move away from the teacher's features of ``I_a`` inside ``M`` and stay
  close outside it, ``mean_M(1 + cos(F_a, T)) / 2 + mean_{not M}(1 - cos(F_a, T))`` (our reading of "widens the
  distance ... inside the anomalous regions");
* the segmentation head's focal + Dice loss on ``M``
  (:func:`~anomalib_dhkd.components.losses.segmentation_loss`).
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_dhkd.components.losses import segmentation_loss


class DmddLossTerms(NamedTuple):
    """The loss and its terms, for logging."""

    total: torch.Tensor
    normality: torch.Tensor
    abnormality: torch.Tensor
    segmentation: torch.Tensor


def cosine_distance(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per-position ``1 - cos`` over channels, ``(N, 1, H, W)``.

    Example:
        >>> features = torch.rand(1, 4, 2, 2)
        >>> float(cosine_distance(features, -features).mean())
        2.0

    """
    return 1 - F.cosine_similarity(first, second, dim=1).unsqueeze(1)


def masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of ``values``; 0 where the weights sum to 0."""
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def normality_guided_mimicking(
    normal: list[torch.Tensor], augmented: list[torch.Tensor], teacher: list[torch.Tensor]
) -> torch.Tensor:
    """NGM: both images' normality features mimic the teacher's features of the normal image, summed over scales."""
    pairs = zip(normal, augmented, teacher, strict=True)
    return sum(cosine_distance(n, t).mean() + cosine_distance(a, t).mean() for n, a, t in pairs)


def abnormality_inverse_mimicking(
    abnormal: list[torch.Tensor], teacher: list[torch.Tensor], masks: torch.Tensor
) -> torch.Tensor:
    """AIM: abnormality features move away from the teacher's inside the anomaly masks and stay close outside.

    Args:
        abnormal: Abnormality features of the augmented images per scale.
        teacher: Teacher features of the augmented images per scale.
        masks: Anomaly masks ``(N, 1, H, W)`` at image resolution.

    Returns:
        The loss summed over scales; it decreases as the features inside the masks turn away from the teacher's.

    """
    total = torch.zeros((), device=masks.device)
    for features, target in zip(abnormal, teacher, strict=True):
        inside = F.adaptive_max_pool2d(masks, features.shape[-2:])
        distance = cosine_distance(features, target)
        total = total + masked_mean(1 - distance / 2, inside) + masked_mean(distance, 1 - inside)
    return total


class DmddLoss(torch.nn.Module):
    """NGM + AIM + the segmentation head's loss.

    Args:
        normality_weight: Weight of NGM; ``0``: ablation without it.
        abnormality_weight: Weight of AIM; ``0``: ablation without it.

    Raises:
        ValueError: If a weight is negative.

    Example:
        >>> features, masks = [torch.rand(2, 4, 4, 4)], torch.zeros(2, 1, 16, 16)
        >>> terms = DmddLoss()(features, features, features, features, features, torch.full_like(masks, -5.0), masks)
        >>> round(float(terms.normality), 4), round(float(terms.abnormality), 4)
        (0.0, 0.0)

    """

    def __init__(self, normality_weight: float = 1.0, abnormality_weight: float = 1.0) -> None:
        super().__init__()
        weights = {"normality_weight": normality_weight, "abnormality_weight": abnormality_weight}
        negative = {name: value for name, value in weights.items() if value < 0}
        if negative:
            msg = f"Dmdd's loss weights must be non-negative, got {negative}."
            raise ValueError(msg)
        self.normality_weight = normality_weight
        self.abnormality_weight = abnormality_weight

    def forward(
        self,
        teacher_normal: list[torch.Tensor],
        teacher_augmented: list[torch.Tensor],
        normality_normal: list[torch.Tensor],
        normality_augmented: list[torch.Tensor],
        abnormality_augmented: list[torch.Tensor],
        logits: torch.Tensor,
        masks: torch.Tensor,
    ) -> DmddLossTerms:
        """Return the total loss and its terms (unweighted)."""
        normality = normality_guided_mimicking(normality_normal, normality_augmented, teacher_normal)
        abnormality = abnormality_inverse_mimicking(abnormality_augmented, teacher_augmented, masks)
        segmentation = segmentation_loss(logits, F.interpolate(masks, size=logits.shape[-2:], mode="bilinear"))
        total = self.normality_weight * normality + self.abnormality_weight * abnormality + segmentation
        return DmddLossTerms(total, normality, abnormality, segmentation)
