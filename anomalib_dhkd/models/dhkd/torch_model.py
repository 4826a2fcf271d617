"""PyTorch model of DHKD: Denoising Heterogeneous Knowledge Distillation.

Our reading of "Unsupervised Image Anomaly Detection with Denoised Heterogeneous Networks via Knowledge
Distillation". Teacher and student are *heterogeneous*: the teacher is an invertible normalizing flow that models
the density of normal features, the student a conventional feed-forward network. The teacher should maximise
``Diff(T(I), T(I'))`` between an image ``I`` and its anomalous version ``I'`` (a density model sends off-manifold
features far into the tails of its latent), while the student, trained to *denoise* (it sees noisy features and
must reproduce the teacher's latent of the clean ones), minimises ``Diff(S(I), S(I'))``: it projects anything it
is given back towards the normal manifold. Their discrepancy is therefore small on normal regions and large on
anomalies.

Pipeline, per scale ``k`` of a frozen timm encoder:

    features f_k --(BatchNorm, no affine)--> x_k
    teacher:  T_k = Flow_k(x_k + noise')  (training NLL)   (FrEIA affine couplings, soft clamping)
              T_k = Flow_k(x_k)           (distillation target, inference)
    student:  S_k = Student_k(x_k + noise)  (training)      (dual-domain spatial + frequency blocks)
              S_k = Student_k(x_k)          (inference)
    d_k = mean_c (S_k - T_k)^2,   z_k = (d_k - mean_k(p)) / std_k(p)   (per-position statistics of normal images)
    anomaly map = Gaussian-smoothed (blur_sigma) mean of d_k over `layers` (of z_k with standardize_map)
                  + the smoothed coherence of S_k - T_k over `coherence_layers` (default: the deepest of `layers`),
                  each scaled on normal images (coherence_weight; MapCoherence)
    local score = mean of the top 1 % of the Gaussian-smoothed (score_blur_sigma) mean of z_k over `score_layers`
    image score = local score + Mahalanobis distances of the channel statistics of T_k over `score_layers`, each
                  standardised on normal images (global_score; ImageScoreFusion)
"""

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import timm
import torch
from anomalib.data import InferenceBatch
from anomalib.models.components import TimmFeatureExtractor
from torch import nn

from anomalib_dhkd.components import (
    ConvFlow,
    DualDomainStudent,
    PositionStandardizer,
    add_feature_noise,
    channel_statistics,
    map_moments,
    vector_moments,
)
from anomalib_dhkd.models.dhkd.anomaly_map import (
    AnomalyMapGenerator,
    ImageScoreFusion,
    MapCoherence,
    discrepancy_coherence,
    squared_discrepancy,
)
from anomalib_dhkd.models.dhkd.loss import check_something_trains

# Teacher dequantisation noise by encoder (see DhkdModel): it helps pretrained features and hurts random ones.
DEFAULT_TEACHER_NOISE_LEVEL = {True: 0.3, False: 0.0}
# Weight of the discrepancy coherence in the anomaly map by encoder (see DhkdModel); 0: none.
DEFAULT_COHERENCE_WEIGHT = {True: 0.25, False: 0.0}


class ScaleOutputs(NamedTuple):
    """Per-scale inference outputs that the anomaly map and the image score are built from."""

    teacher_latents: list[torch.Tensor]
    discrepancies: list[torch.Tensor]
    # Coherence of each coherence layer's discrepancy; None without MapCoherence or when not asked for.
    coherence: list[torch.Tensor] | None


class DhkdTrainingOutput(NamedTuple):
    """Per-scale outputs needed by :class:`anomalib_dhkd.models.dhkd.loss.DhkdLoss`."""

    teacher_latents: list[torch.Tensor]
    log_dets: list[torch.Tensor]
    # Both None during the teacher warm-up, when the students do not run.
    student_latents: list[torch.Tensor] | None
    teacher_targets: list[torch.Tensor] | None


