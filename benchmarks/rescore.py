"""Re-score trained DHKD models with other scoring settings, without training them again.

The scoring settings (which layers form the map, per-position standardisation, smoothing, coherence, what the
per-position discrepancy is) act on the teacher latents and student predictions only, so one trained model answers
every scoring question: this script runs each test and training image through the network once, keeps the per-layer
features, and fits and evaluates one :class:`~anomalib_dhkd.components.scoring.DiscrepancyScorer` per variant on
them. Train the models with ``python -m benchmarks.run --models dhkd --keep-checkpoints DIR``, then::

    python -m benchmarks.rescore DIR --variants default standardized_map teacher_density

Metrics are computed on the raw maps at 256 px (image AUROC, pixel AUROC, PRO up to FPR 0.3, pixel AUROC per defect
type); the suite's figures pass the maps through anomalib's post-processor first, so they can differ in the third
digit. One JSON line per (checkpoint, variant) is appended to ``--out``; a checkpoint whose chosen variants are all
there already is skipped, so an interrupted run resumes.
"""

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from anomalib.data import MVTecAD
from anomalib.metrics.aupro import _AUPRO
from anomalib.models.components import AnomalibModule
from tqdm import tqdm

from anomalib_dhkd.components.encoders import default_layers
from anomalib_dhkd.components.scoring import (
    DiscrepancyScorer,
    ScoringConfig,
    normalized_discrepancy,
    squared_discrepancy,
)
from anomalib_dhkd.components.teachers import FlowTeacherConfig
from anomalib_dhkd.models import Dhkd
from anomalib_dhkd.models.base import as_settings
from anomalib_dhkd.models.dhkd.config import resolve
from benchmarks.suite.hardest import defect_type_metrics, ranked_auroc
from benchmarks.suite.records import slug
from benchmarks.suite.settings import EVAL_BATCH_SIZE, dataset_name, discover_datasets

PRO_FPR_LIMIT = 0.3
TORCH_THREADS = 2  # as the suite measures


class Cached(NamedTuple):
    """One dataset's network outputs per batch (DHKD: scoring inputs) of the training and test images, and the test
    labels."""

    train: list[Any]
    test: list[Any]
    masks: torch.Tensor
    labels: torch.Tensor
    paths: list[str]


class Variant(NamedTuple):
    """A scoring variant: changed settings, map layers and the per-position discrepancy.

    ``map_layers`` takes the model's map layers and every layer with a teacher-student pair; ``None``: the model's.
    """

    settings: dict[str, Any]
    map_layers: Callable[[list[str], list[str]], list[str]] | None = None
    discrepancy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = squared_discrepancy


