"""Convolutional normalizing flow used as an invertible, density-modelling teacher.

DHKD's heterogeneous teacher ("Unsupervised Image Anomaly Detection with Denoised Heterogeneous Networks via Knowledge
Distillation"): a density model of normal features, which sends off-manifold features far into the tails of its
latent. The coupling design below is ours (model README, "Architecture as built").

Each flow is a stack of FrEIA ``AllInOneBlock`` affine couplings whose sub-networks are small convolution stacks.
The couplings use soft clamping of the log-scale (``clamp * tanh(s)``), a learned global affine (ActNorm-like)
scaling and a fixed random channel permutation, so the log-determinant is a sum of bounded terms and stays finite.
Optionally every coupling is conditioned on a 2-D sinusoidal positional encoding of the feature map (as in CFLOW),
which lets the density depend on where in the image a feature occurs.

At inference (evaluation mode, no gradients, eager) the couplings run on a fast path with the same result up to
float rounding (:class:`CouplingConstants`): the positional encoding is the same for every image, so its share of
each sub-network's first convolution is computed once per feature-map size, and the fixed permutation is an index
instead of a 1x1 convolution.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from FrEIA.framework import SequenceINN
from FrEIA.modules import AllInOneBlock
from torch import nn
from torch.nn import functional as F  # noqa: N812

from anomalib_dhkd.components.widths import scaled_channels


@dataclass(frozen=True)
class FlowTeacherConfig:
    """Settings of per-layer :class:`ConvFlow` teachers.

    Args:
        blocks: Affine coupling blocks per flow.
        hidden_ratio: Width of the coupling sub-networks relative to their input.
        clamp: Soft-clamping bound of the coupling log-scales.
        condition_channels: Channels of the positional encoding the couplings are conditioned on, a multiple of 4;
            ``0``: none. Capped at each flow's feature channels.
        noise_level: Standard deviation of the dequantisation noise added to the teacher's maximum-likelihood input,
            relative to each channel's; ``None``: the model decides by encoder.
        output_kernel_size: Kernel of the sub-networks' output convolution: 3, or 1 (a point-wise output, about a
            third of the flow's multiply-accumulates).

    """

    blocks: int = 4
    hidden_ratio: float = 1.0
    clamp: float = 2.0
    condition_channels: int = 64
    noise_level: float | None = None
    output_kernel_size: int = 3


def _coupling_subnet(hidden_ratio: float, output_kernel_size: int) -> Callable[[int, int], nn.Module]:
    """Return a FrEIA sub-network constructor: 3x3 conv, ReLU, ``output_kernel_size`` conv initialised to zero.

    The zero output makes every coupling start as the identity.
    """

    def constructor(in_channels: int, out_channels: int) -> nn.Module:
        hidden_channels = scaled_channels(in_channels, hidden_ratio)
        output_layer = nn.Conv2d(
            hidden_channels, out_channels, kernel_size=output_kernel_size, padding=output_kernel_size // 2
        )
        nn.init.zeros_(output_layer.weight)
        nn.init.zeros_(output_layer.bias)
        return nn.Sequential(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=3, padding=1),
            nn.ReLU(),
            output_layer,
        )

    return constructor


class _GlobalScaleActivation(nn.Module):
    """Picklable copy of FrEIA's ``SOFTPLUS`` global-scale activation, ``0.1 * softplus(a, beta=0.5)``.

    FrEIA stores it as a lambda, which ``torch.save(model)`` (anomalib's torch export) cannot pickle.
    """

    def forward(self, scale: torch.Tensor) -> torch.Tensor:
        """Map the global-scale parameter to a positive scale."""
        return 0.1 * nn.functional.softplus(scale, beta=0.5)


class CouplingConstants(NamedTuple):
    """What one coupling's inference needs that does not depend on the image, for one feature-map size.

    The first convolution of a conditioned sub-network acts on ``[x1, encoding]``; being linear and zero-padded per
    channel, it splits into ``conv(x1, W_x) + (conv(encoding, W_e) + b)``, and the bracket is a constant map. FrEIA
    scales the sub-network's output by 0.1; the output convolution's weights carry that factor here.
    """

    feature_weight: torch.Tensor  # W_x, the weights acting on the coupling's passive half
    condition_bias: torch.Tensor  # conv(encoding, W_e) + b, (1, hidden, H, W); the bias alone without encoding
    output_weight: torch.Tensor  # 0.1 x the output convolution's weights
    output_bias: torch.Tensor  # 0.1 x its bias
    permutation: torch.Tensor  # output channel i is input channel permutation[i]


def coupling_constants(block: AllInOneBlock, condition: torch.Tensor | None) -> CouplingConstants:
    """Return ``block``'s image-independent inference constants for the positional encoding ``condition``.

    Args:
        block: A coupling of :class:`ConvFlow`.
        condition: The positional encoding ``(1, C_e, H, W)`` it is conditioned on; ``None`` if unconditioned.

    Returns:
        The constants :meth:`ConvFlow.forward` uses at inference.

    """
    first_conv, output_conv = block.subnet[0], block.subnet[2]
    passive_channels = block.splits[0]
    weight = first_conv.weight[:, :passive_channels].contiguous(memory_format=torch.channels_last)
    if condition is None:
        condition_bias = first_conv.bias.view(1, -1, 1, 1)
    else:  # in the layout of the channels-last hidden map it is added to (a mixed-layout add is several times slower)
        condition_bias = F.conv2d(condition, first_conv.weight[:, passive_channels:], first_conv.bias, padding=1)
        condition_bias = condition_bias.contiguous(memory_format=torch.channels_last)
    output_weight = (0.1 * output_conv.weight).contiguous(memory_format=torch.channels_last)
    permutation = block.w_perm.flatten(1).argmax(1)
    return CouplingConstants(weight, condition_bias, output_weight, 0.1 * output_conv.bias, permutation)


def coupling_inference(
    block: AllInOneBlock, features: torch.Tensor, constants: CouplingConstants
) -> tuple[torch.Tensor, torch.Tensor]:
    """FrEIA's ``AllInOneBlock`` forward (affine coupling, global affine, hard permutation) with its constants.

    Args:
        block: A coupling of :class:`ConvFlow`.
        features: Its input ``(N, C, H, W)``.
        constants: Its :func:`coupling_constants` for this feature-map size.

    Returns:
        Its output and log-determinant ``(N,)``, as ``block`` gives them up to float rounding.

    """
    passive, active = torch.split(features, block.splits, dim=1)
    hidden = F.conv2d(passive, constants.feature_weight, padding=1).add_(constants.condition_bias).relu_()
    padding = block.subnet[2].padding
    coefficients = F.conv2d(hidden, constants.output_weight, constants.output_bias, padding=padding)
    active_channels = active.shape[1]
    log_scale = torch.tanh(coefficients[:, :active_channels]).mul_(block.clamp)
    active = torch.addcmul(coefficients[:, active_channels:], active, torch.exp(log_scale))
    scale = block.global_scale_activation(block.global_scale)
    output = torch.addcmul(block.global_offset, torch.cat((passive, active), dim=1), scale)[:, constants.permutation]
    log_det = log_scale.sum(dim=(1, 2, 3)) + features[0, 0].numel() * torch.log(scale).sum()
    return output, log_det


class ConvFlow(nn.Module):
    """Invertible map from a feature map to a latent of the same shape with a standard-normal prior.

    Args:
        channels: Number of feature channels.
        num_blocks: Number of affine coupling blocks.
        hidden_ratio: Width of the coupling sub-networks relative to their input channels.
        clamp: Soft-clamping bound of the coupling log-scales.
        condition_channels: Channels of the positional encoding the couplings are conditioned on; ``0`` disables
            conditioning. Must be a multiple of 4.
        output_kernel_size: Kernel of the sub-networks' output convolution, 1 or 3.

    Raises:
        ValueError: If ``condition_channels`` is not a multiple of 4 or ``output_kernel_size`` is not 1 or 3.

    Example:
        >>> flow = ConvFlow(8, num_blocks=2, condition_channels=4)
        >>> features = torch.randn(2, 8, 4, 4)
        >>> latent, log_det = flow(features)
        >>> latent.shape, log_det.shape
        (torch.Size([2, 8, 4, 4]), torch.Size([2]))
        >>> torch.allclose(flow.inverse(latent), features, atol=1e-5)
        True

    """

    def __init__(
        self,
        channels: int,
        num_blocks: int = 4,
        hidden_ratio: float = 1.0,
        clamp: float = 2.0,
        condition_channels: int = 0,
        output_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if condition_channels % 4:
            msg = f"condition_channels must be a multiple of 4 (sinusoidal 2-D encoding), got {condition_channels}."
            raise ValueError(msg)
        if output_kernel_size not in {1, 3}:
            msg = f"output_kernel_size must be 1 or 3, got {output_kernel_size}."
            raise ValueError(msg)
        self.condition_channels = condition_channels
        self.flow = SequenceINN(channels, 1, 1)
        condition = {"cond": 0, "cond_shape": (condition_channels, 1, 1)} if condition_channels else {}
        for _ in range(num_blocks):
            self.flow.append(
                AllInOneBlock,
                subnet_constructor=_coupling_subnet(hidden_ratio, output_kernel_size),
                affine_clamping=clamp,
                permute_soft=False,
                global_affine_type="SOFTPLUS",
                **condition,
            )
            self.flow.module_list[-1].global_scale_activation = _GlobalScaleActivation()
        self._inference_constants: tuple[tuple, list[CouplingConstants]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (``torch.save(model)``, deep copies) without the inference constants; they are rebuilt."""
        state = super().__getstate__()
        state["_inference_constants"] = None
        return state

    def _conditions(self, features: torch.Tensor) -> list[torch.Tensor]:
        if not self.condition_channels:
            return []
        from anomalib.models.image.cflow.utils import positional_encoding_2d  # keeps this module free of models

        batch, _, height, width = features.shape
        encoding = positional_encoding_2d(self.condition_channels, height, width).to(features)
        return [encoding.unsqueeze(0).expand(batch, -1, -1, -1)]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map features to the latent and the per-sample log-determinant of the Jacobian.

        Args:
            features: Features ``(N, C, H, W)``.

        Returns:
            The latent, the shape of ``features``, and the log-determinant ``(N,)``. In evaluation mode without
            gradients, from the fast path (module docstring).

        """
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            latent, log_det = self.flow(features, c=self._conditions(features))
            return latent, log_det
        latent, log_det = features, features.new_zeros(features.shape[0])
        for block, constants in zip(self.flow.module_list, self._constants_for(features), strict=True):
            latent, block_log_det = coupling_inference(block, latent, constants)
            log_det = log_det + block_log_det
        return latent, log_det

    def _constants_for(self, features: torch.Tensor) -> list[CouplingConstants]:
        """Each coupling's inference constants for this feature-map size, rebuilt when the weights change."""
        cached = [
            p
            for block in self.flow.module_list
            for p in (*block.subnet[0].parameters(), *block.subnet[2].parameters(), block.w_perm)
        ]
        versions = tuple((p.data_ptr(), p._version) for p in cached)  # a new tensor or an in-place update
        key = (tuple(features.shape[-2:]), features.dtype, features.device, versions)
        if self._inference_constants is None or self._inference_constants[0] != key:
            conditions = self._conditions(features[:1])
            condition = conditions[0] if conditions else None
            constants = [coupling_constants(block, condition) for block in self.flow.module_list]
            self._inference_constants = (key, constants)
        return self._inference_constants[1]

    def inverse(self, latent: torch.Tensor) -> torch.Tensor:
        """Map a latent back to feature space.

        Args:
            latent: Latent ``(N, C, H, W)``.

        Returns:
            The features whose latent it is.

        """
        features, _ = self.flow(latent, c=self._conditions(latent), rev=True)
        return features


def flow_negative_log_likelihood(latent: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood per dimension under a standard-normal prior (constant dropped).

    ``NLL = (0.5 * ||z||^2 - log|det J|) / D``, averaged over the batch; dividing by the number of dimensions ``D``
    makes the value independent of the feature-map size.

    Args:
        latent: Flow output of shape ``(N, C, H, W)``.
        log_det: Log-determinant of the Jacobian, shape ``(N,)``.

    Returns:
        The scalar mean over the batch.

    Example:
        >>> flow_negative_log_likelihood(torch.zeros(2, 1, 2, 2), torch.zeros(2))
        tensor(0.)

    """
    dims = latent[0].numel()
    return ((0.5 * latent.pow(2).flatten(1).sum(1) - log_det) / dims).mean()