def build_encoder(backbone: str, layers: list[str], pre_trained: bool) -> TimmFeatureExtractor:
    """Build a frozen timm feature extractor of ``layers``, shallowest first, and fail clearly on a bad layer name.

    anomalib's extractor drops unknown layer names with only a warning; a model silently trained on fewer scales
    than configured is worse than an error. timm returns features in depth order whatever the order of the names,
    so the layers are sorted by depth here. Pretrained weights that cannot be fetched (an offline machine) also end
    in one line saying what to do instead.
    """
    with torch.device("meta"):  # layer names only: no weights allocated or initialised (0.08 s, not 0.9 s, for WRN-50)
        available = timm.create_model(backbone, features_only=True, pretrained=False).feature_info.module_name()
    unknown = sorted(set(layers) - set(available))
    if unknown:
        msg = f"Backbone {backbone!r} has no feature layer(s) {unknown}. Choose from {available}."
        raise ValueError(msg)
    try:
        return TimmFeatureExtractor(
            backbone=backbone, layers=sorted(layers, key=available.index), pre_trained=pre_trained, requires_grad=False
        )
    except OSError as error:  # huggingface_hub's LocalEntryNotFoundError and network errors are OSErrors
        msg = (
            f"Could not load ImageNet weights for backbone {backbone!r} ({type(error).__name__}); this machine may be "
            "offline. Use backbone='tf_efficientnet_lite0' with layers blocks.1, blocks.2, blocks.4 after "
            "`python -m anomalib_dhkd.weights install`, or pre_trained=False."
        )
        raise RuntimeError(msg) from error


def encoder_layer_names(layers: Sequence[str], score_layers: Sequence[str]) -> list[str]:
    """Layers the encoder extracts: ``layers``, then the ``score_layers`` not among them."""
    return list(dict.fromkeys([*layers, *score_layers]))


def default_score_layers(layers: list[str], pre_trained: bool) -> list[str]:
    """Return the deepest of ``layers`` with ImageNet weights, all of ``layers`` without.

    Pretrained deep features are the most semantic; a random encoder's deep features are not, and its shallow
    discrepancies score better (bottle without ImageNet weights, image AUROC of the deepest and of all three
    standardised scales: 0.921 and 0.991; see :mod:`anomalib_dhkd.models.dhkd.anomaly_map`).
    """
    return list(layers[-1:]) if pre_trained else list(layers)


def coherence_windows(window: int, strides: list[int], reference_stride: int) -> list[int]:
    """Neighbourhood sides, in cells of layers of ``strides``, spanning ``window`` cells of ``reference_stride``.

    Rounded down to an odd number of cells, at least one: 7 cells of stride 16 (112 px) are 3 cells of stride 32.
    """
    cells = [int(window * reference_stride / stride) for stride in strides]
    return [max(1, count - 1 + count % 2) for count in cells]


def flow_condition_channels(channels: int, condition_channels: int) -> int:
    """Positional-encoding channels of the flow on ``channels`` features: at most as many as it has features.

    A coupling sub-network is as wide as its input, half the features plus the encoding, so 64 encoding channels made
    the flow on the 24 channels of ``tf_efficientnet_lite0``'s stride-4 ``blocks.1`` 3.5 times as wide as the features
    need and the costliest part of a training step (0.36 of 1.03 s, batch 8, 256 px, 2 CPU threads); capped, 0.16 s.
    Rounded down to a multiple of 4, as the 2-D sinusoidal encoding needs.
    """
    return min(condition_channels, channels - channels % 4)


