"""Report of the benchmark suite, regenerated from all records: Markdown tables, bar charts, heat-map galleries."""

from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from benchmarks.suite.settings import MODELS, TRACKS

MAPS_DIR = "maps"
TRACK_TITLES = {
    "pretrained": "ImageNet weights (offline tf_efficientnet_lite0)",
    "none": "no pretrained weights (pre_trained=False)",
}
# Record field -> (label, decimals), in table and chart order.
COLUMNS = {
    "image_AUROC": ("image AUROC", 3),
    "image_F1Score": ("image F1", 3),
    "pixel_AUROC": ("pixel AUROC", 3),
    "pixel_AUPRO": ("PRO", 3),
    "train_seconds": ("train s", 0),
    "images_per_second_batch1": ("images/s b=1", 1),
    "images_per_second_batch16": ("images/s b=16", 1),
    "peak_rss_mb": ("peak RSS MB", 0),
}
NO_WEIGHTS_MARK = "†"
NO_WEIGHTS_NOTE = (
    f"{NO_WEIGHTS_MARK} runs with pre_trained=False in this track too: anomalib's Reverse Distillation decodes "
    "ResNet encoders only, and no ResNet ImageNet weights are available offline."
)


def dataset_name(root: str | Path, category: str) -> str:
    """``<root folder>/<category>``, e.g. ``mvtec_ad/bottle``."""
    return f"{Path(root).name}/{category}"


def slug(dataset: str) -> str:
    """File-name form of a dataset name."""
    return dataset.replace("/", "-")


def maps_path(out: Path, model: str, dataset: str, track: str) -> Path:
    """Where a run keeps the anomaly maps of its gallery images."""
    return out / MAPS_DIR / f"{model}__{slug(dataset)}__{track}.pt"


def ordered(values: Iterable[str], order: tuple[str, ...] = ()) -> list[str]:
    """Unique values: those in ``order`` first, in that order, then the rest by first appearance."""
    unique = list(dict.fromkeys(values))
    return [value for value in order if value in unique] + [value for value in unique if value not in order]


def model_label(record: dict[str, Any]) -> str:
    """Model name, marked when it ran without ImageNet weights in the pretrained track."""
    without_weights = record["track"] == "pretrained" and not record["settings"]["pre_trained"]
    return record["model"] + (NO_WEIGHTS_MARK if without_weights else "")


def number(value: float | None, digits: int = 3) -> str:
    """Table cell for a measurement."""
    return "-" if value is None else f"{value:.{digits}f}"


def header_lines(records: list[dict[str, Any]]) -> list[str]:
    """Title, provenance (dates, commits, machines) and how the numbers were measured."""
    environments = [record["environment"] for record in records]
    dates = sorted(env["date"][:10] for env in environments)
    commits = ", ".join(ordered(env["commit"] for env in environments))
    machines = ", ".join(
        ordered(f"{env['cpu_count']} CPUs, torch {env['torch']}, anomalib {env['anomalib']}" for env in environments)
    )
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        "# Benchmark results",
        "",
        f"Generated {generated} from `results.jsonl` ({len(records)} runs). Runs dated {dates[0]} to {dates[-1]}; "
        f"commit(s) {commits}; machine(s): {machines}.",
        "",
        "The suite trains and tests every model through anomalib's `Engine` with the same data, image size, seed and "
        "batch size (each track states them, and warns where merged runs differ), scored by the family's evaluator, "
        "`anomalib_dhkd.models.evaluation.default_evaluator()` (image AUROC and F1, pixel AUROC, PRO = anomalib's "
        "AUPRO up to FPR 0.3) after anomalib's post-processor has normalised the scores. images/s: torch eager on the "
        "CPU, 2 threads, full forward (pre- to post-processing), after a warm-up. Peak RSS is that of the run's own "
        "process.",
    ]


