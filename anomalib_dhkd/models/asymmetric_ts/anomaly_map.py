"""Anomaly map and image score of AsymmetricTs: STFPM's normalised teacher-student distance per scale, fused.

For every scale ``k`` the map is ``d_k = 0.5 * ||S_k / |S_k| - T_k / |T_k|||^2`` over channels (STFPM, Sec. 3.3), in
``[0, 2]`` at every scale. The asymmetric teacher-student paper (Kong et al., 2024) fuses scales "to detect anomalies of
different sizes" without saying how; the scales are upsampled and averaged by the family's
:func:`~anomalib_dhkd.components.scoring.cosine_scorer`, smoothed, and the image score is the mean of the map's
highest 1 % (model README, "Our reading where the paper is vague"). The model has nothing of its own here.
"""

from anomalib_dhkd.components.scoring import cosine_scorer

__all__ = ["cosine_scorer"]
