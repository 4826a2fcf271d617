"""Losses of a segmentation head trained on the masks of synthetic anomalies: focal and soft Dice.

Synthetic anomalies cover a few percent of an image, so a plain cross-entropy is dominated by the easy normal
pixels. The focal loss (Lin et al., ICCV 2017, Sec. 3.2) down-weights well-classified pixels (kornia's
``binary_focal_loss_with_logits``); the soft Dice loss measures the overlap of the predicted and true anomaly regions
whatever their size. DRAEM (Zavrtanik et al., ICCV 2021) and DeSTSeg (Zhang et al., CVPR 2023) train their
segmentation heads with such a pair.
"""

import torch
from kornia.losses import binary_focal_loss_with_logits


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2 |P * M| + s) / (|P| + |M| + s)`` per image, averaged, with ``P = sigmoid(logits)``.

    Args:
        logits: Predicted anomaly logits ``(N, 1, H, W)``.
        masks: True anomaly masks ``(N, 1, H, W)`` in ``[0, 1]``.
        smooth: Added to both terms, so that an image without anomaly predicted without anomaly costs 0.

    Returns:
        The loss, a scalar in ``[0, 1]``.

    Example:
        >>> masks = torch.zeros(1, 1, 4, 4)
        >>> masks[..., :2, :2] = 1
        >>> round(float(soft_dice_loss(100 * (2 * masks - 1), masks)), 4)
        0.0

    """
    probabilities = logits.sigmoid().flatten(1)
    masks = masks.flatten(1)
    overlap = (probabilities * masks).sum(dim=1)
    total = probabilities.sum(dim=1) + masks.sum(dim=1)
    return (1 - (2 * overlap + smooth) / (total + smooth)).mean()


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Focal loss (alpha 0.25, gamma 2, mean over pixels) plus soft Dice loss of anomaly logits against masks.

    Args:
        logits: Predicted anomaly logits ``(N, 1, H, W)``.
        masks: True anomaly masks ``(N, 1, H, W)`` in ``[0, 1]``.

    Returns:
        The loss, a scalar.

    Example:
        >>> masks, unsure, normal = torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), torch.full((2, 1, 8, 8), -5.0)
        >>> bool(segmentation_loss(unsure, masks) > segmentation_loss(normal, masks))
        True

    """
    focal = binary_focal_loss_with_logits(logits, masks, alpha=0.25, gamma=2.0, reduction="mean")
    return focal + soft_dice_loss(logits, masks)
