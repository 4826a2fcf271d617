"""Anomaly map and image score of AsymmetricTs: STFPM's normalised teacher-student distance per scale, fused.

For every scale ``k`` the map is ``d_k = 0.5 * ||S_k / |S_k| - T_k / |T_k|||^2`` over channels (STFPM, Sec. 3.3), in
``[0, 2]`` at every scale. The asymmetric teacher-student paper (Kong et al., 2024) fuses scales "to detect anomalies of
different sizes" without saying how; the scales are upsampled and averaged by the family's
:class:`~anomalib_dhkd.components.scoring.DiscrepancyScorer`, smoothed, and the image score is the mean of the map's
highest 1 % (model README, "Our reading where the paper is vague").
"""

import dataclasses
from collections.abc import Sequence

from anomalib_dhkd.components.scoring import DiscrepancyScorer, ScoringConfig, normalized_discrepancy

# What AsymmetricTs decides when the scoring settings leave it open: the plain fused STFPM map, no global statistics
# and no coherence (the model README's ablation).
UNDECIDED_SCORING = {"standardize_map": False, "global_score": False, "coherence_weight": 0.0}


def resolve_scoring(layers: Sequence[str], config: ScoringConfig) -> ScoringConfig:
    """Decide the settings ``config`` leaves as ``None``: every layer scores, plain map, no additions.

    Args:
        layers: The model's layers, shallowest first.
        config: Scoring settings; values already set are kept.

    Returns:
        The settings with nothing left undecided.

    Example:
        >>> resolve_scoring(["a", "b"], ScoringConfig()).score_layers
        ['a', 'b']

    """
    decided = {name: value for name, value in UNDECIDED_SCORING.items() if getattr(config, name) is None}
    score_layers = list(config.score_layers) if config.score_layers is not None else list(layers)
    return dataclasses.replace(config, score_layers=score_layers, **decided)


def asymmetric_ts_scorer(
    layers: Sequence[str], channels: Sequence[int], strides: Sequence[int], config: ScoringConfig
) -> DiscrepancyScorer:
    """Build AsymmetricTs's scorer: normalised distances of ``layers``, all fused into the map.

    Args:
        layers: Teacher layers, shallowest first.
        channels: Teacher channels of each layer.
        strides: Stride of each layer in pixels.
        config: Scoring settings; ``None`` values are decided by :func:`resolve_scoring`.

    Returns:
        The scorer.

    Example:
        >>> scorer = asymmetric_ts_scorer(["a", "b"], [8, 16], [8, 16], ScoringConfig())
        >>> scorer.map_indices, scorer.score_indices, scorer.score_fusion is None
        ([0, 1], [0, 1], True)

    """
    return DiscrepancyScorer(
        layers, channels, strides, layers, resolve_scoring(layers, config), discrepancy=normalized_discrepancy
    )
