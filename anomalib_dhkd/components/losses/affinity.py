"""Teacher-student affinity loss.

Besides matching each position's representation, the student should reproduce how positions relate to one
another: the spatial self-similarity (affinity) matrix of its representation should equal the teacher's. The
affinity is the cosine similarity between every pair of positions, computed on maps average-pooled to at most
``max_size`` x ``max_size`` positions so that its ``(HW)^2`` cost stays bounded at any input size.

In DHKD, our reading of "Unsupervised Image Anomaly Detection with Denoised Heterogeneous Networks via Knowledge
Distillation", this is the affinity term ``L_aff(S, T)`` of the training objective, beside the per-position
distillation term ``L_kd`` (model README, "Architecture as built").
"""

import torch
import torch.nn.functional as F  # noqa: N812
from einops import rearrange
from torch import nn


def affinity_matrix(features: torch.Tensor) -> torch.Tensor:
    """Cosine self-similarity between all spatial positions.

    Args:
        features: Representation of shape ``(N, C, H, W)``.

    Returns:
        Affinity matrices of shape ``(N, H*W, H*W)``.

    Example:
        >>> import torch
        >>> features = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]]])  # (1, 2, 1, 2): two parallel positions
        >>> affinity_matrix(features)
        tensor([[[1., 1.],
                 [1., 1.]]])

    """
    positions = F.normalize(rearrange(features, "n c h w -> n (h w) c"), dim=-1)
    return positions @ positions.transpose(1, 2)


class AffinityLoss(nn.Module):
    """Mean squared difference between student and teacher affinity matrices, averaged over scales.

    Args:
        max_size: Side length to which larger maps are average-pooled before computing affinities.

    Example:
        >>> import torch
        >>> loss = AffinityLoss(max_size=16)
        >>> teacher = [torch.randn(2, 8, 32, 32)]
        >>> loss([torch.randn(2, 8, 32, 32)], teacher).shape  # a scalar
        torch.Size([])

    """

    def __init__(self, max_size: int = 16) -> None:
        super().__init__()
        self.max_size = max_size

    def _pool(self, features: torch.Tensor) -> torch.Tensor:
        height, width = features.shape[-2:]
        if max(height, width) <= self.max_size:
            return features
        return F.adaptive_avg_pool2d(features, (min(height, self.max_size), min(width, self.max_size)))

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        """Return the affinity loss between per-scale student and teacher representations.

        Args:
            student: Student representation per scale, each of shape ``(N, C_k, H_k, W_k)``.
            teacher: Teacher representation per scale, in the same order and of the same shapes.

        Returns:
            Scalar loss: the mean over scales of the mean squared difference of the affinity matrices.

        """
        losses = [
            F.mse_loss(affinity_matrix(self._pool(s)), affinity_matrix(self._pool(t)))
            for s, t in zip(student, teacher, strict=True)
        ]
        return torch.stack(losses).mean()
