"""PyTorch model of AsymmetricTs: EMAN-normalised pretrained teacher, Contextual-Transformer student.

Our reading of "Asymmetric Teacher-Student Network Model for Industrial Image Anomaly Detection" (Kong, Zhang,
Huang, Liu, Tao; Computer Science 51(11A), 2024). The teacher is a frozen encoder whose BatchNorm layers follow the
category's normal images by an exponential moving average (EMAN, Cai et al., CVPR 2021, Sec. 3;
:class:`~anomalib_dhkd.components.teachers.EmaNormalizedEncoder`); the student is a randomly initialised residual
network (:class:`~anomalib_dhkd.components.students.ContextualStudent`), so teacher and student differ in structure
and the student does not over-imitate the teacher off the normal manifold. The paper's student blocks are Contextual
Transformers (CoT, Li et al., TPAMI 2022, Sec. 3.2, ``student.contextual``); plain 3x3 residual blocks measured better
on every shared dataset and are the default.

    images --> teacher (frozen encoder, EMAN) --> T_k, k = 1..K scales
    images --> student (stride-2 stem, residual blocks per scale) --> S_k
    loss: STFPM's distance of L2-normalised T_k and S_k (STFPM Sec. 3.2, loss.py)
    map and score: DiscrepancyScorer over 0.5 * ||S_k/|S_k| - T_k/|T_k|||^2 (STFPM Sec. 3.3, anomaly_map.py)
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from anomalib_dhkd.components.encoders import build_encoder
from anomalib_dhkd.components.scoring import ScoringConfig, ScoringInput
from anomalib_dhkd.components.students import ContextualStudent
from anomalib_dhkd.components.teachers import EmaNormalizedEncoder
from anomalib_dhkd.models.asymmetric_ts.anomaly_map import cosine_scorer
from anomalib_dhkd.models.network import TeacherStudentNetwork, use_channels_last


@dataclass(frozen=True)
class ContextualStudentConfig:
    """Settings of the AsymmetricTs student.

    Args:
        blocks: Residual blocks per scale.
        contextual: Contextual Transformer blocks, the paper's student; ``False``: plain 3x3 residual blocks, which
            measured better on every shared dataset and run faster (model README, "Ablations").
        width: Channels of each scale's blocks, at least the teacher's there; ``None``: the teacher's.
        linear_output: Predict the teacher's features through a linear 1x1 convolution, so that features of both
            signs can be matched; ``False``: the blocks' non-negative output (then ``width`` must be ``None``), which
            cannot match the negative half of an EfficientNet teacher's features (hazelnut toy set, seed 0: pixel
            AUROC 0.949 and PRO 0.834 without, 0.992 and 0.969 with).

    """

    blocks: int = 1
    contextual: bool = False
    width: int | None = None
    linear_output: bool = True


class AsymmetricTsTrainingOutput(NamedTuple):
    """Per-scale teacher and student features of a training batch."""

    teacher_features: list[torch.Tensor]
    student_features: list[torch.Tensor]


class AsymmetricTsModel(TeacherStudentNetwork):
    """AsymmetricTs network: EMAN teacher, CoT student, STFPM-style scorer.

    Args:
        backbone: timm backbone of the teacher.
        layers: Teacher layers, shallowest first, one student scale each.
        pre_trained: Load the backbone's ImageNet weights.
        student: Student settings.
        eman_momentum: Share of the teacher's BatchNorm statistics kept per training step; ``1``: fixed (plain BN).
        scoring: Scoring settings; ``None`` values: every layer scores, plain map
            (:data:`~anomalib_dhkd.components.scoring.PLAIN_MAP`).

    Raises:
        ValueError: For an unknown layer name, ``eman_momentum`` outside ``[0, 1]``, or a backbone without BatchNorm
            layers.

    Example:
        >>> model = AsymmetricTsModel("resnet18", ["layer1", "layer2"], False, ContextualStudentConfig(), 0.999,
        ...                           ScoringConfig())
        >>> model.eval()(torch.rand(1, 3, 64, 64)).anomaly_map.shape
        torch.Size([1, 1, 64, 64])

    """

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str],
        pre_trained: bool,
        student: ContextualStudentConfig,
        eman_momentum: float,
        scoring: ScoringConfig,
    ) -> None:
        super().__init__()
        encoder = build_encoder(backbone, layers, pre_trained, fold_norms=False)  # EMAN moves the statistics
        layers = list(encoder.layers)
        channels = list(encoder.out_dims)
        strides = encoder.feature_extractor.feature_info.reduction()
        self.teacher = EmaNormalizedEncoder(encoder, eman_momentum)
        self.student = ContextualStudent(
            channels, strides, student.blocks, student.contextual, student.width, student.linear_output
        )
        self.scorer = cosine_scorer(layers, channels, strides, scoring)
        use_channels_last(self)

    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the teacher's features of ``images`` per scale (in training its BatchNorm statistics move first).

        Args:
            images: Pre-processed images ``(N, 3, H, W)``.

        Returns:
            Features ``(N, C_k, H_k, W_k)``, shallowest first.

        """
        return list(self.teacher(images).values())

    def training_outputs(self, images: torch.Tensor, **schedule: bool) -> AsymmetricTsTrainingOutput:
        """Return the teacher and student features of a batch of normal training images.

        Args:
            images: Pre-processed normal images ``(N, 3, H, W)``.
            **schedule: Ignored: the teacher never trains.

        Returns:
            Per-scale teacher and student features, the input of
            :class:`~anomalib_dhkd.models.asymmetric_ts.loss.AsymmetricTsLoss`.

        """
        del schedule  # the teacher never trains
        return AsymmetricTsTrainingOutput(self.teacher_features(images), self.student(images))

    def scoring_input(self, images: torch.Tensor) -> ScoringInput:
        """Return the teacher and student features of ``images`` for the scorer.

        Args:
            images: Pre-processed images ``(N, 3, H, W)``.

        Returns:
            Per-scale teacher and student features and the image size.

        """
        return ScoringInput(self.teacher_features(images), self.student(images), images.shape[-2:])
