"""Anomaly map of DHKD: the teacher-student discrepancy.

For every scale ``k`` the discrepancy is the mean squared difference over channels between the student's
prediction and the teacher's latent, ``d_k = mean_c (S_k - T_k)^2``. Because the flow latents are whitened (a
standard-normal prior), the discrepancies of all scales are on one scale and are averaged after bilinear
upsampling to the image size, then smoothed with a Gaussian (``sigma = 4`` px, as in Reverse Distillation and
CFLOW) to remove the block artefacts of the coarse scales.
"""

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d
from torch import nn


class AnomalyMapGenerator(nn.Module):
    """Fuse per-scale teacher-student discrepancies into one smoothed anomaly map.

    Args:
        sigma: Standard deviation of the Gaussian smoothing in pixels; ``0`` disables smoothing.

    """

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        kernel_size = 2 * int(4.0 * sigma + 0.5) + 1
        self.blur = GaussianBlur2d(sigma=sigma, channels=1, kernel_size=kernel_size) if sigma > 0 else nn.Identity()

    @staticmethod
    def discrepancy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Per-position squared discrepancy ``mean_c (S - T)^2`` of shape ``(N, 1, H, W)``."""
        return (student - teacher).pow(2).mean(dim=1, keepdim=True)

    def forward(
        self,
        student: list[torch.Tensor],
        teacher: list[torch.Tensor],
        image_size: tuple[int, int],
    ) -> torch.Tensor:
        """Return the anomaly map of shape ``(N, 1, *image_size)``."""
        maps = [
            F.interpolate(self.discrepancy(s, t), size=image_size, mode="bilinear", align_corners=False)
            for s, t in zip(student, teacher, strict=True)
        ]
        return self.blur(torch.stack(maps).mean(dim=0))
