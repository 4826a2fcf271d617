"""Gaussian feature noise for denoising students."""

import torch


def add_feature_noise(features: torch.Tensor, level: float) -> torch.Tensor:
    """Add zero-mean Gaussian noise whose standard deviation is ``level`` times each channel's own.

    Scaling by the per-channel standard deviation over batch and space makes ``level`` mean the same at every
    feature scale and for every backbone.

    Args:
        features: Feature map of shape ``(N, C, H, W)``.
        level: Noise standard deviation relative to the feature standard deviation; ``0`` returns the input.

    Returns:
        Noisy features of the same shape.

    """
    if level < 0:
        msg = f"Noise level must be non-negative, got {level}."
        raise ValueError(msg)
    if level == 0:
        return features
    channel_std = features.detach().std(dim=(0, 2, 3), keepdim=True) if features.numel() > features.shape[1] else 1.0
    # Drawn in (N, C, H, W) order, not with randn_like, which fills a channels-last tensor in memory order: the same
    # seed then gives the same noise whatever the memory layout.
    noise = torch.randn(features.shape, dtype=features.dtype, device=features.device)
    return features + level * channel_std * noise
