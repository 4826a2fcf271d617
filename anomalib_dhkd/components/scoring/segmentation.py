"""A segmentation head that turns per-scale discrepancy maps into an anomaly map, with several kinds of attention.

The decoupled distillation paper (Liu et al., "Dual-Modeling Decouple Distillation for Unsupervised Anomaly
Detection", ACM MM 2024) ends in a multi-perception segmentation network that fuses the anomaly maps "with multiple
attention" and is trained on the masks of synthetic anomalies. Our reading: a residual convolution block, channel
and spatial attention (CBAM, Woo et al., ECCV 2018: timm's ``cbam`` module) and multi-scale context from parallel
dilated convolutions (as ASPP in DeepLab v3, Chen et al., 2017), then a 1x1 convolution to one logit per position.
:class:`PixelwiseHead` is the same task without spatial context: it fuses the maps at each position alone.
"""

from collections.abc import Sequence

import torch
from timm.layers import create_attn
from torch import nn


def conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> nn.Sequential:
    """Convolution (same size), BatchNorm and ReLU."""
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DilatedContext(nn.Module):
    """Parallel 3x3 convolutions at several dilations, concatenated and fused by a 1x1 convolution (ASPP-like).

    Args:
        channels: Input and output channels.
        dilations: Dilation of each branch.

    Example:
        >>> DilatedContext(8)(torch.rand(2, 8, 9, 7)).shape
        torch.Size([2, 8, 9, 7])

    """

    def __init__(self, channels: int, dilations: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(conv_norm_relu(channels, channels, dilation=d) for d in dilations)
        self.fusion = conv_norm_relu(len(dilations) * channels, channels, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the fused context, the shape of ``features``."""
        return self.fusion(torch.cat([branch(features) for branch in self.branches], dim=1))


class MultiPerceptionHead(nn.Module):
    """Anomaly logits from stacked discrepancy maps: residual block, CBAM attention, dilated context.

    Args:
        in_channels: Stacked input maps (e.g. two discrepancies per scale for three scales: 6).
        width: Channels of the head.

    Example:
        >>> head = MultiPerceptionHead(6)
        >>> head(torch.rand(2, 6, 16, 16)).shape
        torch.Size([2, 1, 16, 16])

    """

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        self.stem = conv_norm_relu(in_channels, width)
        self.residual = nn.Sequential(conv_norm_relu(width, width), nn.Conv2d(width, width, 3, padding=1))
        self.attention = create_attn("cbam", width)
        self.context = DilatedContext(width)
        self.logits = nn.Conv2d(width, 1, kernel_size=1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Return one anomaly logit per position ``(N, 1, H, W)``."""
        features = self.stem(maps)
        features = torch.relu(features + self.residual(features))
        return self.logits(self.context(self.attention(features)))


class PixelwiseHead(nn.Sequential):
    """Anomaly logits from stacked discrepancy maps, one position at a time (1x1 convolutions only).

    Without spatial context the head cannot learn the shapes of the synthetic anomalies it is trained on, only how
    the discrepancies of one position combine into an anomaly, which carries over to real defects.

    Args:
        in_channels: Stacked input maps.
        width: Channels of the two hidden layers.

    Example:
        >>> PixelwiseHead(6)(torch.rand(2, 6, 16, 16)).shape
        torch.Size([2, 1, 16, 16])

    """

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__(
            conv_norm_relu(in_channels, width, kernel_size=1),
            conv_norm_relu(width, width, kernel_size=1),
            nn.Conv2d(width, 1, kernel_size=1),
        )
