"""Loss of Bikd: forward distillation, reverse distillation and their reciprocal exchange.

``L = sum_k d(T_k, F_k) + L_RD(T, R) + exchange_weight * sum_k d(F_k, R_k)`` with ``d`` STFPM's distance of
L2-normalised features (anomalib's ``STFPMLoss`` term), ``L_RD`` reverse distillation's ``1 - cos`` of flattened
scales (anomalib's ``ReverseDistillationLoss``), ``T`` the teacher's features of the clean image, ``F`` the forward
student's and ``R`` the reverse decoder's. The bidirectional KD paper (Wang et al., 2024) names a "reciprocal
knowledge exchange" that keeps the two directions' targets consistent; our reading is the third term, which pulls
each branch towards the other with gradients to both (model README).
"""

from typing import NamedTuple

import torch
from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
from anomalib.models.image.stfpm.loss import STFPMLoss
from torch import nn


class BikdLossTerms(NamedTuple):
    """The loss and its terms, for logging."""

    total: torch.Tensor
    forward_distillation: torch.Tensor
    reverse_distillation: torch.Tensor
    exchange: torch.Tensor


class BikdLoss(nn.Module):
    """Forward, reverse and exchange terms of Bikd.

    Args:
        exchange_weight: Weight of the consistency between the forward student and the reverse decoder; ``0``: none.

    Raises:
        ValueError: If ``exchange_weight`` is negative.

    Example:
        >>> features = [torch.rand(2, 8, 4, 4)]
        >>> round(float(BikdLoss()(features, features, features).total), 5)
        0.0

    """

    def __init__(self, exchange_weight: float = 0.0) -> None:
        super().__init__()
        if exchange_weight < 0:
            msg = f"exchange_weight must be non-negative, got {exchange_weight}."
            raise ValueError(msg)
        self.exchange_weight = exchange_weight
        self.forward_loss = STFPMLoss()
        self.reverse_loss = ReverseDistillationLoss()

    def forward(
        self,
        teacher: list[torch.Tensor],
        forward_student: list[torch.Tensor] | None,
        reverse_student: list[torch.Tensor] | None,
    ) -> BikdLossTerms:
        """Return the total loss and its terms for per-scale features, shallowest first.

        A direction the model does not have (``None``, an ablation) contributes no term, nor does the exchange.
        """
        zero = teacher[0].new_zeros(())
        forward_term = exchange = reverse_term = zero
        if forward_student is not None:
            forward_term = sum(
                self.forward_loss.compute_layer_loss(t, f) for t, f in zip(teacher, forward_student, strict=True)
            )
        if reverse_student is not None:  # anomalib's loss flattens with view(), which needs NCHW memory
            reverse_term = self.reverse_loss(
                [t.contiguous() for t in teacher], [s.contiguous() for s in reverse_student]
            )
        if forward_student is not None and reverse_student is not None:
            exchange = sum(
                self.forward_loss.compute_layer_loss(f, r)
                for f, r in zip(forward_student, reverse_student, strict=True)
            )
        total = forward_term + reverse_term + self.exchange_weight * exchange
        return BikdLossTerms(total, forward_term, reverse_term, exchange)