class DhkdModel(nn.Module):
    """DHKD network: frozen encoder, per-scale flow teachers and dual-domain denoising students.

    Args:
        backbone: timm backbone of the encoder.
        layers: Encoder layers whose discrepancies form the anomaly map, one teacher-student pair per layer.
        pre_trained: Load the backbone's ImageNet weights.
        score_layers: Encoder layers whose standardised discrepancies form the image score; a layer not in
            ``layers`` gets a teacher-student pair of its own that the map does not use. ``None``: the deepest of
            ``layers`` with ImageNet weights, all of them without (:func:`default_score_layers`).
        flow_blocks: Coupling blocks per teacher flow.
        flow_hidden_ratio: Width of the coupling sub-networks relative to their input.
        flow_clamp: Soft-clamping bound of the coupling log-scales.
        condition_channels: Positional-encoding channels the couplings are conditioned on (``0``: none), at most
            the flow's feature channels (:func:`flow_condition_channels`).
        student_blocks: Dual-domain blocks per student.
        noise_level: Student training noise standard deviation relative to each channel's feature standard deviation.
        noise_correlation: Spatial correlation length of the student's training noise in feature cells; ``0``:
            independent at every position (:func:`~anomalib_dhkd.components.add_feature_noise`).
        teacher_noise_level: Dequantisation noise of the teacher's maximum-likelihood input, relative likewise;
            ``None``: 0.3 with ImageNet weights, 0 without (:data:`DEFAULT_TEACHER_NOISE_LEVEL`).
        blur_sigma: Gaussian smoothing of the anomaly map in pixels.
        score_blur_sigma: Gaussian smoothing of the map the image score is taken from; ``None``: ``blur_sigma``.
        score_fraction: Share of the highest values of the smoothed score map averaged into the image score.
        standardize_map: Fuse the per-position standardised discrepancies into the anomaly map instead of the raw
            ones; ``None``: only without ImageNet weights.
        global_score: Add to the local image score the distances of the score layers' teacher-latent channel
            statistics to those of normal images (:class:`ImageScoreFusion`); ``None``: only with ImageNet weights,
            whose latents' image statistics carry evidence the local score misses (a random encoder's do not).
        coherence_layers: Trained layers (of ``layers`` or ``score_layers``) whose discrepancy coherence is added to
            the anomaly map; ``None``: the deepest of ``layers``.
        coherence_weight: Weight of each coherence layer's map, relative to the local map's spread on normal images
            (:class:`MapCoherence`): one for all or one per layer; ``0``: none; ``None``: 0.25 with ImageNet weights,
            0 without (:data:`DEFAULT_COHERENCE_WEIGHT`).
        coherence_window: Side of the coherence neighbourhood in cells of the deepest of ``layers``, odd; other
            coherence layers span the same pixels (:func:`coherence_windows`).

    Example:
        >>> model = DhkdModel(backbone="tf_efficientnet_lite0", layers=["blocks.1", "blocks.2", "blocks.4"],
        ...                   pre_trained=False)
        >>> model.eval()(torch.rand(1, 3, 64, 64)).anomaly_map.shape
        torch.Size([1, 1, 64, 64])

    """

    def __init__(
        self,
        backbone: str,
        layers: list[str],
        pre_trained: bool = True,
        score_layers: list[str] | None = None,
        flow_blocks: int = 4,
        flow_hidden_ratio: float = 1.0,
        flow_clamp: float = 2.0,
        condition_channels: int = 64,
        student_blocks: int = 2,
        noise_level: float = 0.5,
        noise_correlation: float = 1.0,
        teacher_noise_level: float | None = None,
        blur_sigma: float = 4.0,
        score_blur_sigma: float | None = None,
        score_fraction: float = 0.01,
        standardize_map: bool | None = None,
        global_score: bool | None = None,
        coherence_layers: Sequence[str] | None = None,
        coherence_weight: float | Sequence[float] | None = None,
        coherence_window: int = 7,
    ) -> None:
        super().__init__()
        noise = {
            "noise_level": noise_level,
            "noise_correlation": noise_correlation,
            "teacher_noise_level": teacher_noise_level,
        }
        negative = {name: value for name, value in noise.items() if value is not None and value < 0}
        if negative:  # before the encoder loads, not at the first training step
            msg = f"Noise settings must be non-negative, got {negative}."
            raise ValueError(msg)
        self.score_layers = default_score_layers(layers, pre_trained) if score_layers is None else list(score_layers)
        self.encoder = build_encoder(backbone, encoder_layer_names(layers, self.score_layers), pre_trained)
        extracted = list(self.encoder.layers)
        self.map_indices = [extracted.index(layer) for layer in layers]
        deepest_map_index = max(self.map_indices)  # extracted layers are in depth order
        coherence_weight = DEFAULT_COHERENCE_WEIGHT[pre_trained] if coherence_weight is None else coherence_weight
        coherence_layers = list(coherence_layers or [extracted[deepest_map_index]])
        self.coherence_indices, self.map_coherence = self._coherence_layers(
            coherence_layers, coherence_weight, coherence_window, deepest_map_index
        )
        self.score_indices = [extracted.index(layer) for layer in self.score_layers]
        channels = list(self.encoder.out_dims)
        self.noise_level = noise_level
        self.noise_correlation = noise_correlation
        self.teacher_noise_level = (
            DEFAULT_TEACHER_NOISE_LEVEL[pre_trained] if teacher_noise_level is None else teacher_noise_level
        )
        self.standardize_map = not pre_trained if standardize_map is None else standardize_map
        self.feature_norms = nn.ModuleList(nn.BatchNorm2d(c, affine=False) for c in channels)
        self.teachers = nn.ModuleList(
            ConvFlow(c, flow_blocks, flow_hidden_ratio, flow_clamp, flow_condition_channels(c, condition_channels))
            for c in channels
        )
        self.students = nn.ModuleList(DualDomainStudent(c, student_blocks) for c in channels)
        self.position_statistics = nn.ModuleList(PositionStandardizer() for _ in channels)
        self.anomaly_map_generator = AnomalyMapGenerator(
            sigma=blur_sigma, score_fraction=score_fraction, score_sigma=score_blur_sigma
        )
        global_score = pre_trained if global_score is None else global_score
        self.score_fusion = ImageScoreFusion([channels[i] for i in self.score_indices]) if global_score else None
        # Channels-last weights make every convolution, and the activations after it, channels-last (oneDNN on CPU,
        # cuDNN on GPU). On 2 CPU cores a training step then took 6 to 20 % less time and inference 19 to 25 % less,
        # with outputs equal to 1e-5; converting only the inputs did not help (FFT, padding and concatenation
        # return contiguous tensors).
        self.to(memory_format=torch.channels_last)

    def _coherence_layers(
        self, layers: list[str], weight: float | Sequence[float], window: int, reference_index: int
    ) -> tuple[list[int], MapCoherence | None]:
        """Return the coherence layers' indices among the extracted layers and their :class:`MapCoherence`.

        Raises:
            ValueError: If a layer has no teacher-student pair, or ``window`` is not an odd number of cells.

        """
        extracted = list(self.encoder.layers)
        untrained = [layer for layer in layers if layer not in extracted]
        if untrained:
            msg = f"coherence_layers {untrained} have no teacher-student pair; choose from {extracted}."
            raise ValueError(msg)
        if window < 1 or window % 2 == 0:
            msg = f"coherence_window must be an odd number of cells, got {window}."
            raise ValueError(msg)
        weights = [weight] * len(layers) if isinstance(weight, int | float) else list(weight)
        if not any(weights):
            return [], None
        indices = [extracted.index(layer) for layer in layers]
        strides = self.encoder.feature_extractor.feature_info.reduction()
        windows = coherence_windows(window, [strides[i] for i in indices], strides[reference_index])
        return indices, MapCoherence(windows, weights)

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen encoder features, standardised per channel with running statistics of the training data."""
        self.encoder.eval()
        with torch.no_grad():
            features = self.encoder(images).values()
        return [norm(f) for norm, f in zip(self.feature_norms, features, strict=True)]

    def training_outputs(
        self,
        features: list[torch.Tensor],
        train_teacher: bool = True,
        train_student: bool = True,
    ) -> DhkdTrainingOutput:
        """Teacher latents and log-determinants of dequantised features, student latents of noisy ones.

        The teacher's likelihood is fitted on ``x + noise'`` (``teacher_noise_level``), like dequantisation in
        density models: a flow fitted to the exact training features can put sharp density ridges on them, and
        then any small perturbation of a normal feature (INT8 rounding of the encoder, JPEG, sensor noise) moves
        its latent far. The distillation target is still the teacher's latent of the *clean* features (Sec. 3.2
        of the paper: the student maps noisy inputs to the teacher's view of the clean ones).

        Args:
            features: Per-scale standardised encoder features.
            train_teacher: ``False`` once the teacher is frozen: one gradient-free teacher pass over the clean
                features gives both the reported likelihood and the student's targets.
            train_student: ``False`` during the teacher warm-up: neither the students nor the teacher's target
                pass run (``student_latents`` and ``teacher_targets`` are ``None``).

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
        """Per-scale flow latents and log-determinants of ``features``."""
        latents, log_dets = zip(*(teacher(f) for teacher, f in zip(self.teachers, features, strict=True)), strict=True)
        return list(latents), list(log_dets)

    def latents_and_discrepancies(self, features: list[torch.Tensor], with_coherence: bool = True) -> ScaleOutputs:
        """Per-scale teacher latents of clean features and discrepancy maps ``(N, 1, h_k, w_k)``.

        With ``coherence_weight`` and ``with_coherence``, also the coherence of each coherence layer's discrepancy.
        """
        latents = [teacher(f)[0] for teacher, f in zip(self.teachers, features, strict=True)]
        predictions = [student(f) for student, f in zip(self.students, features, strict=True)]
        discrepancies = [squared_discrepancy(s, z) for s, z in zip(predictions, latents, strict=True)]
        coherence = None
        if self.map_coherence is not None and with_coherence:
            coherence = [
                discrepancy_coherence(predictions[i] - latents[i], window)
                for i, window in zip(self.coherence_indices, self.map_coherence.windows, strict=True)
            ]
        return ScaleOutputs(latents, discrepancies, coherence)

    @torch.no_grad()
    def fit_normal_statistics(
        self,
        images: Callable[[], Iterable[torch.Tensor]],
        sum_across_processes: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Fit the statistics of normal images that scoring uses, in inference passes over the training images.

        The first pass fits each scale's per-position discrepancy statistics and, with ``global_score``, the Gaussians
        of the score layers' latent channel statistics; a second pass (with ``global_score`` or ``coherence_weight``)
        calibrates the image score's sources (:class:`ImageScoreFusion`) and scales the coherence map
        (:class:`MapCoherence`).

        Args:
            images: Returns a fresh iterable of batches ``(N, 3, H, W)`` of normal (pre-processed) training images,
                at the size the model will be run at, once per pass.
            sum_across_processes: Sums a tensor over distributed processes; ``None`` on a single process.

        """
        was_training = self.training
        self.eval()  # the feature norms must not update their running statistics here
        total = sum_across_processes or (lambda moments: moments)
        try:
            moments = [total(m) for m in self._summed_over_batches(images(), self._statistics_moments)]
            scales = len(self.position_statistics)
            for statistics, scale_moments in zip(self.position_statistics, moments[:scales], strict=True):
                statistics.fit(scale_moments)
            if self.score_fusion is not None:
                for distance, latent_moments in zip(self.score_fusion.distances, moments[scales:], strict=True):
                    distance.fit(latent_moments)
            if self.score_fusion is not None or self.map_coherence is not None:
                source_moments, *map_pixel_moments = (
                    total(m) for m in self._summed_over_batches(images(), self._calibration_moments)
                )
                if self.score_fusion is not None:
                    self.score_fusion.fit_calibration(source_moments)
                if self.map_coherence is not None:
                    self.map_coherence.fit(map_pixel_moments[0], map_pixel_moments[1:])
        finally:
            self.train(was_training)

    @staticmethod
    def _summed_over_batches(
        batches: Iterable[torch.Tensor], moments_of: Callable[[torch.Tensor], list[torch.Tensor]]
    ) -> list[torch.Tensor]:
        """Sum ``moments_of(batch)`` over the batches.

        Raises:
            ValueError: If there are no batches.

        """
        summed: list[torch.Tensor] | None = None
        for batch in batches:
            moments = moments_of(batch)
            summed = moments if summed is None else [s + m for s, m in zip(summed, moments, strict=True)]
        if summed is None:
            msg = "Statistics of normal images need training images; the given image batches were empty."
            raise ValueError(msg)
        return summed

    def _statistics_moments(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Moments of each scale's discrepancy map, then (``global_score``) of each score layer's latent statistics."""
        latents, discrepancies, _ = self.latents_and_discrepancies(self.extract_features(images), with_coherence=False)
        moments = [map_moments(d) for d in discrepancies]
        if self.score_fusion is not None:
            moments += [vector_moments(channel_statistics(latents[i])) for i in self.score_indices]
        return moments

    def _calibration_moments(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Moments of the image score's sources, then (``coherence_weight``) pixel moments of smoothed maps.

        The maps are the local map (without the coherence), then each coherence layer's coherence map.
        """
        local_map, coherence, sources = self._map_coherence_and_sources(images, add_coherence=False)
        moments = [map_moments(sources)]
        if coherence is not None:
            smooth = self.anomaly_map_generator.smooth
            coherence_maps = [smooth([layer_coherence], image_size=images.shape[-2:]) for layer_coherence in coherence]
            moments += [map_moments(m.flatten()) for m in [local_map, *coherence_maps]]
        return moments

    def _map_coherence_and_sources(
        self, images: torch.Tensor, add_coherence: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None, torch.Tensor]:
        """Anomaly map ``(N, 1, H, W)``, each coherence layer's coherence and image-score sources ``(N, S)``.

        The coherence (per coherence layer) is ``None`` without :class:`MapCoherence`; ``add_coherence=False`` leaves it
        out of the map (the local map). The sources are the local score alone without :class:`ImageScoreFusion`.
        """
        latents, discrepancies, coherence = self.latents_and_discrepancies(self.extract_features(images))
        standardised_indices = set(self.score_indices) | (set(self.map_indices) if self.standardize_map else set())
        standardised = {i: self.position_statistics[i](discrepancies[i]) for i in standardised_indices}
        map_source = standardised if self.standardize_map else discrepancies
        score_is_map = self.standardize_map and self.score_indices == self.map_indices
        anomaly_map, local_score = self.anomaly_map_generator(
            [map_source[i] for i in self.map_indices],
            None if score_is_map else [standardised[i] for i in self.score_indices],
            image_size=images.shape[-2:],
            map_addends=self.map_coherence(coherence) if coherence is not None and add_coherence else None,
        )
        if self.score_fusion is None:
            return anomaly_map, coherence, local_score.unsqueeze(1)
        sources = self.score_fusion.sources(local_score, [latents[i] for i in self.score_indices])
        return anomaly_map, coherence, sources

    def forward(
        self,
        images: torch.Tensor,
        train_teacher: bool = True,
        train_student: bool = True,
    ) -> DhkdTrainingOutput | InferenceBatch:
        """Return per-scale training outputs in training mode, else the anomaly map and image score.

        ``train_teacher`` and ``train_student`` apply to training mode only (see :meth:`training_outputs`).

        The local image score is the mean of the top ``score_fraction`` of the smoothed mean of the per-position
        standardised discrepancies of ``score_layers`` (see :mod:`anomalib_dhkd.models.dhkd.anomaly_map` for the
        measurements behind this choice); with ``global_score`` the image score adds the score layers' latent
        distances to it (:class:`ImageScoreFusion`).
        """
        if self.training:
            return self.training_outputs(self.extract_features(images), train_teacher, train_student)
        anomaly_map, _, sources = self._map_coherence_and_sources(images)
        pred_score = sources[:, 0] if self.score_fusion is None else self.score_fusion(sources)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
