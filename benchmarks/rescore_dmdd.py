"""Re-score trained Dmdd models with other anomaly maps, without training them again.

Dmdd's segmentation head learns from detached discrepancy maps, so the student is the same whichever map is read at
test time: one trained model answers which map to use. This script runs the training and test images through the
network once, keeps the head's probabilities and the per-scale normality and abnormality discrepancies
(``1 - cos`` to the teacher, at the shallowest scale's resolution), and evaluates each variant on them with the
model's own smoothing and top-fraction image score. Train with
``python -m benchmarks.run --models dmdd --keep-checkpoints DIR``, then::

    python -m benchmarks.rescore_dmdd DIR --out results/rescore_dmdd.jsonl

``default`` is the model's map (the head's probabilities times the normality discrepancy), ``head`` the head's
alone. Variants that add two maps standardise each by the mean and standard deviation of its values on the training
images. Metrics as in :mod:`benchmarks.rescore`; one JSON line per (checkpoint, variant), resumable.
"""

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from anomalib_dhkd.models import Dmdd
from anomalib_dhkd.models.dmdd.torch_model import DmddModel
from benchmarks.rescore import cache_outputs, map_metrics, rescore_main


class DmddMaps(NamedTuple):
    """Per image: the head's probabilities ``(N, 1, h, w)`` and the discrepancies ``(N, 2K, h, w)``."""

    head: torch.Tensor
    discrepancies: torch.Tensor

    @property
    def normality(self) -> torch.Tensor:
        """Mean over scales of the normality features' discrepancy ``(N, 1, h, w)``."""
        return DmddModel.normality_discrepancy(self.discrepancies)

    @property
    def abnormality(self) -> torch.Tensor:
        """Mean over scales of the abnormality features' discrepancy ``(N, 1, h, w)``."""
        return self.discrepancies[:, 1::2].mean(dim=1, keepdim=True)

    @property
    def deep_normality(self) -> torch.Tensor:
        """Normality discrepancy without the shallowest scale ``(N, 1, h, w)``."""
        return self.discrepancies[:, 2::2].mean(dim=1, keepdim=True)


MapOf = Callable[[DmddMaps], torch.Tensor]


def standardized_sum(*parts: MapOf) -> Callable[[DmddMaps, DmddMaps], torch.Tensor]:
    """The sum of ``parts``, each standardised by the mean and std of its values on the training images."""

    def fused(maps: DmddMaps, train: DmddMaps) -> torch.Tensor:
        standardized = []
        for part in parts:
            reference = part(train)
            standardized.append((part(maps) - reference.mean()) / reference.std().clamp_min(1e-12))
        return sum(standardized)

    return fused


VARIANTS: dict[str, Callable[[DmddMaps, DmddMaps], torch.Tensor]] = {
    "default": lambda maps, _train: maps.head * maps.normality,
    "head": lambda maps, _train: maps.head,
    "normality": lambda maps, _train: maps.normality,
    "deep_normality": lambda maps, _train: maps.deep_normality,
    "abnormality": lambda maps, _train: maps.abnormality,
    "head_plus_normality": standardized_sum(lambda m: m.head, lambda m: m.normality),
    "normality_plus_abnormality": standardized_sum(lambda m: m.normality, lambda m: m.abnormality),
}


def joined(parts: list[DmddMaps]) -> DmddMaps:
    """One :class:`DmddMaps` of every batch."""
    return DmddMaps(*(torch.cat(field) for field in zip(*parts, strict=True)))


@torch.no_grad()
def evaluate(model: Dmdd, root: str, category: str, variants: list[str]) -> dict[str, dict[str, Any]]:
    """Every chosen variant's metrics on one dataset."""
    cached = cache_outputs(model, root, category, lambda images: DmddMaps(*model.model.head_maps(images)))
    train, test_maps = joined(cached.train), joined(cached.test)
    image_size = tuple(cached.masks.shape[-2:])
    results = {}
    for name in variants:
        anomaly_map, scores = model.model.map_fusion([VARIANTS[name](test_maps, train)], None, image_size)
        results[name] = map_metrics(scores, anomaly_map[:, 0], cached.masks, cached.labels, cached.paths)
    return results


def score_dmdd(path: Path, root: str, category: str, variants: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(variant, metrics)`` of one Dmdd checkpoint on one dataset, for each chosen variant."""
    start = time.perf_counter()
    results = evaluate(Dmdd.load_from_checkpoint(path, map_location="cpu").eval(), root, category, variants)
    print(f"{path} ({time.perf_counter() - start:.0f} s)", flush=True)
    yield from results.items()


def main(argv: list[str] | None = None) -> None:
    """Re-score every Dmdd checkpoint with every chosen variant; print and append one JSON line each."""
    description = __doc__.splitlines()[0]
    rescore_main(argv, description, "dmdd", list(VARIANTS), Path("results/rescore_dmdd.jsonl"), score_dmdd)


if __name__ == "__main__":
    main()
