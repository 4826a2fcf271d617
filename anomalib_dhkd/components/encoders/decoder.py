"""A one-class bottleneck and a decoder that mirror any encoder's feature pyramid (reverse distillation).

Reverse distillation (Deng and Li, "Anomaly Detection via Reverse Distillation from One-Class Embedding", CVPR 2022,
Sec. 3) compresses the teacher's multi-scale features into one low-resolution embedding (one-class bottleneck
embedding, OCBE) and trains a decoder to reconstruct every teacher scale from it; an anomaly the bottleneck cannot
represent is not reconstructed. anomalib's decoder is built for ResNets; these modules take the channels and strides
of any timm encoder's ``feature_info``, so the same code serves ``tf_efficientnet_lite0`` and ``wide_resnet50_2``.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, BatchNorm and ReLU; ``stride`` 2 halves the resolution.

    Example:
        >>> conv_block(4, 8, stride=2)(torch.rand(1, 4, 8, 8)).shape
        torch.Size([1, 8, 4, 4])

    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def upsampling_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Transposed 2x2 convolution with stride 2 (doubles the resolution), BatchNorm and ReLU.

    Example:
        >>> upsampling_block(8, 4)(torch.rand(1, 8, 3, 5)).shape
        torch.Size([1, 4, 6, 10])

    """
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def stride_exponents(strides: Sequence[int]) -> list[int]:
    """Return ``log2`` of each stride of a feature pyramid.

    Args:
        strides: Strides of the scales in pixels, shallowest first.

    Returns:
        The exponents, e.g. ``[2, 3, 4]`` for strides 4, 8 and 16.

    Raises:
        ValueError: If the strides are not increasing powers of two above 1.

    Example:
        >>> stride_exponents([4, 8, 16])
        [2, 3, 4]

    """
    exponents = [math.log2(stride) for stride in strides]
    if any(e < 1 or not e.is_integer() for e in exponents) or sorted(set(exponents)) != exponents:
        msg = f"Feature strides must be increasing powers of two above 1, got {list(strides)}."
        raise ValueError(msg)
    return [int(exponent) for exponent in exponents]


def _halvings(strides: Sequence[int]) -> list[int]:
    """How many times each scale is halved to reach the deepest one."""
    exponents = stride_exponents(strides)
    return [exponents[-1] - exponent for exponent in exponents]


class OneClassBottleneck(nn.Module):
    """Fuse every scale of a feature pyramid into one embedding at the deepest scale's resolution.

    Each scale is brought to the deepest stride by stride-2 convolutions; the concatenation goes through a 3x3
    convolution block to ``embedding_channels``.

    Args:
        channels: Channels of each scale, shallowest first.
        strides: Stride of each scale, increasing powers of two.
        embedding_channels: Channels of the embedding; ``None``: the deepest scale's.

    Example:
        >>> bottleneck = OneClassBottleneck([8, 16], strides=[4, 8])
        >>> bottleneck([torch.rand(2, 8, 8, 8), torch.rand(2, 16, 4, 4)]).shape
        torch.Size([2, 16, 4, 4])

    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], embedding_channels: int | None = None) -> None:
        super().__init__()
        self.embedding_channels = embedding_channels or channels[-1]
        self.downsampling = nn.ModuleList(
            nn.Sequential(*(conv_block(c, c, stride=2) for _ in range(halvings)))
            for c, halvings in zip(channels, _halvings(strides), strict=True)
        )
        self.fusion = conv_block(sum(channels), self.embedding_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Return the embedding ``(N, embedding_channels, h, w)`` at the deepest scale's resolution."""
        reduced = [down(f) for down, f in zip(self.downsampling, features, strict=True)]
        return self.fusion(torch.cat(reduced, dim=1))


class PyramidDecoder(nn.Module):
    """Reconstruct every scale of a feature pyramid from a bottleneck embedding, deepest first.

    The deepest scale is decoded by a convolution block at the embedding's resolution; each shallower scale
    upsamples the previous decoded scale (transposed convolutions, by its stride ratio) and refines it with a
    convolution block and a 1x1 projection to that scale's channels.

    Args:
        channels: Channels of each scale to reconstruct, shallowest first.
        strides: Stride of each scale, increasing powers of two.
        embedding_channels: Channels of the bottleneck embedding; ``None``: the deepest scale's.

    Example:
        >>> decoder = PyramidDecoder([8, 16], strides=[4, 8])
        >>> [f.shape for f in decoder(torch.rand(2, 16, 4, 4))]
        [torch.Size([2, 8, 8, 8]), torch.Size([2, 16, 4, 4])]

    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], embedding_channels: int | None = None) -> None:
        super().__init__()
        halvings = _halvings(strides)
        self.stages = nn.ModuleList()
        previous = embedding_channels or channels[-1]
        for index in reversed(range(len(channels))):
            doublings = halvings[index] - (halvings[index + 1] if index + 1 < len(channels) else 0)
            upsampling = [
                upsampling_block(previous if i == 0 else channels[index], channels[index]) for i in range(doublings)
            ]
            refine = conv_block(channels[index] if upsampling else previous, channels[index])
            self.stages.append(nn.Sequential(*upsampling, refine, nn.Conv2d(channels[index], channels[index], 1)))
            previous = channels[index]

    def forward(self, embedding: torch.Tensor, sizes: Sequence[tuple[int, int]] | None = None) -> list[torch.Tensor]:
        """Return the reconstructed scales, shallowest first.

        Args:
            embedding: Bottleneck embedding ``(N, C, h, w)``.
            sizes: Height and width of each scale to reconstruct, shallowest first; a decoded scale of another size
                (an image side that is not a multiple of the deepest stride) is resized to it. ``None``: as decoded.

        Returns:
            One feature map per scale.

        """
        decoded = []
        targets = list(reversed(sizes)) if sizes is not None else [None] * len(self.stages)
        for stage, size in zip(self.stages, targets, strict=True):
            embedding = stage(embedding)
            if size is not None and tuple(embedding.shape[-2:]) != tuple(size):
                embedding = F.interpolate(embedding, size=size, mode="bilinear", align_corners=False)
            decoded.append(embedding)
        return decoded[::-1]
