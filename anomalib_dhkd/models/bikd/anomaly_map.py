"""Anomaly map and image score of Bikd: both directions' discrepancies, every scale, fused.

Each direction gives per-scale maps ``0.5 * ||T_k/|T_k| - X_k/|X_k|||^2 = 1 - cos(T_k, X_k)`` over channels, with
``X`` the forward student's features or the reverse decoder's reconstruction. The scorer sees them as ``2K`` layers
(``forward.<layer>`` and ``reverse.<layer>``), averages their upsampled maps, smooths the result and scores the image
by the map's highest 1 % (:func:`~anomalib_dhkd.components.scoring.cosine_scorer`).
"""

from collections.abc import Sequence

from anomalib_dhkd.components.scoring import DiscrepancyScorer, ScoringConfig, cosine_scorer

DIRECTIONS = ("forward", "reverse")


def branch_layers(layers: Sequence[str], directions: Sequence[str] = DIRECTIONS) -> list[str]:
    """Name each direction's scales for the scorer, forward first.

    Example:
        >>> branch_layers(["layer1", "layer2"])
        ['forward.layer1', 'forward.layer2', 'reverse.layer1', 'reverse.layer2']

    """
    return [f"{direction}.{layer}" for direction in DIRECTIONS if direction in directions for layer in layers]


def bikd_scorer(
    layers: Sequence[str],
    channels: Sequence[int],
    strides: Sequence[int],
    config: ScoringConfig,
    directions: Sequence[str] = DIRECTIONS,
) -> DiscrepancyScorer:
    """Build Bikd's scorer over the scales of its directions.

    Args:
        layers: Teacher layers, shallowest first.
        channels: Teacher channels of each layer.
        strides: Stride of each layer in pixels.
        config: Scoring settings, with layer names of :func:`branch_layers`; ``None`` values: every scale of every
            direction scores, plain map (:data:`~anomalib_dhkd.components.scoring.PLAIN_MAP`).
        directions: The directions the model has, of :data:`DIRECTIONS`.

    Returns:
        The scorer; with both directions it takes ``ScoringInput([*T, *T], [*F, *R], size)``.

    Example:
        >>> scorer = bikd_scorer(["a"], [8], [8], ScoringConfig())
        >>> scorer.map_indices, scorer.score_indices
        ([0, 1], [0, 1])

    """
    copies = len(directions)
    return cosine_scorer(branch_layers(layers, directions), [*channels] * copies, [*strides] * copies, config)
