"""Scoring out of the network: teacher-student features in, anomaly map and image score out.

A model of the family hands its per-layer teacher and student features to a :class:`DiscrepancyScorer`; the scorer
turns them into per-position discrepancies, standardises them with statistics of normal images, fuses layers,
smooths, adds the calibrated coherence to the map and calibrated global evidence to the image score. Its fit/forward
protocol is the same for every model:

* ``scorer.fit(inputs, sum_across_processes)``: ``inputs()`` returns a fresh iterable of :class:`ScoringInput` of
  normal training images per call; the scorer makes one pass (two with a global score or coherence).
* ``scorer(scoring_input)``: an :class:`~anomalib.data.InferenceBatch` with ``pred_score`` and ``anomaly_map``.

Statistics are accumulated as summed moments (count, sum, sum of squares or outer products, in float64), so batches
and distributed processes add up with one ``sum_across_processes`` call per fit (the Lightning strategy's ``reduce``);
``torchmetrics.Metric`` states would reduce the same sums, one state class per statistic.

Example:
    >>> scorer = DiscrepancyScorer(["a"], channels=[8], strides=[8], map_layers=["a"], config=ScoringConfig(
    ...     score_layers=["a"], standardize_map=False, global_score=False, coherence_layers=["a"], coherence_weight=0))
    >>> features = torch.rand(2, 8, 4, 4)
    >>> scorer(ScoringInput([features], [features], (32, 32))).anomaly_map.shape
    torch.Size([2, 1, 32, 32])

"""

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_dhkd.components.scoring.discrepancy import (
    coherence_windows,
    discrepancy_coherence,
    normalized_discrepancy,
    squared_discrepancy,
)
from anomalib_dhkd.components.scoring.fusion import ImageScoreFusion, LayerFusion, MapCoherence, MapFusion
from anomalib_dhkd.components.scoring.global_statistics import channel_statistics, vector_moments
from anomalib_dhkd.components.scoring.memory import MemoryMap, local_patches
from anomalib_dhkd.components.scoring.position_statistics import PositionStandardizer, map_moments

Discrepancy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HELD_OUT_EVERY = 5
"""Every fifth training image is held out of the patch memory to calibrate it."""
MomentsSum = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ScoringConfig:
    """How discrepancies become the anomaly map and the image score. ``None``: the model decides by encoder.

    Args:
        score_layers: Layers whose per-position standardised discrepancies form the image score; a layer outside the
            map's layers gets its own teacher-student pair that only the score uses.
        blur_sigma: Gaussian smoothing of the anomaly map in pixels; ``0``: none.
        score_blur_sigma: Smoothing of the map the image score is taken from; ``None``: ``blur_sigma``.
        score_fraction: The image score is the mean of this share of the score map's highest values.
        standardize_map: Fuse per-position standardised discrepancies into the map instead of raw ones.
        scale_map_layers: Divide each map layer's raw discrepancy by its spread over the normal training images
            before fusing (no effect with ``standardize_map``), so a layer whose normal images already vary much
            weighs less in the map.
        global_score: Add the score layers' teacher-latent channel statistics (a Gaussian distance to those of
            normal images) to the image score, each source calibrated on the training images.
        coherence_layers: Layers whose discrepancy coherence is added to the map; ``None``: the deepest map layer.
        coherence_weight: Weight of each coherence layer's map relative to the local map's spread on normal images,
            one for all or one per layer; ``0``: no coherence.
        coherence_window: Side of the coherence neighbourhood in cells of the deepest map layer, odd; other layers
            span the same pixels.
        map_fusion: How the layers' maps become one: ``"mean"``, or ``"product"`` as in STFPM.
        memory_layers: Encoder layers whose local features form a memory of normal patches; each position's distance
            to its nearest neighbour there is added to the map and the image score (:class:`MemoryMap`); empty: no
            memory. Needs a model that hands its encoder features to the scorer (``ScoringInput.features``).
        memory_size: Most patches the memory keeps (a uniform random sample of the training images' patches).
        memory_weight: Weight of the memory's map relative to the local map's spread on normal images.

    """

    score_layers: Sequence[str] | None = None
    blur_sigma: float = 4.0
    score_blur_sigma: float | None = None
    score_fraction: float = 0.01
    standardize_map: bool | None = None
    scale_map_layers: bool = False
    global_score: bool | None = None
    coherence_layers: Sequence[str] | None = None
    coherence_weight: float | Sequence[float] | None = None
    coherence_window: int = 7
    map_fusion: LayerFusion = "mean"
    memory_layers: Sequence[str] = ()
    memory_size: int = 4096
    memory_weight: float = 1.0

    def unresolved(self) -> list[str]:
        """Return the names of the settings still ``None`` that the scorer needs decided.

        Returns:
            The names; empty once the model has decided its defaults.

        Example:
            >>> ScoringConfig().unresolved()
            ['score_layers', 'standardize_map', 'global_score', 'coherence_weight']

        """
        optional = {"score_blur_sigma", "coherence_layers"}
        return [f.name for f in fields(self) if getattr(self, f.name) is None and f.name not in optional]


