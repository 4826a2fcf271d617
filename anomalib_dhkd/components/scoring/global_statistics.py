"""Image-level statistics of feature maps: a Gaussian of each image's per-channel means and standard deviations.

A defect that changes a whole image a little (uneven lighting, a crack across the tile) can stay under every local
threshold and still move the image's feature statistics far from those of normal images.
"""

import torch
from torch import nn


def channel_statistics(features: torch.Tensor) -> torch.Tensor:
    """Return the per-image mean and standard deviation of each channel over all positions.

    Args:
        features: Feature maps ``(N, C, H, W)``.

    Returns:
        The means, then the standard deviations, ``(N, 2C)``.

    Example:
        >>> channel_statistics(torch.rand(2, 3, 4, 4)).shape
        torch.Size([2, 6])

    """
    return torch.cat([features.mean(dim=(2, 3)), features.std(dim=(2, 3))], dim=1)


def vector_moments(vectors: torch.Tensor) -> torch.Tensor:
    """Return the count, sums and outer-product sums of vectors as one float64 matrix.

    It is the Gram matrix of the vectors with a leading 1: the count at ``[0, 0]``, the sums in row 0 and their
    outer products below. Moments of several batches (or processes) add up.

    Args:
        vectors: Vectors ``(N, D)``.

    Returns:
        The moments ``(D + 1, D + 1)``.

    Example:
        >>> vector_moments(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        tensor([[ 2.,  4.,  6.],
                [ 4., 10., 14.],
                [ 6., 14., 20.]], dtype=torch.float64)

    """
    augmented = torch.cat([torch.ones_like(vectors[:, :1]), vectors], dim=1).double()
    return augmented.T @ augmented


class GaussianDistance(nn.Module):
    """Squared Mahalanobis distance of vectors to a Gaussian fitted on normal ones.

    The covariance is shrunk towards a scaled identity, ``(1 - s) C + s mean(diag C) I`` (Ledoit-Wolf style), so
    that it can be inverted with fewer images than dimensions. Until :meth:`fit` every distance is 0. Hand-written
    because anomalib's ``MultiVariateGaussian`` fits from all embeddings at once, while this one sums moments over
    batches and processes.

    Args:
        dim: Dimension of the vectors.
        shrinkage: Weight ``s`` of the identity in the shrunk covariance, in ``(0, 1]``.

    Raises:
        ValueError: If ``shrinkage`` is outside ``(0, 1]``.

    Example:
        >>> normal = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
        >>> distance = GaussianDistance(2)
        >>> distance.fit(vector_moments(normal))
        >>> distance(torch.tensor([[1.0, 1.0], [3.0, 1.0]]))
        tensor([0., 3.])

    """

    def __init__(self, dim: int, shrinkage: float = 0.01) -> None:
        super().__init__()
        if not 0 < shrinkage <= 1:
            msg = f"shrinkage must be in (0, 1], got {shrinkage}."
            raise ValueError(msg)
        self.shrinkage = shrinkage
        self.mean: torch.Tensor
        self.precision: torch.Tensor
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("precision", torch.zeros(dim, dim))

    def fit(self, moments: torch.Tensor) -> None:
        """Set mean and precision from summed :func:`vector_moments` of at least two normal vectors.

        Args:
            moments: Summed moments ``(D + 1, D + 1)``.

        Raises:
            ValueError: With fewer than two vectors, since a covariance needs two.

        """
        count, sums, outer_sums = moments[0, 0], moments[0, 1:], moments[1:, 1:]
        if count < 2:
            msg = f"A Gaussian of image statistics needs at least two normal images, got {int(count)}."
            raise ValueError(msg)
        mean = sums / count
        covariance = (outer_sums - count * torch.outer(mean, mean)) / (count - 1)
        scale = covariance.diagonal().mean().clamp_min(torch.finfo(torch.float32).tiny)
        identity = torch.eye(len(mean), dtype=covariance.dtype, device=covariance.device)
        shrunk = (1 - self.shrinkage) * covariance + self.shrinkage * scale * identity
        self.mean = mean.to(self.mean)
        self.precision = torch.cholesky_inverse(torch.linalg.cholesky(shrunk)).to(self.precision)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """Return the squared Mahalanobis distances of vectors; 0 until fitted.

        Args:
            vectors: Vectors ``(N, D)``.

        Returns:
            The distances ``(N,)``.

        """
        centred = vectors - self.mean
        return ((centred @ self.precision) * centred).sum(dim=1)

    def extra_repr(self) -> str:
        """Show the dimension and the shrinkage."""
        return f"dim={len(self.mean)}, shrinkage={self.shrinkage}"
