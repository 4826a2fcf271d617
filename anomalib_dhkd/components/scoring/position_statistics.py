"""Per-position standardisation of anomaly maps with statistics of normal training images."""

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components.base import DynamicBufferMixin
from torch import nn


def map_moments(maps: torch.Tensor) -> torch.Tensor:
    """Return the count, sum and sum of squares over a batch, element-wise, in float64.

    Moments of several batches (or processes) add up, so statistics can be accumulated batch by batch.

    Args:
        maps: A batch ``(N, ...)``, e.g. maps ``(N, 1, H, W)``.

    Returns:
        The three moments stacked, ``(3, ...)``.

    Example:
        >>> map_moments(torch.ones(4, 1, 2, 2)).shape
        torch.Size([3, 1, 2, 2])

    """
    maps = maps.double()
    return torch.stack([torch.full_like(maps[0], maps.shape[0]), maps.sum(dim=0), maps.pow(2).sum(dim=0)])


def mean_and_std(moments: torch.Tensor, what: str = "Position statistics") -> tuple[torch.Tensor, torch.Tensor]:
    """Return the element-wise mean and sample standard deviation from summed :func:`map_moments`.

    Args:
        moments: Summed moments ``(3, ...)`` of at least two samples.
        what: Name of the statistics in the error message.

    Returns:
        The mean and the standard deviation, each ``(...)``.

    Raises:
        ValueError: With fewer than two samples, since a standard deviation needs two; ``what`` names the statistics.

    Example:
        >>> mean, std = mean_and_std(map_moments(torch.tensor([1.0, 3.0])))
        >>> mean.item(), std.item()
        (2.0, 1.4142135623730951)

    """
    count, total, total_of_squares = moments
    if count.min() < 2:
        msg = f"{what} need at least two normal images, got {int(count.min())}."
        raise ValueError(msg)
    mean = total / count
    variance = (total_of_squares - count * mean.pow(2)) / (count - 1)
    return mean, variance.clamp_min(0).sqrt()


class PositionStandardizer(DynamicBufferMixin, nn.Module):
    """Standardise maps per position: ``(d(p) - mean(p)) / std(p)`` over normal training maps.

    A position of the image that is hard to reconstruct on every normal image (a bright rim, a texture edge) then
    no longer outscores a small defect elsewhere, the way PaDiM models each position's own distribution.

    Until :meth:`fit` it is the identity. The statistics keep the resolution they were fitted at and are bilinearly
    resized for maps of another size; loading a state dict takes the saved statistics' shape (anomalib's
    ``DynamicBufferMixin``).

    Args:
        min_std_ratio: Floor of each position's standard deviation, relative to the mean standard deviation over
            positions, so that a position that never varies cannot divide by zero.

    Example:
        >>> normal = torch.rand(8, 1, 4, 4)
        >>> standardizer = PositionStandardizer()
        >>> standardizer.fit(map_moments(normal))
        >>> bool(standardizer(normal).mean(dim=0).abs().max() < 1e-5)
        True

    """

    def __init__(self, min_std_ratio: float = 0.01) -> None:
        super().__init__()
        self.min_std_ratio = min_std_ratio
        self.register_buffer("mean", torch.zeros(1, 1, 1, 1))
        self.register_buffer("std", torch.ones(1, 1, 1, 1))

    def fit(self, moments: torch.Tensor) -> None:
        """Set the statistics from summed :func:`map_moments` of at least two normal maps.

        Args:
            moments: Summed moments ``(3, 1, H, W)``.

        Raises:
            ValueError: With fewer than two maps, since a standard deviation needs two.

        """
        mean, std = mean_and_std(moments)
        std = std.clamp_min(self.min_std_ratio * std.mean() + torch.finfo(torch.float32).tiny)
        self.mean = mean.unsqueeze(0).to(self.mean)
        self.std = std.unsqueeze(0).to(self.std)

    def overall_std(self) -> torch.Tensor:
        """Return the standard deviation of the fitted maps over all positions and images (total variance).

        Returns:
            A scalar tensor: ``sqrt(mean_p std(p)^2 + var_p mean(p))``.

        Example:
            >>> standardizer = PositionStandardizer()
            >>> standardizer.fit(map_moments(torch.tensor([[[[0.0, 2.0]]], [[[2.0, 4.0]]]])))
            >>> round(standardizer.overall_std().item(), 3)
            1.732

        """
        return (self.std.pow(2).mean() + self.mean.var(correction=0)).sqrt()

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Standardise maps per position; the statistics are resized to the maps' size if it differs.

        Args:
            maps: Maps ``(N, 1, H, W)``.

        Returns:
            The standardised maps, the shape of ``maps``.

        """
        mean, std = self.mean, self.std
        if mean.shape[-2:] != maps.shape[-2:] and mean.shape[-2:] != (1, 1):
            mean = F.interpolate(mean, size=maps.shape[-2:], mode="bilinear", align_corners=False)
            std = F.interpolate(std, size=maps.shape[-2:], mode="bilinear", align_corners=False)
        return (maps - mean) / std
