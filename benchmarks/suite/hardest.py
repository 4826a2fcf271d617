"""Each run's hardest test images and its metrics per defect type: where each model fails.

The worker keeps every test image's score and a reduced anomaly map while anomalib tests the model, then keeps the
maps of the hardest images only (a ``torch.save`` file beside the records, untracked) and lists them in the record
(tracked), with image and pixel AUROC per defect type, so the report can show, per dataset, where each model fails.
"""

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from anomalib.data import Batch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.nn import functional as F  # noqa: N812
from torchmetrics.functional.classification import binary_auroc

STORED_MAP_SIZE = 128
"""Side of the maps kept for all test images until the hardest are known (MT: 582 images, 38 MB in float32)."""

RANGE_QUANTILES = (0.01, 0.999)
"""Quantiles of all test-map values that a gallery maps to 0 and 1 (one outlier pixel does not wash out the rest)."""


def hardest_indices(scores: list[float], labels: list[bool], count: int) -> list[int]:
    """Indices of the ``count - 1`` lowest-scored defect images and the highest-scored normal image.

    Args:
        scores: Image anomaly scores, higher means more anomalous.
        labels: ``True`` for defect images.
        count: How many images to pick; fewer when a class has too few images.

    Returns:
        The missed defects first (lowest score first), then the worst false alarm.

    Example:
        >>> hardest_indices([0.9, 0.2, 0.7, 0.1], [True, True, False, False], count=2)
        [1, 2]
    """
    defects = sorted((i for i, label in enumerate(labels) if label), key=lambda i: scores[i])
    normals = sorted((i for i, label in enumerate(labels) if not label), key=lambda i: -scores[i])
    return defects[: max(count - 1, 0)] + normals[:1]


def reduced(maps: torch.Tensor, mode: str) -> torch.Tensor:
    """``(N, [1,] H, W)`` maps resized to ``STORED_MAP_SIZE`` on the CPU, as ``(N, S, S)`` floats."""
    maps = maps.detach().float().cpu().reshape(-1, 1, *maps.shape[-2:])
    return F.interpolate(maps, size=(STORED_MAP_SIZE, STORED_MAP_SIZE), mode=mode)[:, 0]


def outranked_by(scores: list[float], labels: list[bool], index: int) -> int:
    """How many images of the other class are ranked worse than image ``index`` (0 when it is ranked right).

    For a defect image: the normal images scored at least as high; for a normal image: the defects scored at most as
    high.
    """
    if labels[index]:
        return sum(1 for score, label in zip(scores, labels, strict=True) if not label and score >= scores[index])
    return sum(1 for score, label in zip(scores, labels, strict=True) if label and score <= scores[index])


NORMAL_TYPE = "good"
"""Folder of the normal test images in the MVTec layout."""


def defect_type(path: str) -> str:
    """The defect type of a test image in the MVTec layout: its folder's name (``good`` for normal images)."""
    return Path(path).parent.name


def ranked_auroc(values: torch.Tensor, labels: torch.Tensor) -> float:
    """AUROC of raw anomaly values of any range (torchmetrics reads values outside ``[0, 1]`` as logits)."""
    values = values.double()
    span = (values.max() - values.min()).clamp_min(torch.finfo(torch.float64).tiny)
    return round(float(binary_auroc((values - values.min()) / span, labels)), 4)


