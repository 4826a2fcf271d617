"""PyTorch model of Bikd: bidirectional knowledge distillation.

Our reading of "Unsupervised anomaly detection and localization via bidirectional knowledge distillation" (Wang,
Wang, Pan, Wang; Neural Computing and Applications 36, 2024). A frozen pretrained teacher encodes the image into
``K`` scales. Two students learn it in opposite directions:

    images --> teacher (frozen) --> T_k
    images --> forward student (the teacher's topology, random init) --> F_k     (forward KD, as STFPM)
    T --> one-class bottleneck --> pyramid decoder --> R_k                        (backward KD, as reverse distillation)
    feature exchange (default): F --> bottleneck --> decoder --> R                 (the reverse branch reads F)
    training: both students get the image with synthetic anomalies on the object, the targets T of the clean image
    loss: d(T, F) + (1 - cos)(T, R) [+ exchange_weight * d(F, R), off by default]  (loss.py)
    map and score: DiscrepancyScorer over 1 - cos of (T, F) and (T, R), every scale (anomaly_map.py)

The forward student generalises (it sees the image itself); the reverse branch cannot represent what the bottleneck
never saw. Two readings of the paper's reciprocal exchange: the forward student's features as the reverse branch's
input (``feature_exchange``, the default: the reverse loss trains the forward student too and the decoder rebuilds the
teacher from what the student kept), or a consistency term between the directions' outputs (``exchange_weight``),
which measured worse (model README).
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from anomalib.models.components import TimmFeatureExtractor

from anomalib_dhkd.components.encoders import (
    OneClassBottleneck,
    PyramidDecoder,
    build_encoder,
    without_unused_blocks,
)
from anomalib_dhkd.components.scoring import ScoringConfig, ScoringInput
from anomalib_dhkd.models.bikd.anomaly_map import DIRECTIONS, bikd_scorer
from anomalib_dhkd.models.network import TeacherStudentNetwork, use_channels_last


class BikdTrainingOutput(NamedTuple):
    """Per-scale features of a training batch: the teacher's, the forward student's and the reverse decoder's.

    A direction the model does not have is ``None``.
    """

    teacher: list[torch.Tensor]
    forward_student: list[torch.Tensor] | None
    reverse_student: list[torch.Tensor] | None


class BikdModel(TeacherStudentNetwork):
    """Bikd network: frozen teacher, forward student, reverse bottleneck and decoder, scorer.

    Args:
        backbone: timm backbone of the teacher and (randomly initialised) of the forward student.
        layers: Teacher layers, shallowest first.
        pre_trained: Load the teacher's ImageNet weights.
        scoring: Scoring settings; ``None`` values: every scale of both directions scores, plain map.
        directions: The branches to build, of ``("forward", "reverse")``; one alone is an ablation.
        feature_exchange: With both directions, the reverse bottleneck embeds the forward student's features instead
            of the teacher's; with one direction there is nothing to exchange.

    Raises:
        ValueError: For no direction or an unknown one.

    Example:
        >>> model = BikdModel("resnet18", ["layer1", "layer2"], False, ScoringConfig())
        >>> model.eval()(torch.rand(1, 3, 64, 64)).anomaly_map.shape
        torch.Size([1, 1, 64, 64])

    """

    def __init__(
        self,
        backbone: str,
        layers: Sequence[str],
        pre_trained: bool,
        scoring: ScoringConfig,
        directions: Sequence[str] = DIRECTIONS,
        feature_exchange: bool = True,
    ) -> None:
        super().__init__()
        if not directions or set(directions) - set(DIRECTIONS):
            msg = f"directions must be one or both of {list(DIRECTIONS)}, got {list(directions)}."
            raise ValueError(msg)
        self.directions = tuple(d for d in DIRECTIONS if d in directions)
        self.feature_exchange = feature_exchange and self.directions == DIRECTIONS
        self.teacher = build_encoder(backbone, layers, pre_trained)
        layers = list(self.teacher.layers)
        channels = list(self.teacher.out_dims)
        strides = self.teacher.feature_extractor.feature_info.reduction()
        self.forward_student = None
        self.bottleneck = self.decoder = None
        if "forward" in self.directions:
            student = TimmFeatureExtractor(backbone, layers, pre_trained=False, requires_grad=True)
            self.forward_student = without_unused_blocks(student)
        if "reverse" in self.directions:
            self.bottleneck = OneClassBottleneck(channels, strides)
            self.decoder = PyramidDecoder(channels, strides)
        self.scorer = bikd_scorer(layers, channels, strides, scoring, self.directions)
        use_channels_last(self)

    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the frozen teacher's features of ``images`` per scale."""
        self.teacher.eval()
        return list(self.teacher(images).values())

    def training_outputs(
        self, images: torch.Tensor, augmented: torch.Tensor | None = None, **schedule: bool
    ) -> BikdTrainingOutput:
        """Return the teacher's features of normal images and both students' features of their augmented copies.

        Args:
            images: Normal training images.
            augmented: The same images with synthetic anomalies; the students learn to give the teacher's features
                of the clean images from them. ``None``: the images themselves.
            **schedule: Unused: the teacher never trains.

        Returns:
            Teacher, forward-student and reverse-decoder features per scale.

        """
        del schedule
        augmented = images if augmented is None else augmented
        teacher = self.teacher_features(images)
        forward = reverse = None
        if self.forward_student is not None:
            forward = list(self.forward_student(augmented).values())
        if self.decoder is not None:
            teacher_augmented = teacher if augmented is images else None
            reverse = self.reconstruct(self.reverse_source(augmented, forward, teacher_augmented))
        return BikdTrainingOutput(teacher, forward, reverse)

    def reverse_source(
        self,
        images: torch.Tensor,
        forward: list[torch.Tensor] | None,
        teacher: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Return what the reverse bottleneck embeds.

        The forward student's features with the feature exchange, else the teacher's features of ``images``
        (``teacher``, where already computed).
        """
        if self.feature_exchange:
            return forward
        return self.teacher_features(images) if teacher is None else teacher

    def reconstruct(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Return the reverse branch's reconstruction of the teacher's scales from the embedding of ``features``."""
        return self.decoder(self.bottleneck(features), sizes=[tuple(f.shape[-2:]) for f in features])

    def scoring_input(self, images: torch.Tensor) -> ScoringInput:
        """Return the directions' features of ``images`` for the scorer.

        Returns:
            The teacher's features once per direction, against the forward student's and then the reverse
            reconstruction's.

        """
        teacher = self.teacher_features(images)
        forward = None if self.forward_student is None else list(self.forward_student(images).values())
        students = list(forward or [])
        if self.decoder is not None:
            students += self.reconstruct(self.reverse_source(images, forward, teacher))
        return ScoringInput(teacher * len(self.directions), students, images.shape[-2:])
