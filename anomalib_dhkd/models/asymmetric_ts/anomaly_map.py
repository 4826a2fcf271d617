"""Anomaly map and image score of AsymmetricTs: STFPM's normalised teacher-student distance per scale, fused.

For every scale ``k`` the map is ``d_k = 0.5 * ||S_k / |S_k| - T_k / |T_k|||^2`` over channels (STFPM, Sec. 3.3), in
``[0, 2]`` at every scale. The asymmetric teacher-student paper (Kong et al., 2024) fuses scales "to detect anomalies of
different sizes" without saying how; the scales are upsampled and averaged by the family's
:class:`~anomalib_dhkd.components.scoring.DiscrepancyScorer`, smoothed, and the image score is the mean of the map's
highest 1 % (model README, "Our reading where the paper is vague").
"""

from collections.abc import Sequence

from anomalib_dhkd.components.scoring import (
    PLAIN_MAP,
    DiscrepancyScorer,
    ScoringConfig,
    decide_scoring,
    normalized_discrepancy,
)


def asymmetric_ts_scorer(
    layers: Sequence[str], channels: Sequence[int], strides: Sequence[int], config: ScoringConfig
) -> DiscrepancyScorer:
    """Build AsymmetricTs's scorer: normalised distances of ``layers``, all fused into the map.

    Args:
        layers: Teacher layers, shallowest first.
        channels: Teacher channels of each layer.
        strides: Stride of each layer in pixels.
        config: Scoring settings; ``None`` values: every layer scores, plain map (:data:`PLAIN_MAP`).

    Returns:
        The scorer.

    Example:
        >>> scorer = asymmetric_ts_scorer(["a", "b"], [8, 16], [8, 16], ScoringConfig())
        >>> scorer.map_indices, scorer.score_indices, scorer.score_fusion is None
        ([0, 1], [0, 1], True)

    """
    return DiscrepancyScorer(
        layers,
        channels,
        strides,
        layers,
        decide_scoring(config, layers, **PLAIN_MAP),
        discrepancy=normalized_discrepancy,
    )