def defect_type_metrics(
    paths: list[str], scores: list[float], maps: list[torch.Tensor], masks: list[torch.Tensor]
) -> dict[str, dict[str, float]]:
    """Image AUROC and pixel AUROC of each defect type against the normal test images.

    Each defect type's images are ranked against all normal images; the pixel AUROC pools the reduced
    (``STORED_MAP_SIZE``) maps of both, so it approximates the full-size metric.

    Returns:
        ``{defect type: {"image_AUROC": ..., "pixel_AUROC": ...}}``, sorted by type (pixel AUROC ``None`` for a
        type without mask pixels); empty without normal images.

    Example:
        >>> maps = [torch.zeros(2, 2), torch.ones(2, 2), torch.eye(2)]
        >>> masks = [torch.zeros(2, 2, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool), torch.eye(2).bool()]
        >>> paths = ["good/0.png", "crack/0.png", "hole/0.png"]
        >>> defect_type_metrics(paths, [0.1, 0.9, 0.05], maps, masks)
        {'crack': {'image_AUROC': 1.0, 'pixel_AUROC': 1.0}, 'hole': {'image_AUROC': 0.0, 'pixel_AUROC': 1.0}}

    """
    by_type = defaultdict(list)
    for index, path in enumerate(paths):
        by_type[defect_type(path)].append(index)
    normal = by_type.pop(NORMAL_TYPE, [])
    if not normal:
        return {}
    metrics = {}
    for name, defects in sorted(by_type.items()):
        indices = normal + defects
        labels = torch.tensor([0] * len(normal) + [1] * len(defects))
        image = ranked_auroc(torch.tensor([scores[i] for i in indices]), labels)
        pixel_masks = torch.stack([masks[i] for i in indices]).flatten().long()
        pixel_maps = torch.stack([maps[i] for i in indices]).flatten()
        pixel = ranked_auroc(pixel_maps, pixel_masks) if pixel_masks.any() else None
        metrics[name] = {"image_AUROC": image, "pixel_AUROC": pixel}
    return metrics


class HardestImages(Callback):
    """Collect every test image's score, label, mask and a reduced anomaly map; pick the hardest at the end."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.scores: list[float] = []
        self.labels: list[bool] = []
        self.maps: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Batch,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Store the scores and reduced maps and masks of this batch."""
        del trainer, pl_module, args, kwargs
        maps = reduced(outputs.anomaly_map, mode="area")
        masks = reduced(outputs.gt_mask, mode="nearest")
        self.paths += [str(Path(path).resolve()) for path in outputs.image_path]
        self.scores += outputs.pred_score.detach().float().cpu().flatten().tolist()
        self.labels += outputs.gt_label.detach().bool().cpu().flatten().tolist()
        self.maps += list(maps)  # float32: float16 ties would blur the pixel AUROC per defect type
        self.masks += list(masks.bool())

    def defect_type_metrics(self) -> dict[str, dict[str, float]]:
        """Image and pixel AUROC of each defect type against the normal test images (:func:`defect_type_metrics`)."""
        return defect_type_metrics(self.paths, self.scores, self.maps, self.masks)

    def payload(self, count: int) -> dict[str, Any]:
        """The ``count`` hardest images: paths, scores, labels, ranks, maps, masks and the value range of all maps."""
        picked = hardest_indices(self.scores, self.labels, count)
        values = torch.stack(self.maps).flatten() if self.maps else torch.zeros(1)
        values = values[torch.randperm(len(values))[:1_000_000]]  # torch.quantile takes at most 16M values
        low, high = torch.quantile(values, torch.tensor(RANGE_QUANTILES)).tolist()
        return {
            "image_paths": [self.paths[i] for i in picked],
            "scores": [self.scores[i] for i in picked],
            "labels": [self.labels[i] for i in picked],
            "outranked_by": [outranked_by(self.scores, self.labels, i) for i in picked],
            "anomaly_maps": [self.maps[i] for i in picked],
            "masks": [self.masks[i] for i in picked],
            "map_range": (low, high),
        }


def listed(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The hardest images as the record lists them: ``defect_type/file``, label, raw score, images of the other class
    ranked worse."""
    rows = zip(payload["image_paths"], payload["labels"], payload["scores"], payload["outranked_by"], strict=True)
    return [
        {"image": "/".join(Path(path).parts[-2:]), "defect": label, "score": round(score, 4), "outranked_by": count}
        for path, label, score, count in rows
    ]
