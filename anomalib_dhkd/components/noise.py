"""Gaussian feature noise for denoising students, independent or spatially correlated.

DHKD's student is trained to *denoise*: it sees noisy features and reproduces the teacher's latent of the clean ones
(Sec. 3.2 of "Unsupervised Image Anomaly Detection with Denoised Heterogeneous Networks via Knowledge
Distillation"). This module draws that noise. Its spatial correlation is this implementation's choice, not the
paper's: a defect perturbs neighbouring feature cells together (see the model README, "Our reading where the paper
is vague"). The same function, uncorrelated, dequantises the flow teacher's likelihood input.
"""

import torch
from anomalib.models.components.filters.blur import compute_kernel_size
from kornia.filters import filter2d_separable, get_gaussian_kernel1d


def add_feature_noise(features: torch.Tensor, level: float, correlation: float = 0.0) -> torch.Tensor:
    """Add zero-mean Gaussian noise whose standard deviation is ``level`` times each channel's own.

    Scaling by the per-channel standard deviation over batch and space makes ``level`` mean the same at every
    feature scale and for every backbone.

    With ``correlation > 0`` the noise is white noise smoothed by a Gaussian of that standard deviation in feature
    cells, rescaled to unit variance: neighbouring positions are perturbed together (at a distance of ``d`` cells the
    noise correlates by ``exp(-d^2 / (4 correlation^2))``), as a defect spanning several cells perturbs them. The
    white noise is drawn on a field larger by the kernel's radius and filtered without padding, so the noise is
    stationary up to the border and a map smaller than the kernel still gets it.

    Args:
        features: Feature map of shape ``(N, C, H, W)``.
        level: Noise standard deviation relative to the feature standard deviation; ``0`` returns the input.
        correlation: Spatial correlation length of the noise in feature cells (the smoothing Gaussian's standard
            deviation); ``0``: independent at every position.

    Returns:
        Noisy features of the same shape.

    Raises:
        ValueError: If ``level`` or ``correlation`` is negative.

    Example:
        >>> import torch
        >>> features = torch.randn(2, 4, 8, 8)
        >>> add_feature_noise(features, level=0.0) is features
        True
        >>> add_feature_noise(features, level=0.5, correlation=1.0).shape
        torch.Size([2, 4, 8, 8])

    """
    if level < 0 or correlation < 0:
        msg = f"Noise level and correlation must be non-negative, got {level} and {correlation}."
        raise ValueError(msg)
    if level == 0:
        return features
    channel_std = features.detach().std(dim=(0, 2, 3), keepdim=True) if features.numel() > features.shape[1] else 1.0
    return features + level * channel_std * gaussian_noise(features, correlation)


def gaussian_noise(like: torch.Tensor, correlation: float) -> torch.Tensor:
    """Unit-variance Gaussian noise of ``like``'s shape, smoothed over space by ``correlation`` cells (``0``: white).

    Drawn in (N, C, H, W) order, not with randn_like, which fills a channels-last tensor in memory order: the same
    seed then gives the same noise whatever the memory layout.

    Args:
        like: Tensor of shape ``(N, C, H, W)`` whose shape, dtype and device the noise takes.
        correlation: Standard deviation of the smoothing Gaussian in feature cells; ``0``: white noise.

    Returns:
        Noise of ``like``'s shape with zero mean and unit variance at every position.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> noise = gaussian_noise(torch.empty(64, 1, 16, 16), correlation=2.0)
        >>> noise.shape, round(noise.std().item(), 1)
        (torch.Size([64, 1, 16, 16]), 1.0)

    """
    if correlation == 0:
        return torch.randn(like.shape, dtype=like.dtype, device=like.device)
    kernel = get_gaussian_kernel1d(compute_kernel_size(correlation), correlation, device=like.device, dtype=like.dtype)
    radius = kernel.shape[-1] // 2
    batch, channels, height, width = like.shape
    white = torch.randn(batch, channels, height + 2 * radius, width + 2 * radius, dtype=like.dtype, device=like.device)
    # The 2-D kernel is the outer product of the 1-D one, so smoothing scales the variance by (sum of k^2)^2.
    return filter2d_separable(white, kernel, kernel, padding="valid") / kernel.pow(2).sum()
