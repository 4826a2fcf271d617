"""PyTorch model of DHKD: Denoising Heterogeneous Knowledge Distillation.

Our reading of "Unsupervised Image Anomaly Detection with Denoised Heterogeneous Networks via Knowledge
Distillation". Teacher and student are *heterogeneous*: the teacher is an invertible normalizing flow that models
the density of normal features, the student a feed-forward network. The teacher should maximise
``Diff(T(I), T(I'))`` between an image ``I`` and its anomalous version ``I'`` (a density model sends off-manifold
features far into the tails of its latent), while the student, trained to *denoise* (Sec. 3.2: it sees noisy
features and reproduces the teacher's latent of the clean ones), minimises ``Diff(S(I), S(I'))``. Their discrepancy
is small on normal regions and large on anomalies.

Pipeline, per layer ``k`` of a frozen timm encoder:

    features f_k --(BatchNorm, no affine)--> x_k
    teacher:  T_k = Flow_k(x_k + noise')  (training NLL; FrEIA affine couplings, soft clamping)
              T_k = Flow_k(x_k)           (distillation target, inference)
    student:  S_k = Student_k(x_k + noise)  (training; dual-domain spatial + frequency blocks)
              S_k = Student_k(x_k)          (inference)
    map and score: DiscrepancyScorer(T, S) with d_k = mean_c (S_k - T_k)^2 (anomaly_map.py)
"""

from typing import Any, NamedTuple

import torch
from torch import nn

from anomalib_dhkd.components.encoders import build_encoder, encoder_layer_names
from anomalib_dhkd.components.noise import add_feature_noise
from anomalib_dhkd.components.scoring import ScoringConfig, ScoringInput
from anomalib_dhkd.components.students import DenoisingStudentConfig, DualDomainStudent
from anomalib_dhkd.components.teachers import ConvFlow, FlowTeacherConfig
from anomalib_dhkd.models.dhkd.anomaly_map import dhkd_scorer
from anomalib_dhkd.models.dhkd.loss import check_something_trains
from anomalib_dhkd.models.network import TeacherStudentNetwork, use_channels_last

# Scoring-module prefixes of checkpoints whose scoring modules sat on the network itself, so that those still load.
LEGACY_SCORING_PREFIXES = {
    "position_statistics.": "scorer.position_statistics.",
    "score_fusion.": "scorer.score_fusion.",
    "map_coherence.": "scorer.map_coherence.",
    "anomaly_map_generator.": "scorer.map_fusion.",
}


class DhkdTrainingOutput(NamedTuple):
    """Per-layer outputs needed by :class:`anomalib_dhkd.models.dhkd.loss.DhkdLoss`."""

    teacher_latents: list[torch.Tensor]
    log_dets: list[torch.Tensor]
    # Both None during the teacher warm-up, when the students do not run.
    student_latents: list[torch.Tensor] | None
    teacher_targets: list[torch.Tensor] | None


def flow_condition_channels(channels: int, condition_channels: int) -> int:
    """Return the positional-encoding channels of the flow on ``channels`` features: at most as many as it has.

    A coupling sub-network is as wide as its input, half the features plus the encoding, so 64 encoding channels
    would make the flow on the 24 channels of ``tf_efficientnet_lite0``'s ``blocks.1`` the costliest part of a
    training step. Rounded down to a multiple of 4, as the 2-D sinusoidal encoding needs.

    Args:
        channels: Feature channels of the layer.
        condition_channels: Requested encoding channels (``FlowTeacherConfig.condition_channels``).

    Returns:
        The encoding channels for this layer's flow.

    Example:
        >>> flow_condition_channels(24, 64), flow_condition_channels(30, 64), flow_condition_channels(320, 64)
        (24, 28, 64)

    """
    return min(condition_channels, channels - channels % 4)


