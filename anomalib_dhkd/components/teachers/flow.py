"""Convolutional normalizing flow used as an invertible, density-modelling teacher.

DHKD's heterogeneous teacher ("Unsupervised Image Anomaly Detection with Denoised Heterogeneous Networks via Knowledge
Distillation"): a density model of normal features, which sends off-manifold features far into the tails of its
latent. The coupling design below is ours (model README, "Architecture as built").

Each flow is a stack of FrEIA ``AllInOneBlock`` affine couplings whose sub-networks are small convolution stacks.
The couplings use soft clamping of the log-scale (``clamp * tanh(s)``), a learned global affine (ActNorm-like)
scaling and a fixed random channel permutation, so the log-determinant is a sum of bounded terms and stays finite.
Optionally every coupling is conditioned on a 2-D sinusoidal positional encoding of the feature map (as in CFLOW),
which lets the density depend on where in the image a feature occurs.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from FrEIA.framework import SequenceINN
from FrEIA.modules import AllInOneBlock
from torch import nn


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

    """

    blocks: int = 4
    hidden_ratio: float = 1.0
    clamp: float = 2.0
    condition_channels: int = 64
    noise_level: float | None = None


def _coupling_subnet(hidden_ratio: float) -> Callable[[int, int], nn.Module]:
    """Return a FrEIA sub-network constructor: 3x3 conv, ReLU, 3x3 conv initialised to zero (identity coupling)."""

    def constructor(in_channels: int, out_channels: int) -> nn.Module:
        hidden_channels = max(8, int(in_channels * hidden_ratio))
        output_layer = nn.Conv2d(hidden_channels, out_channels, kernel_size=3, padding=1)
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


class ConvFlow(nn.Module):
    """Invertible map from a feature map to a latent of the same shape with a standard-normal prior.

    Args:
        channels: Number of feature channels.
        num_blocks: Number of affine coupling blocks.
        hidden_ratio: Width of the coupling sub-networks relative to their input channels.
        clamp: Soft-clamping bound of the coupling log-scales.
        condition_channels: Channels of the positional encoding the couplings are conditioned on; ``0`` disables
            conditioning. Must be a multiple of 4.

    Raises:
        ValueError: If ``condition_channels`` is not a multiple of 4.

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
    ) -> None:
        super().__init__()
        if condition_channels % 4:
            msg = f"condition_channels must be a multiple of 4 (sinusoidal 2-D encoding), got {condition_channels}."
            raise ValueError(msg)
        self.condition_channels = condition_channels
        self.flow = SequenceINN(channels, 1, 1)
        condition = {"cond": 0, "cond_shape": (condition_channels, 1, 1)} if condition_channels else {}
        for _ in range(num_blocks):
            self.flow.append(
                AllInOneBlock,
                subnet_constructor=_coupling_subnet(hidden_ratio),
                affine_clamping=clamp,
                permute_soft=False,
                global_affine_type="SOFTPLUS",
                **condition,
            )
            self.flow.module_list[-1].global_scale_activation = _GlobalScaleActivation()

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
            The latent, the shape of ``features``, and the log-determinant ``(N,)``.

        """
        latent, log_det = self.flow(features, c=self._conditions(features))
        return latent, log_det

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
