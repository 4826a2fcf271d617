"""Anomaly map and image score of DHKD: the squared teacher-student discrepancy of whitened flow latents.

For every layer ``k`` the discrepancy is ``d_k = mean_c (S_k - T_k)^2`` between the student's prediction and the
teacher's latent. The flow latents are whitened (a standard-normal prior), so the discrepancies of all layers are on
one scale and are averaged after upsampling (:class:`~anomalib_dhkd.components.scoring.DiscrepancyScorer`).

The paper ("Unsupervised Image Anomaly Detection with Denoised Heterogeneous Networks via Knowledge Distillation") does
not say how it scores images; our choice, measured by re-scoring trained models (image AUROC; maximum of the fused map /
top 1 % of the deepest layer / the same, standardised per position): Magnetic Tile 0.750 / 0.886 / 0.906, MVTec bottle
0.999 / 1.000 / 1.000, bottle without ImageNet weights 0.853 / 0.852 / 0.921. A layer deeper than the map's helps the
score and blurs the map, hence ``score_layers`` apart from the map's ``layers`` (model README).
"""

from collections.abc import Sequence

from anomalib_dhkd.components.scoring import DiscrepancyScorer, ScoringConfig, squared_discrepancy


def dhkd_scorer(
    layers: Sequence[str],
    channels: Sequence[int],
    strides: Sequence[int],
    map_layers: Sequence[str],
    config: ScoringConfig,
) -> DiscrepancyScorer:
    """Build DHKD's scorer: squared discrepancies of ``layers``, mapped over ``map_layers``.

    Args:
        layers: Every layer with a teacher-student pair, shallowest first.
        channels: Latent channels of each layer.
        strides: Stride of each layer in pixels.
        map_layers: Layers fused into the anomaly map; the others only score.
        config: Scoring settings, every encoder-dependent default decided
            (:func:`~anomalib_dhkd.models.dhkd.config.resolve`).

    Returns:
        The scorer.

    Example:
        >>> config = ScoringConfig(score_layers=["b"], standardize_map=False, global_score=False, coherence_weight=0)
        >>> scorer = dhkd_scorer(["a", "b"], [8, 16], [8, 16], ["a"], config)
        >>> scorer.map_indices, scorer.score_indices
        ([0], [1])

    """
    return DiscrepancyScorer(layers, channels, strides, map_layers, config, discrepancy=squared_discrepancy)
