"""Anomaly map and image score of Dmdd: the segmentation head's probabilities, smoothed; score from the map.

At inference the map comes straight from the multi-perception segmentation head
(:class:`~anomalib_dhkd.components.scoring.segmentation.MultiPerceptionHead`): sigmoid of its logits at the
shallowest scale's resolution, upsampled to the image, Gaussian-smoothed; the image score is the mean of the map's
highest ``score_fraction`` (the family's :class:`~anomalib_dhkd.components.scoring.MapFusion`). No statistics of
normal images are fitted: the head is trained to output anomaly probabilities. The ablation without the head fuses
the normality features' per-scale ``1 - cos`` distances to the teacher's the same way.
"""

import torch
from anomalib.data import InferenceBatch

from anomalib_dhkd.components.scoring import MapFusion


def fused_output(maps: list[torch.Tensor], image_size: tuple[int, int], fusion: MapFusion) -> InferenceBatch:
    """Turn maps ``(N, 1, h_k, w_k)`` into the anomaly map ``(N, 1, *image_size)`` (their mean) and the image score.

    Example:
        >>> logits = torch.zeros(2, 1, 8, 8)
        >>> output = fused_output([logits.sigmoid()], (32, 32), MapFusion(sigma=0))
        >>> output.anomaly_map.shape, output.pred_score.tolist()
        (torch.Size([2, 1, 32, 32]), [0.5, 0.5])

    """
    anomaly_map, pred_score = fusion(maps, None, image_size)
    return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