def with_teacher_density(weight: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Discrepancy plus ``weight`` x the teacher latent's mean square: the flow's own evidence (its negative
    log-likelihood up to the log-determinant) beside the teacher-student discrepancy."""

    def discrepancy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return squared_discrepancy(student, teacher) + weight * teacher.pow(2).mean(dim=1, keepdim=True)

    return discrepancy


PATCH_MEMORY = {"memory_layers": ("blocks.2", "blocks.4")}  # PatchCore's layers of tf_efficientnet_lite0 offline

VARIANTS: dict[str, Variant] = {
    "default": Variant({}),
    "standardized_map": Variant({"standardize_map": True}),
    "no_coherence": Variant({"coherence_weight": 0.0}),
    "no_stride_4_pair": Variant({}, map_layers=lambda layers, _all: layers[1:]),
    "score_layers_in_map": Variant({}, map_layers=lambda _layers, every_layer: every_layer),
    "deepest_layer_twice": Variant({}, map_layers=lambda layers, _all: [*layers, layers[-1]]),
    "cosine_discrepancy": Variant({}, discrepancy=normalized_discrepancy),
    "scale_map_layers": Variant({"scale_map_layers": True}),
    "no_global_score": Variant({"global_score": False}),
    "score_fraction_0.05": Variant({"score_fraction": 0.05}),
    "blur_2": Variant({"blur_sigma": 2.0}),
    "blur_4": Variant({"blur_sigma": 4.0}),
    "blur_8": Variant({"blur_sigma": 8.0}),
    "every_layer_standardized": Variant({"standardize_map": True}, map_layers=lambda _layers, every_layer: every_layer),
    "teacher_density": Variant({}, discrepancy=with_teacher_density(1.0)),
    "teacher_density_0.25": Variant({}, discrepancy=with_teacher_density(0.25)),
    "teacher_only": Variant({}, discrepancy=lambda _student, teacher: teacher.pow(2).mean(dim=1, keepdim=True)),
    "patch_memory": Variant(PATCH_MEMORY),  # 4096 patches, weight 1: the suite's patch_memory ablation
    "patch_memory_1024": Variant({**PATCH_MEMORY, "memory_size": 1024}),
    "patch_memory_16384": Variant({**PATCH_MEMORY, "memory_size": 16384}),
    "patch_memory_16384_weight_0.5": Variant({**PATCH_MEMORY, "memory_size": 16384, "memory_weight": 0.5}),
    "patch_memory_16384_weight_2": Variant({**PATCH_MEMORY, "memory_size": 16384, "memory_weight": 2.0}),
}


def load_model(checkpoint: Path) -> Dhkd:
    """The trained model of a checkpoint, in evaluation mode."""
    model = Dhkd.load_from_checkpoint(checkpoint, map_location="cpu")
    return model.eval()


@torch.no_grad()
def cache_outputs(
    model: AnomalibModule, root: str, category: str, outputs: Callable[[torch.Tensor], Any] | None = None
) -> Cached:
    """Run the training and test images through the network once.

    Args:
        model: The trained model; its pre-processor's transform prepares the images.
        root: Dataset root.
        category: Dataset category.
        outputs: What to keep of a batch of prepared images; ``None``: DHKD's scoring inputs.

    """
    outputs = outputs or model.model.scoring_input
    datamodule = MVTecAD(
        root=root, category=category, train_batch_size=EVAL_BATCH_SIZE, eval_batch_size=EVAL_BATCH_SIZE, num_workers=1
    )
    datamodule.setup()
    transform = model.pre_processor.transform
    train = [
        outputs(transform(batch.image))
        for batch in tqdm(datamodule.train_dataloader(), desc="training images", leave=False)
    ]
    test, masks, labels, paths = [], [], [], []
    for batch in tqdm(datamodule.test_dataloader(), desc="test images", leave=False):
        images, gt_masks = transform(batch.image, batch.gt_mask)
        test.append(outputs(images))
        masks.append(gt_masks)
        labels.append(batch.gt_label)
        paths += list(batch.image_path)
    return Cached(train, test, torch.cat(masks).bool(), torch.cat(labels).bool(), paths)


def variant_scorer(model: Dhkd, variant: Variant) -> DiscrepancyScorer:
    """The model's scorer with the variant's settings, not yet fitted."""
    hparams = model.hparams
    layers = list(hparams["layers"] or default_layers(hparams["backbone"]))
    teacher = as_settings(FlowTeacherConfig, hparams["teacher"])
    _, config = resolve(hparams["pre_trained"], layers, teacher, as_settings(ScoringConfig, hparams["scoring"]))
    config = dataclasses.replace(config, **variant.settings)
    encoder = model.model.encoder
    map_layers = [encoder.layers[i] for i in model.model.scorer.map_indices]
    if variant.map_layers is not None:
        map_layers = variant.map_layers(map_layers, list(encoder.layers))
    strides = encoder.feature_extractor.feature_info.reduction()
    return DiscrepancyScorer(
        list(encoder.layers), list(encoder.out_dims), strides, map_layers, config, discrepancy=variant.discrepancy
    )


def map_metrics(
    scores: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, paths: list[str]
) -> dict[str, Any]:
    """Image AUROC, pixel AUROC, PRO and pixel AUROC per defect type of raw test maps ``(N, H, W)``."""
    masks = masks.reshape(maps.shape)
    normalised = (maps - maps.min()) / (maps.max() - maps.min()).clamp_min(1e-12)
    pro = _AUPRO(fpr_limit=PRO_FPR_LIMIT)
    pro.update(normalised, masks.long())
    by_type = defect_type_metrics(paths, scores.tolist(), list(maps), list(masks))
    return {
        "image_AUROC": ranked_auroc(scores, labels.long()),
        "pixel_AUROC": ranked_auroc(maps.flatten(), masks.flatten().long()),
        "pixel_AUPRO": round(float(pro.compute()), 4),
        "pixel_AUROC_by_type": {name: m["pixel_AUROC"] for name, m in by_type.items() if m["pixel_AUROC"] is not None},
    }


def evaluate(scorer: DiscrepancyScorer, cached: Cached) -> dict[str, Any]:
    """Fit the scorer on the training images' outputs and measure it on the test images'."""
    scorer.fit(lambda: cached.train)
    outputs = [scorer(inputs) for inputs in cached.test]
    scores = torch.cat([o.pred_score for o in outputs])
    maps = torch.cat([o.anomaly_map for o in outputs])[:, 0]
    return map_metrics(scores, maps, cached.masks, cached.labels, cached.paths)


def checkpoints(folder: Path, datasets: list[str] | None, model: str = "dhkd") -> list[tuple[Path, str]]:
    """``(checkpoint, ROOT:CATEGORY)`` of every ``model`` checkpoint under ``folder`` whose dataset is shared here."""
    specs = {slug(dataset_name(spec)): spec for spec in discover_datasets()}
    found = []
    for path in sorted(folder.rglob(f"{model}__s*.ckpt")):
        spec = specs.get(path.parent.name)
        if spec is not None and (not datasets or any(word in path.parent.name for word in datasets)):
            found.append((path, spec))
    return found


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines written so far (none if the file does not exist)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def summary(lines: list[dict[str, Any]], reference: str = "default") -> str:
    """Markdown table: per variant and dataset the seed means, and the mean change from ``reference`` in points.

    A checkpoint's last line per variant counts (a rerun replaces earlier lines).
    """
    latest = {(line["checkpoint"], line["variant"]): line for line in lines}
    datasets = sorted({line["dataset"] for line in latest.values()})
    variants = list(dict.fromkeys(line["variant"] for line in latest.values()))
    metrics = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")

    def mean(variant: str, dataset: str) -> list[float] | None:
        rows = [v for (_, name), v in latest.items() if name == variant and v["dataset"] == dataset]
        return [sum(row[m] for row in rows) / len(rows) for m in metrics] if rows else None

    header = [
        "variant",
        *[f"{d} ({sum(1 for (_, n), v in latest.items() if n == reference and v['dataset'] == d)})" for d in datasets],
        f"mean change from {reference} (points)",
    ]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in variants:
        cells, changes = [], []
        for dataset in datasets:
            values, base = mean(variant, dataset), mean(reference, dataset)
            cells.append(" / ".join(f"{v:.3f}" for v in values) if values else "")
            if values and base:
                changes.append([100 * (v - b) for v, b in zip(values, base, strict=True)])
        change = [sum(c[i] for c in changes) / len(changes) for i in range(3)] if changes else None
        table.append(
            f"| {variant} | {' | '.join(cells)} | {' / '.join(f'{c:+.1f}' for c in change) if change else ''} |"
        )
    return "\n".join(table)


ScoreCheckpoint = Callable[[Path, str, str, list[str]], Iterator[tuple[str, dict[str, Any]]]]


def score_dhkd(path: Path, root: str, category: str, variants: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(variant, metrics)`` of one DHKD checkpoint on one dataset, for each chosen variant."""
    start = time.perf_counter()
    model = load_model(path)
    cached = cache_outputs(model, root, category)
    print(f"{path} ({time.perf_counter() - start:.0f} s to run the images)", flush=True)
    for name in variants:
        yield name, evaluate(variant_scorer(model, VARIANTS[name]), cached)


def rescore_main(
    argv: list[str] | None,
    description: str,
    model: str,
    variants: list[str],
    out: Path,
    score: ScoreCheckpoint,
    reference: str = "default",
) -> None:
    """Re-score every ``model`` checkpoint with every chosen variant; print and append one JSON line each.

    Args:
        argv: Command-line arguments; ``None``: ``sys.argv``.
        description: The command's description.
        model: Checkpoint name prefix in the ``--keep-checkpoints`` folder, e.g. ``dhkd``.
        variants: Names of the variants ``score`` knows.
        out: Default JSON-lines file.
        score: ``(checkpoint, root, category, variants)`` to ``(variant, metrics)`` pairs.
        reference: The variant the summary's changes are measured from.

    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("checkpoints", type=Path, help="folder of python -m benchmarks.run --keep-checkpoints")
    parser.add_argument("--variants", nargs="+", choices=variants, default=variants)
    parser.add_argument("--datasets", nargs="+", metavar="NAME", help="only datasets whose name contains NAME")
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--summary-only", action="store_true", help="only summarise the lines already in --out")
    args = parser.parse_args(argv)
    if args.summary_only:
        print(summary(read_lines(args.out), reference))
        return
    torch.set_num_threads(TORCH_THREADS)
    found = checkpoints(args.checkpoints, args.datasets, model)
    if not found:
        raise SystemExit(f"no {model} checkpoint of a shared dataset under {args.checkpoints}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {(line["checkpoint"], line["variant"]) for line in read_lines(args.out)}
    for path, spec in found:
        chosen = [name for name in args.variants if (str(path), name) not in done]
        if not chosen:
            print(f"{path}: every variant already scored in {args.out}, skipped", flush=True)
            continue
        root, _, category = spec.rpartition(":")
        for name, metrics in score(path, root, category, chosen):
            line = {"checkpoint": str(path), "dataset": dataset_name(spec), "variant": name, **metrics}
            with args.out.open("a") as lines:
                lines.write(json.dumps(line) + "\n")
            print(
                f"  {name:28s} {metrics['image_AUROC']:.3f} / {metrics['pixel_AUROC']:.3f} / "
                f"{metrics['pixel_AUPRO']:.3f}  {metrics['pixel_AUROC_by_type']}",
                flush=True,
            )
    print(summary(read_lines(args.out), reference))


def main(argv: list[str] | None = None) -> None:
    """Re-score every DHKD checkpoint with every chosen variant; print and append one JSON line each."""
    rescore_main(argv, __doc__.splitlines()[0], "dhkd", list(VARIANTS), Path("results/rescore.jsonl"), score_dhkd)


if __name__ == "__main__":
    main()
