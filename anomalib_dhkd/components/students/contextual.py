"""Contextual Transformer (CoT) blocks and a residual student built from them.

CoT (Li, Yao, Pan, Mei, "Contextual Transformer Networks for Visual Recognition", TPAMI 2022, Sec. 3.2) replaces a
3x3 convolution by self-attention over each 3x3 neighbourhood whose keys carry context: a grouped k x k convolution
gives the *static* context of each position; attention weights computed from that context and the query aggregate the
neighbourhood's values into the *dynamic* context; the two are fused by split attention (a softmax over the two
branches, per channel, from their global average). The asymmetric teacher-student network (Kong et al., 2024) puts
CoT into the residual blocks of the student so that it differs in structure from a plain convolutional teacher.

The neighbourhood aggregation is written as a sum over the k x k shifted copies of the values (pad and slice), the
same sum ``unfold`` computes, so that the block exports to ONNX and OpenVINO as plain element-wise operations.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from einops import rearrange
from torch import nn

from anomalib_dhkd.components.encoders.decoder import stride_exponents


def conv_norm(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1) -> list:
    """Return a convolution without bias followed by BatchNorm, as a list to splice into ``nn.Sequential``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Side of the kernel, odd; padded to keep the size at stride 1.
        stride: Stride.
        groups: Convolution groups.

    Returns:
        ``[Conv2d, BatchNorm2d]``.

    """
    padding = kernel_size // 2
    convolution = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
    return [convolution, nn.BatchNorm2d(out_channels)]


def neighbourhood_sum(values: torch.Tensor, weights: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Weight each position's ``kernel_size`` x ``kernel_size`` neighbourhood of ``values`` and sum it.

    Args:
        values: ``(N, G, C, H, W)``: ``G`` groups of ``C`` channels sharing attention weights.
        weights: ``(N, G, K * K, H, W)``: one weight per group, neighbour (row-major offsets) and position.
        kernel_size: Side ``K`` of the neighbourhood, odd; zero padding at the border.

    Returns:
        ``(N, G, C, H, W)``: ``sum_j weights[:, :, j] * values shifted by offset j``.

    Example:
        >>> values = torch.ones(1, 1, 2, 4, 4)
        >>> neighbourhood_sum(values, torch.ones(1, 1, 9, 4, 4), 3)[0, 0, 0]
        tensor([[4., 6., 6., 4.],
                [6., 9., 9., 6.],
                [6., 9., 9., 6.],
                [4., 6., 6., 4.]])

    """
    radius = kernel_size // 2
    height, width = values.shape[-2:]
    padded = F.pad(values, (radius, radius, radius, radius))
    centre = radius * kernel_size + radius
    total = weights[:, :, centre : centre + 1] * values  # the centre needs no shift: no zero-filled start
    for index in range(kernel_size * kernel_size):
        if index == centre:
            continue
        row, column = divmod(index, kernel_size)
        shifted = padded[..., row : row + height, column : column + width]
        total = total.addcmul_(weights[:, :, index : index + 1], shifted)  # in place: one tensor, not two per step
    return total


