"""Anomaly map and image score of Dmdd: the head's probabilities times the normality discrepancy, smoothed.

At inference the multi-perception segmentation head
(:class:`~anomalib_dhkd.components.scoring.segmentation.MultiPerceptionHead`) gives anomaly probabilities at the
shallowest scale's resolution; they are multiplied by the normality features' ``1 - cos`` distance to the teacher
(mean over scales), so a position counts only where the head and the distillation agree. The product is upsampled to
the image and Gaussian-smoothed; the image score is the mean of the map's highest ``score_fraction`` (the family's
:class:`~anomalib_dhkd.components.scoring.MapFusion`). No statistics of normal images are fitted. Ablations: the
head's probabilities alone (``normality_in_map=False``), the normality distances alone (``segmentation_head=False``).
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
