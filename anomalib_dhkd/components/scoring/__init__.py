"""Scoring: per-layer teacher-student features to an anomaly map and an image score, fitted on normal images."""

from anomalib_dhkd.components.scoring.discrepancy import (
    coherence_windows,
    discrepancy_coherence,
    normalized_discrepancy,
    squared_discrepancy,
)
from anomalib_dhkd.components.scoring.fusion import ImageScoreFusion, MapCoherence, MapFusion, top_fraction_mean
from anomalib_dhkd.components.scoring.global_statistics import GaussianDistance, channel_statistics, vector_moments
from anomalib_dhkd.components.scoring.memory import MemoryMap, PatchMemory, local_patches
from anomalib_dhkd.components.scoring.position_statistics import PositionStandardizer, map_moments, mean_and_std
from anomalib_dhkd.components.scoring.scorer import (
    PLAIN_MAP,
    DiscrepancyScorer,
    ScoringConfig,
    ScoringInput,
    cosine_scorer,
    decide_scoring,
)
from anomalib_dhkd.components.scoring.smoothing import GaussianBlur

__all__ = [
    "PLAIN_MAP",
    "DiscrepancyScorer",
    "GaussianBlur",
    "GaussianDistance",
    "ImageScoreFusion",
    "MapCoherence",
    "MapFusion",
    "MemoryMap",
    "PatchMemory",
    "PositionStandardizer",
    "ScoringConfig",
    "ScoringInput",
    "channel_statistics",
    "coherence_windows",
    "cosine_scorer",
    "decide_scoring",
    "discrepancy_coherence",
    "local_patches",
    "map_moments",
    "mean_and_std",
    "normalized_discrepancy",
    "squared_discrepancy",
    "top_fraction_mean",
    "vector_moments",
]
