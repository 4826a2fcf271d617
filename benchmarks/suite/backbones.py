"""Backbones as ``nn.Module`` for anomalib's FX feature-extraction path, to reach layers timm does not expose.

timm exposes only ``blocks.0/1/2/4/6`` of ``tf_efficientnet_lite0`` as feature layers; ``blocks.3`` (80 channels,
stride 16) is not among them, and anomalib drops an unknown layer name with a warning. anomalib's
``TimmFeatureExtractor`` also takes the backbone as an ``nn.Module`` and extracts any module's output with torch FX.
FX cannot trace timm's ``Conv2dSame``, which computes its "same" padding from the input size at run time, so each one
is replaced by a ``ZeroPad2d`` with the padding it computes at the suite's image size, followed by an unpadded
``Conv2d`` with the same weights: the outputs are bit-identical at that size (tested).
"""

import math

import timm
import torch
from timm.layers import Conv2dSame
from torch import nn


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """``(before, after)`` zero padding of one side that ``Conv2dSame`` adds for an input of ``size`` pixels."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def static_same_convolution(conv: Conv2dSame, height: int, width: int) -> nn.Sequential:
    """``ZeroPad2d`` + ``Conv2d`` equal to ``conv`` on inputs of ``height`` x ``width``, sharing its parameters."""
    top, bottom = same_padding(height, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
    left, right = same_padding(width, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
    static = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=0,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    static.weight = conv.weight
    static.bias = conv.bias
    return nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), static)


def fx_backbone(backbone: str, pre_trained: bool, image_size: int) -> nn.Module:
    """``backbone`` as a frozen, eval-mode ``nn.Module`` whose ``Conv2dSame`` layers have static padding.

    Pass it as ``backbone=`` to anomalib models that build a ``TimmFeatureExtractor`` (PaDiM, PatchCore) with any
    module names as ``layers``, e.g. ``blocks.3``. Only valid for square inputs of ``image_size`` pixels.
    """
    model = timm.create_model(backbone, pretrained=pre_trained).eval()
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        module.register_forward_pre_hook(lambda _m, inputs, name=name: sizes.__setitem__(name, inputs[0].shape[-2:]))
        for name, module in model.named_modules()
        if isinstance(module, Conv2dSame)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    for hook in hooks:
        hook.remove()
    for name, (height, width) in sizes.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, static_same_convolution(model.get_submodule(name), height, width))
    return model.requires_grad_(False)