class DhkdModel(TeacherStudentNetwork):
    """DHKD network: frozen encoder, per-layer flow teachers and dual-domain denoising students.

    Args:
        backbone: timm backbone of the encoder.
        layers: Encoder layers whose discrepancies form the anomaly map, one teacher-student pair each.
        pre_trained: Load the backbone's ImageNet weights.
        teacher: Flow teacher settings, ``noise_level`` decided (:func:`~anomalib_dhkd.models.dhkd.config.resolve`).
        student: Denoising student settings.
        scoring: Scoring settings, every default decided; its ``score_layers`` not in ``layers`` get a
            teacher-student pair of their own that only the image score uses.

    Raises:
        ValueError: For negative noise settings, an unknown layer, or undecided settings.

    Example:
        >>> from anomalib_dhkd.models.dhkd.config import resolve
        >>> layers = ["blocks.1", "blocks.2", "blocks.4"]
        >>> teacher, scoring = resolve(False, layers, FlowTeacherConfig(), ScoringConfig())
        >>> model = DhkdModel("tf_efficientnet_lite0", layers, False, teacher, DenoisingStudentConfig(), scoring)
        >>> model.eval()(torch.rand(1, 3, 64, 64)).anomaly_map.shape
        torch.Size([1, 1, 64, 64])

    """

    def __init__(
        self,
        backbone: str,
        layers: list[str],
        pre_trained: bool,
        teacher: FlowTeacherConfig,
        student: DenoisingStudentConfig,
        scoring: ScoringConfig,
    ) -> None:
        super().__init__()
        if scoring.unresolved():
            msg = f"Scoring settings {scoring.unresolved()} are undecided; decide them with config.resolve first."
            raise ValueError(msg)
        noise = {
            "teacher.noise_level": teacher.noise_level,
            "student.noise_level": student.noise_level,
            "student.noise_correlation": student.noise_correlation,
        }
        negative = {name: value for name, value in noise.items() if value is None or value < 0}
        if negative:  # before the encoder loads, not at the first training step
            msg = f"Noise settings must be non-negative numbers, got {negative}."
            raise ValueError(msg)
        self.encoder = build_encoder(backbone, encoder_layer_names(layers, scoring.score_layers), pre_trained)
        extracted = list(self.encoder.layers)
        channels = list(self.encoder.out_dims)
        strides = self.encoder.feature_extractor.feature_info.reduction()
        self.teacher_noise_level = teacher.noise_level
        self.noise_level = student.noise_level
        self.noise_correlation = student.noise_correlation
        self.feature_norms = nn.ModuleList(nn.BatchNorm2d(c, affine=False) for c in channels)
        self.teachers = nn.ModuleList(
            ConvFlow(
                c,
                teacher.blocks,
                teacher.hidden_ratio,
                teacher.clamp,
                flow_condition_channels(c, teacher.condition_channels),
                teacher.output_kernel_size,
            )
            for c in channels
        )
        self.students = nn.ModuleList(
            DualDomainStudent(c, student.blocks, student.hidden_channels(c)) for c in channels
        )
        self.scorer = dhkd_scorer(extracted, channels, strides, layers, scoring)
        self._register_load_state_dict_pre_hook(_rename_legacy_scoring_keys)
        use_channels_last(self)

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Return the frozen encoder's features, standardised per channel with running statistics of training data.

        Args:
            images: Pre-processed images ``(N, 3, H, W)``.

        Returns:
            Per-layer features ``(N, C_k, h_k, w_k)``; in training mode standardised with the batch's statistics,
            which update the running ones.

        """
        self.encoder.eval()
        with torch.no_grad():
            features = self.encoder(images).values()
        return [norm(f) for norm, f in zip(self.feature_norms, features, strict=True)]

    def training_outputs(
        self,
        images: torch.Tensor,
        train_teacher: bool = True,
        train_student: bool = True,
    ) -> DhkdTrainingOutput:
        """Return the per-layer teacher and student outputs of a batch of normal images.

        Args:
            images: Pre-processed normal images ``(N, 3, H, W)``.
            train_teacher: See :meth:`distillation_outputs`.
            train_student: See :meth:`distillation_outputs`.

        Returns:
            The inputs of :class:`~anomalib_dhkd.models.dhkd.loss.DhkdLoss`.

        """
        return self.distillation_outputs(self.extract_features(images), train_teacher, train_student)

    def distillation_outputs(
        self,
        features: list[torch.Tensor],
        train_teacher: bool = True,
        train_student: bool = True,
    ) -> DhkdTrainingOutput:
        """Teacher latents and log-determinants of dequantised features, student latents of noisy ones.

        The teacher's likelihood is fitted on ``x + noise'`` (``teacher.noise_level``), like dequantisation in density
        models: a flow fitted to the exact training features can put sharp density ridges on them, so that any small
        perturbation of a normal feature (INT8 rounding, JPEG, sensor noise) moves its latent far. The distillation
        target is the teacher's latent of the *clean* features (Sec. 3.2).

        Args:
            features: Per-layer standardised encoder features.
            train_teacher: ``False`` once the teacher is frozen: one gradient-free teacher pass over the clean
                features gives both the reported likelihood and the student's targets.
            train_student: ``False`` during the teacher warm-up: the students do not run.

        Returns:
            Teacher latents and log-determinants, student latents and their targets (both ``None`` without
            ``train_student``).

        Raises:
            ValueError: If neither the teacher nor the student trains.

        """
        check_something_trains(train_teacher, train_student)
        if train_teacher:
            noisy_features = [add_feature_noise(f, self.teacher_noise_level) for f in features]
            latents, log_dets = self._teacher_outputs(noisy_features)
        else:
            with torch.no_grad():
                latents, log_dets = self._teacher_outputs(features)
        if not train_student:
            return DhkdTrainingOutput(latents, log_dets, None, None)
        if not train_teacher:
            targets = latents  # already the gradient-free pass over the clean features
        elif self.teacher_noise_level == 0:
            targets = [z.detach() for z in latents]
        else:
            with torch.no_grad():
                targets = self._teacher_outputs(features)[0]
        student_latents = [
            student(add_feature_noise(f, self.noise_level, self.noise_correlation))
            for student, f in zip(self.students, features, strict=True)
        ]
        return DhkdTrainingOutput(latents, log_dets, student_latents, targets)

    def _teacher_outputs(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-layer flow latents and log-determinants of ``features``."""
        latents, log_dets = zip(*(teacher(f) for teacher, f in zip(self.teachers, features, strict=True)), strict=True)
        return list(latents), list(log_dets)

    def scoring_input(self, images: torch.Tensor) -> ScoringInput:
        """Return the teacher latents and student predictions of the clean features of ``images``, for the scorer.

        Args:
            images: Pre-processed images ``(N, 3, H, W)``.

        Returns:
            Per-layer latents and predictions of every extracted layer (map and score-only), and the image size.

        """
        features = self.extract_features(images)
        latents = [teacher(f)[0] for teacher, f in zip(self.teachers, features, strict=True)]
        predictions = [student(f) for student, f in zip(self.students, features, strict=True)]
        return ScoringInput(latents, predictions, images.shape[-2:], features)


def _rename_legacy_scoring_keys(state_dict: dict[str, Any], prefix: str, *_args: Any) -> None:
    """Load-state-dict pre-hook: checkpoints saved before the scorer existed load into it."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        local = key[len(prefix) :]
        for old, new in LEGACY_SCORING_PREFIXES.items():
            if local.startswith(old):
                state_dict[prefix + new + local[len(old) :]] = state_dict.pop(key)