PLAIN_MAP = {"standardize_map": False, "global_score": False, "coherence_weight": 0.0}
"""Decisions for a plain map: raw discrepancies fused, no global statistics, no coherence (STFPM-like models)."""


def decide_scoring(config: ScoringConfig, layers: Sequence[str], **decisions: object) -> ScoringConfig:
    """Fill the settings ``config`` leaves as ``None``: ``score_layers`` with ``layers``, the others from ``decisions``.

    Args:
        config: The user's settings.
        layers: The model's layers, which score the image when ``score_layers`` is ``None``.
        **decisions: The model's choice for each other setting, used where ``config`` has ``None``.

    Returns:
        The settings with those ``None`` values decided; the user's own values are kept.

    Example:
        >>> decided = decide_scoring(ScoringConfig(global_score=True), ["a", "b"], **PLAIN_MAP)
        >>> decided.score_layers, decided.standardize_map, decided.global_score
        (['a', 'b'], False, True)

    """
    undecided = {name: value for name, value in decisions.items() if getattr(config, name) is None}
    score_layers = list(config.score_layers) if config.score_layers is not None else list(layers)
    return dataclasses.replace(config, score_layers=score_layers, **undecided)


class ScoringInput(NamedTuple):
    """Per-layer teacher and student features ``(N, C_k, h_k, w_k)`` of a batch and its image size.

    ``features``: the encoder's features of the same layers, for a patch memory (``ScoringConfig.memory_layers``).
    """

    teacher: list[torch.Tensor]
    student: list[torch.Tensor]
    image_size: tuple[int, int]
    features: list[torch.Tensor] | None = None


