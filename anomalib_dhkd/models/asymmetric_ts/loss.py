"""Loss of AsymmetricTs: STFPM's per-scale distance of L2-normalised teacher and student features.

``L = sum_k 0.5 / (H_k W_k) * ||T_k / |T_k| - S_k / |S_k|||^2`` (STFPM, Wang et al., BMVC 2021, Sec. 3.2), as the
asymmetric teacher-student paper trains its student; anomalib's ``STFPMLoss`` computes each term.
"""

import torch
from anomalib.models.image.stfpm.loss import STFPMLoss


class AsymmetricTsLoss(STFPMLoss):
    """STFPM's loss over per-scale lists of teacher and student features.

    Example:
        >>> features = [torch.rand(2, 8, 4, 4)]
        >>> float(AsymmetricTsLoss()(features, features))
        0.0

    """

    def forward(self, teacher_features: list[torch.Tensor], student_features: list[torch.Tensor]) -> torch.Tensor:
        """Return the sum of the per-scale losses.

        Args:
            teacher_features: Teacher features ``(N, C_k, H_k, W_k)`` per scale.
            student_features: Student features of the same shapes, in the same order.

        Returns:
            The scalar loss.

        """
        pairs = zip(teacher_features, student_features, strict=True)
        return torch.stack([self.compute_layer_loss(teacher, student) for teacher, student in pairs]).sum()
