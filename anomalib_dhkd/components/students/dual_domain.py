"""Dual-domain (spatial + frequency) reconstruction block.

The student of DHKD ("Unsupervised Image Anomaly Detection with Denoised Heterogeneous Networks via Knowledge
Distillation") is trained to denoise (Sec. 3.2 of the paper): it reconstructs clean teacher targets from noisy
features. Its dual-domain blocks see the feature map in two domains: a local spatial convolution branch and a
global frequency branch that filters the 2-D spectrum. A frequency-domain filter has a receptive field of the whole
map, so it restores structure (periodic texture, global shape) that a stack of small convolutions cannot see.

The paper does not specify the frequency filter. We use a learnable point-wise (1x1) convolution over the stacked
real and imaginary parts of the spectrum, as in Fast Fourier Convolutions: it works for any feature-map size (a
per-frequency weight tensor would tie the model to one input size) and exports as plain convolutions.
"""

from dataclasses import dataclass

import torch
from torch import nn

from anomalib_dhkd.components.students.fourier import irfft2, rfft2
from anomalib_dhkd.components.widths import scaled_channels


@dataclass(frozen=True)
class DenoisingStudentConfig:
    """Settings of per-layer :class:`DualDomainStudent` students trained on noisy features.

    Args:
        blocks: Dual-domain blocks per student.
        noise_level: Standard deviation of the Gaussian noise added to the student's training input, relative to each
            channel's standard deviation.
        noise_correlation: Spatial correlation length of that noise in feature cells; ``0``: independent at every
            position (:func:`~anomalib_dhkd.components.noise.add_feature_noise`).
        hidden_ratio: Width of the student's blocks relative to its input channels (at least 8 channels).

    Example:
        >>> DenoisingStudentConfig(blocks=1, noise_correlation=0.0)
        DenoisingStudentConfig(blocks=1, noise_level=0.5, noise_correlation=0.0, hidden_ratio=1.0)
        >>> DenoisingStudentConfig(hidden_ratio=0.5).hidden_channels(320)
        160

    """

    blocks: int = 2
    noise_level: float = 0.5
    noise_correlation: float = 1.0
    hidden_ratio: float = 1.0

    def hidden_channels(self, channels: int) -> int:
        """Return the width of the blocks of a student of ``channels`` features."""
        return scaled_channels(channels, self.hidden_ratio)


class FrequencyFilter(nn.Module):
    """Learnable filter in the frequency domain: FFT, point-wise convolution on the spectrum, inverse FFT.

    Args:
        channels: Number of feature channels.

    Example:
        >>> import torch
        >>> FrequencyFilter(channels=8)(torch.randn(2, 8, 12, 15)).shape
        torch.Size([2, 8, 12, 15])

    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.spectral_mixer = nn.Sequential(
            nn.Conv2d(2 * channels, 2 * channels, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(2 * channels, 2 * channels, kernel_size=1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Filter ``features`` in the frequency domain.

        Args:
            features: Feature map of shape ``(N, C, H, W)``, any ``H`` and ``W``.

        Returns:
            The filtered map, same shape.

        """
        size = (features.shape[-2], features.shape[-1])
        real, imag = rfft2(features)
        real, imag = self.spectral_mixer(torch.cat([real, imag], dim=1)).chunk(2, dim=1)
        return irfft2(real, imag, size)


class DualDomainBlock(nn.Module):
    """Residual block fusing a spatial convolution branch with a frequency branch.

    ``y = x + W_fuse [spatial(x), frequency(x)]``, with the fusion initialised to zero so that every block starts as
    the identity and a deep student trains stably.

    Args:
        channels: Number of feature channels (input and output).

    Example:
        >>> import torch
        >>> block = DualDomainBlock(channels=8)
        >>> features = torch.randn(2, 8, 16, 16)
        >>> torch.equal(block(features), features)  # the identity until trained
        True

    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.spatial = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )
        self.frequency = FrequencyFilter(channels)
        self.fuse = nn.Conv2d(2 * channels, channels, kernel_size=1)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the reconstructed features.

        Args:
            features: Feature map of shape ``(N, C, H, W)``.

        Returns:
            The input plus the fused output of both branches, same shape.

        """
        fused = self.fuse(torch.cat([self.spatial(features), self.frequency(features)], dim=1))
        return features + fused


class DualDomainStudent(nn.Module):
    """Feed-forward (non-invertible) student: a stem, ``num_blocks`` dual-domain blocks and a projection head.

    Args:
        channels: Channels of the input features and of the predicted representation.
        num_blocks: Number of :class:`DualDomainBlock` layers.
        hidden_channels: Width of the blocks; defaults to ``channels``.

    Example:
        >>> import torch
        >>> student = DualDomainStudent(channels=16, num_blocks=1)
        >>> student(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 16, 8, 8])

    """

    def __init__(self, channels: int, num_blocks: int = 2, hidden_channels: int | None = None) -> None:
        super().__init__()
        hidden_channels = hidden_channels or channels
        self.stem = nn.Conv2d(channels, hidden_channels, kernel_size=3, padding=1)
        self.blocks = nn.Sequential(*(DualDomainBlock(hidden_channels) for _ in range(num_blocks)))
        self.head = nn.Sequential(nn.GELU(), nn.Conv2d(hidden_channels, channels, kernel_size=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Predict the teacher representation from (possibly noisy) features.

        Args:
            features: Standardised encoder features of shape ``(N, C, H, W)``, noisy during training.

        Returns:
            The predicted teacher representation, same shape.

        """
        return self.head(self.blocks(self.stem(features)))