class DiscrepancyScorer(nn.Module):
    """Anomaly map and image score from per-layer teacher-student features.

    ``d_k = discrepancy(S_k, T_k)`` per layer, ``z_k = (d_k - mean_k(p)) / std_k(p)`` with statistics of normal
    images. The anomaly map is the smoothed mean of ``d_k`` (or ``z_k`` with ``standardize_map``, or ``d_k / s_k``
    with ``scale_map_layers``, ``s_k`` the spread of ``d_k`` over the normal images) over the map layers plus the
    scaled coherence of ``S_k - T_k`` over the coherence layers (:class:`MapCoherence`). The local score is the top
    ``score_fraction`` mean of the smoothed mean of ``z_k`` over the score layers; with ``global_score`` the
    calibrated Gaussian distances of the score layers' teacher channel statistics are added to
    it (:class:`ImageScoreFusion`).

    Args:
        layers: Names of the layers of the features the scorer is given, in that order.
        channels: Teacher channels of each layer.
        strides: Stride of each layer in pixels.
        map_layers: Layers fused into the anomaly map.
        config: Scoring settings, every encoder-dependent default decided (:meth:`ScoringConfig.unresolved`).
        discrepancy: Per-position discrepancy ``(S, T) -> (N, 1, h, w)``.

    Raises:
        ValueError: For an undecided setting, or a score or coherence layer the scorer is not given.

    Example:
        Fit on normal images, then score:

        >>> config = ScoringConfig(score_layers=["a"], standardize_map=True, global_score=True, coherence_weight=0.25)
        >>> scorer = DiscrepancyScorer(["a"], channels=[8], strides=[8], map_layers=["a"], config=config)
        >>> batches = [ScoringInput([torch.rand(4, 8, 4, 4)], [torch.rand(4, 8, 4, 4)], (32, 32)) for _ in range(2)]
        >>> scorer.fit(lambda: batches)
        >>> scorer(batches[0]).pred_score.shape
        torch.Size([4])

    """

    def __init__(
        self,
        layers: Sequence[str],
        channels: Sequence[int],
        strides: Sequence[int],
        map_layers: Sequence[str],
        config: ScoringConfig,
        discrepancy: Discrepancy = squared_discrepancy,
    ) -> None:
        super().__init__()
        if config.unresolved():
            msg = f"Scoring settings {config.unresolved()} are undecided; the model must resolve them first."
            raise ValueError(msg)
        layers = list(layers)
        self.map_indices = _indices(layers, map_layers, "map layers")
        self.score_indices = _indices(layers, config.score_layers, "score_layers")
        deepest_map_index = max(self.map_indices)  # layers are given shallowest first
        coherence_layers = list(config.coherence_layers or [layers[deepest_map_index]])
        self.coherence_indices = _indices(layers, coherence_layers, "coherence_layers")
        self.standardize_map = config.standardize_map
        self.scale_map_layers = config.scale_map_layers
        self.discrepancy = discrepancy
        self.position_statistics = nn.ModuleList(PositionStandardizer() for _ in layers)
        self.map_fusion = MapFusion(
            config.blur_sigma, config.score_fraction, config.score_blur_sigma, layer_fusion=config.map_fusion
        )
        coherence_strides = [strides[i] for i in self.coherence_indices]
        self.map_coherence = _map_coherence(config, coherence_strides, strides[deepest_map_index])
        self.score_fusion = ImageScoreFusion([channels[i] for i in self.score_indices]) if config.global_score else None
        self.memory_indices = _indices(layers, config.memory_layers, "memory_layers")
        self.memory_map = (
            MemoryMap(config.memory_size, config.memory_weight, config.score_fraction) if self.memory_indices else None
        )

    def forward(self, inputs: ScoringInput) -> InferenceBatch:
        """Return the anomaly map and the image score of the inputs.

        Args:
            inputs: Per-layer teacher and student features and the image size ``(H, W)``.

        Returns:
            ``anomaly_map`` ``(N, 1, H, W)`` and ``pred_score`` ``(N,)``.

        """
        distances = None if self.memory_map is None else self._memory_distances(inputs)
        anomaly_map, sources = self._map_and_sources(inputs, add_coherence=True, memory_distances=distances)
        pred_score = sources[:, 0] if self.score_fusion is None else self.score_fusion(sources)
        if distances is not None:
            pred_score = pred_score + self.memory_map.score(self.map_fusion.smooth([distances], inputs.image_size))
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)

    @torch.no_grad()
    def fit(self, inputs: Callable[[], Iterable[ScoringInput]], sum_across_processes: MomentsSum | None = None) -> None:
        """Fit the statistics of normal images in passes over ``inputs()`` (normal training images).

        The first pass fits each layer's per-position discrepancy statistics and, with ``global_score``, the Gaussians
        of the score layers' teacher channel statistics; a second pass (with ``global_score`` or coherence)
        calibrates the image score's sources and scales the coherence maps. With ``memory_layers`` every fifth image
        is held out of the patch memory, which the other images fill, and calibrates its map and score. Each process
        keeps the memory of its own images; only the scale's moments are summed across processes.

        Args:
            inputs: Returns a fresh iterable of :class:`ScoringInput` per call.
            sum_across_processes: Sums a tensor over distributed processes; ``None`` on a single process.

        Raises:
            ValueError: If ``inputs()`` is empty, has fewer than two images, or the fitted statistics are not finite.

        """
        total = sum_across_processes or (lambda moments: moments)
        moments = [total(m) for m in _summed_over_batches(inputs(), self._statistics_moments)]
        layers = len(self.position_statistics)
        for statistics, layer_moments in zip(self.position_statistics, moments[:layers], strict=True):
            statistics.fit(layer_moments)
        if self.score_fusion is not None:
            for distance, latent_moments in zip(self.score_fusion.distances, moments[layers:], strict=True):
                distance.fit(latent_moments)
        if self.memory_map is not None:
            self._fit_memory(inputs, total)
        if self.score_fusion is None and self.map_coherence is None:
            self._check_finite_statistics()
            return
        source_moments, *pixel_moments = (total(m) for m in _summed_over_batches(inputs(), self._calibration_moments))
        if self.score_fusion is not None:
            self.score_fusion.fit_calibration(source_moments)
        if self.map_coherence is not None:
            self.map_coherence.fit(pixel_moments[0], pixel_moments[1:])
        self._check_finite_statistics()

    def _fit_memory(self, inputs: Callable[[], Iterable[ScoringInput]], total: MomentsSum) -> None:
        """Fill the patch memory with the kept images' patches; scale its map on the held-out images.

        Raises:
            ValueError: If the inputs carry no encoder features.

        """
        self.memory_map.memory.fit(
            local_patches(_memory_features(kept, self.memory_indices))
            for kept in _held_out_split(inputs(), held_out=False)
        )
        held_out = _held_out_split(inputs(), held_out=True)
        self.memory_map.fit_calibration(*(total(m) for m in _summed_over_batches(held_out, self._memory_moments)))

    def _memory_moments(self, inputs: ScoringInput) -> list[torch.Tensor]:
        """Pixel moments of the smoothed local map and of the smoothed memory distance map."""
        local_map, _ = self._map_and_sources(inputs, add_coherence=False)
        memory_map = self.map_fusion.smooth([self._memory_distances(inputs)], image_size=inputs.image_size)
        scores = self.memory_map.raw_score(memory_map)
        return [map_moments(local_map.flatten()), map_moments(memory_map.flatten()), map_moments(scores)]

    def _memory_distances(self, inputs: ScoringInput) -> torch.Tensor:
        """Unscaled patch-memory distances ``(N, 1, h, w)`` of the memory layers' encoder features."""
        return self.memory_map.distances(_memory_features(inputs, self.memory_indices))

    def _check_finite_statistics(self) -> None:
        """Stop with the cause and the fix when the fitted statistics of normal images are not finite.

        Raises:
            ValueError: If a fitted statistic is NaN or infinite.

        """
        if all(bool(torch.isfinite(statistic).all()) for statistic in self.buffers()):
            return
        msg = (
            "The statistics of normal images fitted on the training images are NaN or infinite: the training images "
            "hardly vary (copies of one image, or constant frames), so those statistics have no spread. Fix: train on "
            "many different normal images; `python -m anomalib_dhkd.check ROOT` reports copies and constant images."
        )
        raise ValueError(msg)

    def _statistics_moments(self, inputs: ScoringInput) -> list[torch.Tensor]:
        """Moments of each layer's discrepancy, then (``global_score``) of each score layer's channel statistics."""
        moments = [map_moments(d) for d in self._discrepancies(inputs)]
        if self.score_fusion is not None:
            moments += [vector_moments(channel_statistics(inputs.teacher[i])) for i in self.score_indices]
        return moments

    def _calibration_moments(self, inputs: ScoringInput) -> list[torch.Tensor]:
        """Moments of the image score's sources, then pixel moments of the smoothed local and coherence maps."""
        local_map, sources = self._map_and_sources(inputs, add_coherence=False)
        moments = [map_moments(sources)]
        if self.map_coherence is not None:
            smooth = self.map_fusion.smooth
            coherence_maps = [smooth([c], image_size=inputs.image_size) for c in self._coherence(inputs)]
            moments += [map_moments(m.flatten()) for m in [local_map, *coherence_maps]]
        return moments

    def _discrepancies(self, inputs: ScoringInput) -> list[torch.Tensor]:
        return [self.discrepancy(s, t) for s, t in zip(inputs.student, inputs.teacher, strict=True)]

    def _coherence(self, inputs: ScoringInput) -> list[torch.Tensor]:
        """Discrepancy coherence of each coherence layer (:func:`discrepancy_coherence`)."""
        return [
            discrepancy_coherence(inputs.student[i] - inputs.teacher[i], window)
            for i, window in zip(self.coherence_indices, self.map_coherence.windows, strict=True)
        ]

    def _map_and_sources(
        self, inputs: ScoringInput, add_coherence: bool, memory_distances: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly map and image-score sources ``(N, S)``; coherence and scaled memory distances added if asked."""
        discrepancies = self._discrepancies(inputs)
        addends = []
        if self.map_coherence is not None and add_coherence:
            addends += self.map_coherence(self._coherence(inputs))
        if memory_distances is not None:
            addends.append(self.memory_map(memory_distances))
        standardised_indices = set(self.score_indices) | (set(self.map_indices) if self.standardize_map else set())
        standardised = {i: self.position_statistics[i](discrepancies[i]) for i in standardised_indices}
        map_source = standardised if self.standardize_map else dict(enumerate(discrepancies))
        if self.scale_map_layers and not self.standardize_map:
            map_source = {i: map_source[i] / self.position_statistics[i].overall_std() for i in self.map_indices}
        score_is_map = self.standardize_map and self.score_indices == self.map_indices
        anomaly_map, local_score = self.map_fusion(
            [map_source[i] for i in self.map_indices],
            None if score_is_map else [standardised[i] for i in self.score_indices],
            image_size=inputs.image_size,
            map_addends=addends or None,
        )
        if self.score_fusion is None:
            return anomaly_map, local_score.unsqueeze(1)
        return anomaly_map, self.score_fusion.sources(local_score, [inputs.teacher[i] for i in self.score_indices])


def cosine_scorer(
    layers: Sequence[str], channels: Sequence[int], strides: Sequence[int], config: ScoringConfig
) -> DiscrepancyScorer:
    """Build the scorer of STFPM-like models: ``1 - cos`` distances of every layer fused into a plain map.

    The per-layer map is ``0.5 * ||S_k/|S_k| - T_k/|T_k|||^2`` over channels (STFPM, Sec. 3.3), in ``[0, 2]`` at every
    layer, so layers average without calibration.

    Args:
        layers: Names of the scored teacher-student pairs, shallowest first; all of them form the map.
        channels: Teacher channels of each pair.
        strides: Stride of each pair's features in pixels.
        config: Scoring settings; ``None`` values: every layer scores, plain map (:data:`PLAIN_MAP`).

    Returns:
        The scorer.

    Example:
        >>> scorer = cosine_scorer(["a", "b"], [8, 16], [8, 16], ScoringConfig())
        >>> scorer.map_indices, scorer.score_indices, scorer.score_fusion is None
        ([0, 1], [0, 1], True)

    """
    decided = decide_scoring(config, layers, **PLAIN_MAP)
    return DiscrepancyScorer(layers, channels, strides, layers, decided, discrepancy=normalized_discrepancy)


def _indices(layers: list[str], names: Sequence[str], what: str) -> list[int]:
    """Positions of ``names`` among ``layers``.

    Raises:
        ValueError: If a name is not among ``layers``.

    """
    unknown = [name for name in names if name not in layers]
    if unknown:
        msg = f"{what} {unknown} have no teacher-student pair; choose from {layers}."
        raise ValueError(msg)
    return [layers.index(name) for name in names]


def _map_coherence(config: ScoringConfig, strides: list[int], reference_stride: int) -> MapCoherence | None:
    """Build the :class:`MapCoherence` of coherence layers of ``strides``; ``None`` at weight 0.

    Raises:
        ValueError: If ``coherence_window`` is not an odd number of cells.

    """
    window = config.coherence_window
    if window < 1 or window % 2 == 0:
        msg = f"coherence_window must be an odd number of cells, got {window}."
        raise ValueError(msg)
    weight = config.coherence_weight
    weights = [weight] * len(strides) if isinstance(weight, int | float) else list(weight)
    if not any(weights):
        return None
    return MapCoherence(coherence_windows(window, strides, reference_stride), weights)


def _memory_features(inputs: ScoringInput, indices: list[int]) -> list[torch.Tensor]:
    """Return the encoder features of the memory layers.

    Raises:
        ValueError: If the inputs carry no encoder features.

    """
    if inputs.features is None:
        msg = "memory_layers need the encoder's features, which this model does not give its scorer; unset them."
        raise ValueError(msg)
    return [inputs.features[i] for i in indices]


def _held_out_split(batches: Iterable[ScoringInput], held_out: bool) -> Iterator[ScoringInput]:
    """Yield the images of ``batches`` held out of the patch memory (:data:`HELD_OUT_EVERY`), or the others."""
    seen = 0
    for batch in batches:
        count = batch.teacher[0].shape[0]
        index = torch.arange(seen, seen + count, device=batch.teacher[0].device)
        chosen = (index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) == held_out
        seen += count
        if chosen.any():
            yield ScoringInput(
                [t[chosen] for t in batch.teacher],
                [s[chosen] for s in batch.student],
                batch.image_size,
                None if batch.features is None else [f[chosen] for f in batch.features],
            )


def _summed_over_batches(
    batches: Iterable[ScoringInput], moments_of: Callable[[ScoringInput], list[torch.Tensor]]
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
