"""Training objective of DHKD.

Our reading of the objective of "Unsupervised Image Anomaly Detection with Denoised Heterogeneous Networks via
Knowledge Distillation" (model README):

``L = w_nll * L_nll(T) + w_jac * L_jac(T) + w_kd * L_kd(S, T) + w_aff * L_aff(S, T)``

* ``L_nll``: negative log-likelihood of the (dequantised) features under the flow teacher (per dimension).
* ``L_jac``: the teacher regulariser, the squared per-dimension log-determinant. It keeps the flow close to
  volume-preserving, so that the teacher cannot whiten normal features by shrinking the whole space (which
  would also shrink the teacher-student discrepancy of anomalies). Our choice; the paper does not name one.
* ``L_kd``: the student, fed noisy features, regresses the teacher's latent of the clean features (the paper's
  Sec. 3.2; mean squared error against a detached target, so distillation never moves the teacher).
* ``L_aff``: the teacher-student affinity loss (spatial self-similarity matrices, see
  :class:`anomalib_dhkd.components.losses.AffinityLoss`).

During the teacher warm-up only the teacher terms are used, and once the teacher is frozen only the student terms
(see :class:`anomalib_dhkd.models.dhkd.Dhkd`).
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from anomalib_dhkd.components.losses import AffinityLoss
from anomalib_dhkd.components.teachers import flow_negative_log_likelihood


@dataclass(frozen=True)
class DhkdLossWeights:
    """Weights of DHKD's loss terms (the teacher's likelihood has weight 1).

    Args:
        distillation_weight: Weight of the student-to-teacher regression.
        affinity_weight: Weight of the teacher-student affinity loss.
        jacobian_weight: Weight of the teacher's log-determinant regulariser.

    """

    distillation_weight: float = 1.0
    affinity_weight: float = 1.0
    jacobian_weight: float = 0.01


class DhkdLossTerms(NamedTuple):
    """Weighted-sum total and the unweighted terms, for logging; the student terms are ``None`` without students."""

    total: torch.Tensor
    nll: torch.Tensor
    jacobian: torch.Tensor
    distillation: torch.Tensor | None
    affinity: torch.Tensor | None


def check_something_trains(train_teacher: bool, train_student: bool) -> None:
    """Raise ``ValueError`` unless the teacher or the student trains.

    Args:
        train_teacher: Whether the teacher trains.
        train_student: Whether the student trains.

    Raises:
        ValueError: If neither trains.

    """
    if not (train_teacher or train_student):
        msg = "At least one of teacher and student must train."
        raise ValueError(msg)


class DhkdLoss(nn.Module):
    """DHKD loss.

    Args:
        distillation_weight: Weight of the student-to-teacher regression.
        affinity_weight: Weight of the affinity loss.
        jacobian_weight: Weight of the teacher log-determinant regulariser.

    Example:
        During the teacher warm-up the students do not run, and only the teacher's terms exist:

        >>> latents, log_dets = [torch.randn(2, 4, 8, 8)], [torch.zeros(2)]
        >>> terms = DhkdLoss()(latents, log_dets, None, None, train_student=False)
        >>> terms.distillation is None, terms.total.shape
        (True, torch.Size([]))

    """

    def __init__(
        self,
        distillation_weight: float = 1.0,
        affinity_weight: float = 1.0,
        jacobian_weight: float = 0.01,
    ) -> None:
        super().__init__()
        self.distillation_weight = distillation_weight
        self.affinity_weight = affinity_weight
        self.jacobian_weight = jacobian_weight
        self.affinity = AffinityLoss()

    def forward(
        self,
        teacher_latents: list[torch.Tensor],
        log_dets: list[torch.Tensor],
        student_latents: list[torch.Tensor] | None,
        teacher_targets: list[torch.Tensor] | None,
        train_student: bool = True,
        train_teacher: bool = True,
    ) -> DhkdLossTerms:
        """Compute the loss over all scales.

        Args:
            teacher_latents: Per-scale flow latents the likelihood is computed on.
            log_dets: Per-scale log-determinants, each of shape ``(N,)``.
            student_latents: Per-scale student predictions from the noisy features; ``None`` if the students did not
                run (the teacher warm-up).
            teacher_targets: Per-scale teacher latents of the clean features, the student's targets; ``None`` with
                ``student_latents``.
            train_student: ``False`` during the teacher warm-up: the student terms are reported but not added.
            train_teacher: ``False`` once the teacher is frozen: the teacher terms are reported but not added.

        Returns:
            The total to optimise and the unweighted terms to log.

        Raises:
            ValueError: If neither the teacher nor the student trains, or the student trains without latents.

        """
        check_something_trains(train_teacher, train_student)
        if train_student and student_latents is None:
            msg = "The student trains but has no latents: run the model with train_student=True."
            raise ValueError(msg)
        scales = list(zip(teacher_latents, log_dets, strict=True))
        nll = torch.stack([flow_negative_log_likelihood(z, j) for z, j in scales]).mean()
        jacobian = torch.stack([(j / z[0].numel()).pow(2).mean() for z, j in scales]).mean()
        total = nll + self.jacobian_weight * jacobian if train_teacher else 0
        if student_latents is None:
            return DhkdLossTerms(total, nll, jacobian, None, None)
        targets = [z.detach() for z in teacher_targets]
        distillation = torch.stack([F.mse_loss(s, t) for s, t in zip(student_latents, targets, strict=True)]).mean()
        affinity = self.affinity(student_latents, targets)
        if train_student:
            total = total + self.distillation_weight * distillation + self.affinity_weight * affinity
        return DhkdLossTerms(total, nll, jacobian, distillation, affinity)