def summary_table(records: list[dict[str, Any]], datasets: list[str]) -> list[str]:
    """Models x datasets, each cell image AUROC / pixel AUROC / PRO."""
    lines = [f"| model | {' | '.join(datasets)} |", "|---" * (len(datasets) + 1) + "|"]
    for model in ordered((r["model"] for r in records), MODELS):
        cells = []
        for dataset in datasets:
            found = [r for r in records if r["model"] == model and r["dataset"] == dataset]
            record = found[0] if found else None
            if record is None:
                cells.append("")
            elif record["status"] != "ok":
                cells.append("failed")
            else:
                cells.append(" / ".join(number(record[key]) for key in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")))
        label = model_label(next(r for r in records if r["model"] == model))
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines


def detail_row(record: dict[str, Any]) -> str:
    """One run: every measurement and the settings that differ between models."""
    settings = record["settings"]
    values = [number(record[key], digits) for key, (_, digits) in COLUMNS.items()]
    params = "-"
    if record["params_total"] is not None:
        params = f"{record['params_total'] / 1e6:.2f} / {record['params_trainable'] / 1e6:.2f}"
    cells = [
        model_label(record),
        *values,
        params,
        str(settings["epochs"]),
        f"{settings['backbone']} {', '.join(settings['layers'])}",
        record["status"],
    ]
    return f"| {' | '.join(cells)} |"


def detail_table(records: list[dict[str, Any]]) -> list[str]:
    """One row per run of a dataset and track."""
    labels = [label for label, _ in COLUMNS.values()]
    headers = ["model", *labels, "params M (total / trained)", "epochs", "backbone, layers", "status"]
    lines = [f"| {' | '.join(headers)} |", "|---" * len(headers) + "|"]
    return lines + [detail_row(r) for r in sorted(records, key=lambda r: MODELS.index(r["model"]))]


def run_conditions(record: dict[str, Any]) -> str:
    """Image size, seed and batch sizes of a run, which every run compared in one table must share."""
    settings = record["settings"]
    return (
        f"{settings['image_size']} px, seed {settings['seed']}, batch {settings['batch_size']} "
        f"(test batch {settings['eval_batch_size']})"
    )


def conditions_lines(records: list[dict[str, Any]]) -> list[str]:
    """The runs' shared conditions, or a warning listing which runs ran under which (e.g. merged seeds)."""
    runs_by_conditions: dict[str, list[str]] = {}
    for record in records:
        runs_by_conditions.setdefault(run_conditions(record), []).append(f"{record['model']} on {record['dataset']}")
    if len(runs_by_conditions) == 1:
        return [f"{next(iter(runs_by_conditions))}."]
    return [
        "**Not like for like: these runs differ in image size, seed or batch size.**",
        "",
        *(f"- {conditions}: {', '.join(runs)}" for conditions, runs in runs_by_conditions.items()),
    ]


def track_section(track: str, records: list[dict[str, Any]]) -> list[str]:
    """Summary and per-dataset tables of one track, with its footnotes and errors."""
    datasets = ordered(r["dataset"] for r in records)
    lines = ["", f"## Track `{track}`: {TRACK_TITLES.get(track, track)}", ""]
    lines += ["image AUROC / pixel AUROC / PRO:", "", *summary_table(records, datasets)]
    for dataset in datasets:
        lines += ["", f"### {dataset}", "", *detail_table([r for r in records if r["dataset"] == dataset])]
    lines += ["", *conditions_lines(records)]
    if any(NO_WEIGHTS_MARK in model_label(r) for r in records):
        lines += ["", NO_WEIGHTS_NOTE]
    lines += [f"- {r['model']} on {r['dataset']} failed: `{r['error']}`" for r in records if r["status"] != "ok"]
    return lines


def write_markdown(records: list[dict[str, Any]], path: Path) -> Path:
    """``results.md``: a section per track."""
    lines = header_lines(records)
    for track in ordered((r["track"] for r in records), TRACKS):
        lines += track_section(track, [r for r in records if r["track"] == track])
    path.write_text("\n".join(lines) + "\n")
    return path


def write_chart(records: list[dict[str, Any]], key: str, path: Path) -> Path:
    """Grouped bar chart of one measurement: a group per dataset and track, a bar per model."""
    groups = ordered(f"{r['dataset']}\n{r['track']}" for r in records)
    models = ordered((r["model"] for r in records), MODELS)
    width = 0.8 / len(models)
    figure, axis = plt.subplots(figsize=(max(5.0, 1.8 * len(groups) + 2), 3.6))
    for index, model in enumerate(models):
        values = {f"{r['dataset']}\n{r['track']}": r[key] for r in records if r["model"] == model}
        heights = [np.nan if values.get(group) is None else values[group] for group in groups]
        axis.bar(np.arange(len(groups)) + (index - (len(models) - 1) / 2) * width, heights, width, label=model)
    axis.set_xticks(np.arange(len(groups)), groups, fontsize=8)
    axis.set_title(COLUMNS[key][0])
    axis.legend(fontsize=7, ncols=len(models), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def load_maps(out: Path, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Gallery maps of the successful runs that kept them, by model."""
    maps = {}
    for record in records:
        path = maps_path(out, record["model"], record["dataset"], record["track"])
        if record["status"] == "ok" and path.is_file():
            maps[record["model"]] = torch.load(path, weights_only=True)
    return maps


def normalised_maps(payload: dict[str, Any], image_paths: list[str]) -> dict[str, np.ndarray]:
    """One model's maps of ``image_paths``, min-max normalised together (over the shown images)."""
    by_path = dict(zip(payload["image_paths"], payload["anomaly_maps"], strict=True))
    shown = {path: by_path[path].numpy() for path in image_paths if path in by_path}
    if not shown:
        return {}
    low = min(float(m.min()) for m in shown.values())
    high = max(float(m.max()) for m in shown.values())
    return {path: (m - low) / max(high - low, 1e-12) for path, m in shown.items()}


def write_gallery(maps: dict[str, dict[str, Any]], title: str, path: Path) -> Path:
    """Rows of defect images: the image, its ground truth, then each model's anomaly map."""
    models = ordered(maps, MODELS)
    reference = maps[models[0]]
    image_paths = reference["image_paths"]
    masks = dict(zip(image_paths, reference["masks"], strict=True))
    normalised = {model: normalised_maps(maps[model], image_paths) for model in models}
    columns = ["image", "ground truth", *models]
    figure, axes = plt.subplots(
        len(image_paths), len(columns), figsize=(1.9 * len(columns), 2.0 * len(image_paths) + 0.4), squeeze=False
    )
    for row, image_path in zip(axes, image_paths, strict=True):
        row[0].imshow(Image.open(image_path).convert("RGB"))
        row[0].set_ylabel(Path(image_path).parent.name + "/" + Path(image_path).name, fontsize=7)
        row[1].imshow(masks[image_path].numpy(), cmap="gray", vmin=0, vmax=1)
        for axis, model in zip(row[2:], models, strict=True):
            if image_path in normalised[model]:
                axis.imshow(normalised[model][image_path], cmap="jet", vmin=0, vmax=1)
    for axis, column in zip(axes[0], columns, strict=True):
        axis.set_title(column, fontsize=9)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def write_report(records: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write ``results.md``, ``chart_<metric>.png`` and ``gallery_<dataset>_<track>.png``; return their paths."""
    written = [write_markdown(records, out / "results.md")]
    successful = [r for r in records if r["status"] == "ok"]
    if not successful:
        return written
    written += [write_chart(successful, key, out / f"chart_{key}.png") for key in COLUMNS]
    for dataset in ordered(r["dataset"] for r in successful):
        for track in ordered((r["track"] for r in successful), TRACKS):
            runs = [r for r in successful if r["dataset"] == dataset and r["track"] == track]
            maps = load_maps(out, runs)
            if maps:
                title = f"{dataset}, track {track}\nanomaly maps min-max normalised per model over these images"
                written.append(write_gallery(maps, title, out / f"gallery_{slug(dataset)}_{track}.png"))
    return written
