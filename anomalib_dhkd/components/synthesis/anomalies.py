"""Synthetic anomalies on the object only: anomalib's Perlin-noise anomalies, masked to the foreground.

DRAEM-style synthesis (Zavrtanik et al., ICCV 2021, Sec. 3.3) pastes textures through Perlin-noise masks anywhere in
the image, also on the background, where no real defect occurs on a part. Restricting the masks to the object's
foreground (:func:`~anomalib_dhkd.components.synthesis.foreground.foreground_mask`) is the "augmentation that
eliminates unnecessary noise" of the bidirectional KD paper and the foreground-aware synthesis of the decoupled one.
The textures are anomalib's own Perlin textures, or the images of ``anomaly_source_path`` (a DTD folder, or
scikit-image's texture photographs offline).
"""

from pathlib import Path

import torch
from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
from torch import nn

from anomalib_dhkd.components.synthesis.foreground import foreground_mask


class ForegroundAnomalies(nn.Module):
    """Paint Perlin-shaped anomalies on the object of each image; return the images and the anomaly masks.

    Args:
        anomaly_source_path: Folder of texture images; ``None``: anomalib's Perlin-noise textures.
        probability: Share of images that get an anomaly.
        blend_factor: Opacity of the pasted texture, or a ``(low, high)`` range to draw it from.
        on_foreground: Keep anomalies on the object only; ``False``: anywhere, as DRAEM.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> images = torch.zeros(2, 3, 64, 64)
        >>> images[:, :, 16:48, 16:48] = 0.7
        >>> augmented, masks = ForegroundAnomalies(probability=1.0)(images)
        >>> augmented.shape, masks.shape, bool(masks[:, :, :8, :8].any())
        (torch.Size([2, 3, 64, 64]), torch.Size([2, 1, 64, 64]), False)

    """

    def __init__(
        self,
        anomaly_source_path: str | Path | None = None,
        probability: float = 0.5,
        blend_factor: float | tuple[float, float] = (0.2, 1.0),
        on_foreground: bool = True,
    ) -> None:
        super().__init__()
        self.generator = PerlinAnomalyGenerator(anomaly_source_path, probability=probability, blend_factor=blend_factor)
        self.on_foreground = on_foreground

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return augmented images ``(N, C, H, W)`` in ``[0, 1]`` and their anomaly masks ``(N, 1, H, W)``."""
        augmented, masks = self.generator(images)
        if self.on_foreground:
            masks = masks * foreground_mask(images)
        return images + masks * (augmented - images), masks