class ContextualTransformer(nn.Module):
    """CoT layer: static context from a grouped convolution, dynamic context from contextual attention, fused.

    Args:
        channels: Input and output channels.
        kernel_size: Side of the neighbourhood, odd.
        groups: Groups of the key convolution and of the attention heads; reduced to a divisor of ``channels``.
        reduction: Width reduction of the attention and fusion layers.

    Raises:
        ValueError: If ``kernel_size`` is even.

    Example:
        >>> layer = ContextualTransformer(8)
        >>> layer(torch.rand(2, 8, 5, 7)).shape
        torch.Size([2, 8, 5, 7])

    """

    def __init__(self, channels: int, kernel_size: int = 3, groups: int = 4, reduction: int = 4) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            msg = f"CoT kernel_size must be odd, got {kernel_size}."
            raise ValueError(msg)
        self.kernel_size = kernel_size
        self.groups = math.gcd(channels, groups)
        hidden = max(channels // reduction, 8)
        self.key = nn.Sequential(*conv_norm(channels, channels, kernel_size, groups=self.groups), nn.ReLU())
        self.value = nn.Sequential(*conv_norm(channels, channels))
        self.attention = nn.Sequential(
            *conv_norm(2 * channels, hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, self.groups * kernel_size * kernel_size, kernel_size=1),
        )
        # No BatchNorm on the pooled (N, C, 1, 1) vector: a batch of one image would have no statistics.
        self.fusion = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 2 * channels, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the fused static and dynamic contexts.

        Args:
            features: Features ``(N, C, H, W)``.

        Returns:
            The fused contexts, the shape of ``features``.

        """
        static = self.key(features)
        values = rearrange(self.value(features), "n (g c) h w -> n g c h w", g=self.groups)
        logits = rearrange(
            self.attention(torch.cat([static, features], dim=1)), "n (g k) h w -> n g k h w", g=self.groups
        )
        dynamic = rearrange(
            neighbourhood_sum(values, logits.softmax(dim=2), self.kernel_size), "n g c h w -> n (g c) h w"
        )
        branch_logits = rearrange(
            self.fusion((static + dynamic).mean(dim=(2, 3), keepdim=True)), "n (b c) 1 1 -> b n c 1 1", b=2
        )
        static_share, dynamic_share = branch_logits.softmax(dim=0)
        return static_share * static + dynamic_share * dynamic


class ResidualBlock(nn.Module):
    """``ReLU(x + BN(conv1x1(ReLU(spatial(x)))))`` with a CoT layer (or a 3x3 convolution) as the spatial layer.

    Args:
        channels: Input and output channels.
        contextual: Use a :class:`ContextualTransformer` as the spatial layer; ``False``: 3x3 convolution and BN.

    Example:
        >>> block = ResidualBlock(8)
        >>> block(torch.rand(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])

    """

    def __init__(self, channels: int, contextual: bool = True) -> None:
        super().__init__()
        spatial = [ContextualTransformer(channels)] if contextual else conv_norm(channels, channels, kernel_size=3)
        self.residual = nn.Sequential(*spatial, nn.ReLU(), *conv_norm(channels, channels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the block's output.

        Args:
            features: Features ``(N, C, H, W)``.

        Returns:
            The output, the shape of ``features``, non-negative.

        """
        return F.relu(features + self.residual(features))


class ContextualStudent(nn.Module):
    """Randomly initialised residual student that predicts the teacher's features at each of its scales.

    A stem of stride-2 convolutions reaches the first scale; every further scale is reached by stride-2 convolutions
    from the previous one; each scale ends in ``blocks`` :class:`ResidualBlock` layers. With ``linear_output`` a 1x1
    convolution then maps them to the teacher's channels without an activation, the next scale going on from the
    blocks' output; without it the blocks' (non-negative) output is the prediction.

    Args:
        channels: Teacher channels at each scale, shallowest first.
        strides: Stride of each scale in pixels, powers of two, increasing.
        blocks: Residual blocks per scale.
        contextual: CoT blocks (the asymmetric student); ``False``: plain 3x3 residual blocks.
        width: Channels of each scale's blocks, at least the teacher's there; ``None``: the teacher's.
        linear_output: Predict through a linear 1x1 convolution; needed to match teacher features of both signs
            (EfficientNet's blocks end without an activation). Without it ``width`` must be ``None``.

    Raises:
        ValueError: If a stride is not a power of two above 1 or the strides do not increase, or for a ``width``
            without ``linear_output``.

    Example:
        >>> student = ContextualStudent([8, 16], strides=[4, 8])
        >>> [f.shape for f in student(torch.rand(1, 3, 32, 32))]
        [torch.Size([1, 8, 8, 8]), torch.Size([1, 16, 4, 4])]
        >>> wide = ContextualStudent([8, 16], strides=[4, 8], width=32, linear_output=True)
        >>> [f.shape for f in wide(torch.rand(1, 3, 32, 32))]
        [torch.Size([1, 8, 8, 8]), torch.Size([1, 16, 4, 4])]

    """

    def __init__(
        self,
        channels: Sequence[int],
        strides: Sequence[int],
        blocks: int = 1,
        contextual: bool = True,
        width: int | None = None,
        linear_output: bool = False,
    ) -> None:
        super().__init__()
        if width is not None and not linear_output:
            msg = "A student width other than the teacher's needs linear_output, which maps it to the teacher's."
            raise ValueError(msg)
        steps = stride_exponents(strides)
        self.stages = nn.ModuleList()
        self.outputs = nn.ModuleList()
        previous_channels, previous_step = 3, 0
        for teacher_channels, step in zip(channels, steps, strict=True):
            stage_channels = max(teacher_channels, width or 0)
            downsampling = []
            for _ in range(step - previous_step):
                downsampling += [*conv_norm(previous_channels, stage_channels, 3, stride=2), nn.ReLU()]
                previous_channels = stage_channels
            residual = [ResidualBlock(stage_channels, contextual) for _ in range(blocks)]
            self.stages.append(nn.Sequential(*downsampling, *residual))
            output = nn.Conv2d(stage_channels, teacher_channels, kernel_size=1) if linear_output else nn.Identity()
            self.outputs.append(output)
            previous_step = step

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the predicted features of each scale, shallowest first.

        Args:
            images: Pre-processed images ``(N, 3, H, W)``.

        Returns:
            Features ``(N, channels[k], H / strides[k], W / strides[k])`` per scale, sizes rounded up.

        """
        features = []
        for stage, output in zip(self.stages, self.outputs, strict=True):
            images = stage(images)
            features.append(output(images))
        return features
