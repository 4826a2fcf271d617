"""A frozen pretrained teacher with exponential-moving-average normalisation (EMAN).

EMAN (Cai et al., "Exponential Moving Average Normalization for Self-supervised and Semi-supervised Learning",
CVPR 2021, Sec. 3) replaces the batch statistics of a teacher's BatchNorm layers by running statistics updated as an
exponential moving average, so the teacher's output never depends on the other images of a batch. The asymmetric
teacher-student network (Kong et al., 2024) puts it into the teacher to widen the generalisation gap between teacher
and student.

Our reading for a frozen ImageNet teacher: its weights never train; every BatchNorm layer normalises with its running
statistics only (it stays in evaluation mode), and while the model trains those statistics move from ImageNet's
towards the category's normal images by ``running = momentum * running + (1 - momentum) * batch``. With several
processes each updates its own statistics from its own batches.

Out of training the statistics are fixed, so inference runs a copy of the encoder with every BatchNorm folded into
the convolution before it (:func:`~anomalib_dhkd.components.encoders.fold_network_batch_norms`): the same features
to float rounding, faster, and what export traces. The copy is dropped when training starts and on loading, and
is never part of the state dict, so checkpoints keep the unfolded layers whose statistics EMAN moves.
"""

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from anomalib_dhkd.components.encoders.folding import fold_network_batch_norms


class EmaNormalizedEncoder(nn.Module):
    """Wrap a frozen encoder so that its BatchNorm layers follow the training images by EMA (EMAN).

    Args:
        encoder: Feature extractor; its parameters are frozen here. Any ``BatchNorm`` layer (including subclasses such
            as timm's ``BatchNormAct2d``) becomes an EMAN layer.
        momentum: Share of the running statistics kept at each training step, in ``[0, 1]``; ``1`` keeps them fixed.

    Raises:
        ValueError: If ``momentum`` is outside ``[0, 1]`` or the encoder has no BatchNorm layer.

    Example:
        >>> encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        >>> teacher = EmaNormalizedEncoder(encoder, momentum=0.9).train()
        >>> _ = teacher(torch.rand(2, 3, 8, 8))
        >>> bool(encoder[1].running_mean.abs().sum() > 0), encoder[1].training
        (True, False)

    """

    def __init__(self, encoder: nn.Module, momentum: float = 0.999) -> None:
        super().__init__()
        if not 0 <= momentum <= 1:
            msg = f"EMAN momentum must be in [0, 1], got {momentum}."
            raise ValueError(msg)
        self.encoder = encoder.requires_grad_(False)
        self.momentum = momentum
        norms = [module for module in encoder.modules() if isinstance(module, _BatchNorm)]
        if not norms:
            msg = f"{type(encoder).__name__} has no BatchNorm layer for EMAN to update."
            raise ValueError(msg)
        for norm in norms:
            norm.register_forward_pre_hook(self._follow_batch_statistics)
        self.encoder.eval()
        self._inference_cache: dict[str, nn.Module] = {}  # a plain dict: the folded copy stays out of the state dict
        self.register_load_state_dict_post_hook(_forget_folded_encoder)

    def train(self, mode: bool = True) -> "EmaNormalizedEncoder":
        """Set the update mode; the encoder itself always normalises with its running statistics.

        Args:
            mode: ``True``: the running statistics follow each batch; ``False``: they stay fixed.

        Returns:
            This module.

        """
        super().train(mode)
        self.encoder.eval()
        if mode:
            self._inference_cache.clear()  # the statistics move only in training mode
        else:
            self.folded_encoder()  # built now, not inside an export's trace
        return self

    def folded_encoder(self) -> nn.Module:
        """Return the encoder with its BatchNorms folded for the current statistics (built once per change).

        anomalib's ``TimmFeatureExtractor`` is traced through its ``feature_extractor`` network; any other encoder
        is traced whole.
        """
        if "folded" not in self._inference_cache:
            with torch.inference_mode(mode=False), torch.no_grad():  # plain tensors even when built in a test loop
                folded = copy.deepcopy(self.encoder, memo={id(self): self})  # the EMAN hooks refer to this module
                fold_network_batch_norms(getattr(folded, "feature_extractor", folded))
            self._inference_cache["folded"] = folded
        return self._inference_cache["folded"]

    def _apply(self, fn: Any, recurse: bool = True) -> "EmaNormalizedEncoder":
        """Move or convert the folded copy with the encoder (``to``, ``half``, memory formats)."""
        super()._apply(fn, recurse)
        for folded in self._inference_cache.values():
            folded._apply(fn, recurse)
        return self

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the folded copy (anomalib's torch export); it is rebuilt on the first inference."""
        state = super().__getstate__()
        return {**state, "_inference_cache": {}}

    @torch.no_grad()
    def _follow_batch_statistics(self, norm: _BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        """Move ``norm``'s running statistics towards those of its input batch (training mode only)."""
        if not self.training or norm.running_mean is None or norm.running_var is None:
            return
        features = inputs[0].transpose(0, 1).flatten(1)  # (C, N * H * W)
        weight = 1 - self.momentum
        norm.running_mean.lerp_(features.mean(dim=1), weight)
        norm.running_var.lerp_(features.var(dim=1, unbiased=True), weight)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        """Return the features of ``images`` without gradients, normalised with the (just updated) running statistics.

        Out of training the folded copy computes them.

        Args:
            images: Pre-processed images ``(N, 3, H, W)``.

        Returns:
            The encoder's output (per-layer features by name for anomalib's ``TimmFeatureExtractor``).

        """
        with torch.no_grad():
            return self.encoder(images) if self.training else self.folded_encoder()(images)

    def extra_repr(self) -> str:
        """Show the momentum."""
        return f"momentum={self.momentum}"


def _forget_folded_encoder(teacher: EmaNormalizedEncoder, _incompatible_keys: object) -> None:
    """Load-state-dict post-hook: loaded statistics invalidate the folded copy."""
    teacher._inference_cache.clear()
