"""The suite's report, regenerated from all records: ``RESULTS.md``, bar charts with error bars, heat-map galleries.

Every (model configuration, dataset, track) is summarised over its seeds as mean ± sample standard deviation, with
the per-seed values kept. A cell is marked as ahead (**bold**) only when its mean leads the next configuration's by
more than the two configurations' pooled standard deviation. The summary ranks configurations per dataset and metric
and averages the ranks over datasets.
"""

import math
import platform
import statistics
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

from benchmarks.suite.records import environment, maps_path, slug
from benchmarks.suite.settings import MODELS, TRACKS

TRACK_TITLES = {
    "pretrained": "ImageNet weights (offline tf_efficientnet_lite0)",
    "none": "no pretrained weights (pre_trained=False)",
}
QUALITY = {"image_AUROC": "image AUROC", "pixel_AUROC": "pixel AUROC", "pixel_AUPRO": "PRO"}
# Record field -> (label, decimals), in chart order.
COLUMNS = {
    **{key: (label, 3) for key, label in QUALITY.items()},
    "image_F1Score": ("image F1", 3),
    "train_seconds": ("train s", 0),
    "images_per_second_batch1": ("images/s b=1", 1),
    "images_per_second_batch16": ("images/s b=16", 1),
    "peak_rss_mb": ("peak RSS MB", 0),
}
NO_WEIGHTS_MARK = "†"
NO_WEIGHTS_NOTE = (
    f"{NO_WEIGHTS_MARK} runs without ImageNet weights in this track too: anomalib's Reverse Distillation decodes "
    "ResNet encoders only and no ResNet ImageNet weights are available offline; DRAEM has no pretrained encoder."
)
FIGURES_DIR = "figures"

Group = tuple[str, str, str]  # (model, dataset, track)


def ordered(values: Iterable[str], order: tuple[str, ...] = ()) -> list[str]:
    """Unique values: those in ``order`` first, in that order, then the rest by first appearance."""
    unique = list(dict.fromkeys(values))
    return [value for value in order if value in unique] + [value for value in unique if value not in order]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def model_label(record: dict[str, Any]) -> str:
    """Model configuration, marked when it ran without ImageNet weights in the pretrained track."""
    without_weights = record["track"] == "pretrained" and not record["settings"]["pre_trained"]
    return record["model"] + (NO_WEIGHTS_MARK if without_weights else "")


def grouped(records: list[dict[str, Any]]) -> dict[Group, list[dict[str, Any]]]:
    """Successful records by (model, dataset, track), each group sorted by seed."""
    groups: dict[Group, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: r["settings"]["seed"]):
        if record["status"] == "ok":
            groups.setdefault((record["model"], record["dataset"], record["track"]), []).append(record)
    return groups


def values(runs: list[dict[str, Any]], key: str) -> list[float]:
    """The measured values of ``key`` over ``runs`` (seeds)."""
    return [run[key] for run in runs if run[key] is not None]


def leaders(groups: dict[Group, list[dict[str, Any]]], dataset: str, track: str, key: str) -> set[str]:
    """The configuration whose mean ``key`` leads the next one's by more than their pooled std, both over 2+ seeds."""
    stats = sorted(
        (mean_std(values(runs, key)), model, len(values(runs, key)))
        for (model, run_dataset, run_track), runs in groups.items()
        if (run_dataset, run_track) == (dataset, track) and values(runs, key)
    )
    if len(stats) < 2 or min(count for *_, count in stats[-2:]) < 2:  # one seed has no spread to compare with
        return set()
    stats = [(mean_and_std, model) for mean_and_std, model, _ in stats]
    ((best_mean, best_std), best), ((next_mean, next_std), _) = stats[-1], stats[-2]
    return {best} if best_mean - next_mean > math.sqrt((best_std**2 + next_std**2) / 2) else set()


def ranks(groups: dict[Group, list[dict[str, Any]]], track: str, key: str) -> dict[str, list[float]]:
    """Per configuration, its rank (1 = best mean ``key``, ties averaged) on each dataset of ``track``."""
    by_dataset: dict[str, dict[str, float]] = {}
    for (model, dataset, run_track), runs in groups.items():
        if run_track == track and values(runs, key):
            by_dataset.setdefault(dataset, {})[model] = mean_std(values(runs, key))[0]
    result: dict[str, list[float]] = {}
    for means in by_dataset.values():
        for model, mean in means.items():
            better = sum(other > mean for other in means.values())
            equal = sum(other == mean for other in means.values())
            result.setdefault(model, []).append(better + (equal + 1) / 2)
    return result


def number(value: float | None, digits: int = 3) -> str:
    """Table cell for a measurement."""
    return "-" if value is None else f"{value:.{digits}f}"


def mean_cell(runs: list[dict[str, Any]], key: str, digits: int = 3, bold: bool = False) -> str:
    """``mean ± std`` of ``key`` over the seeds; bold when it leads."""
    measured = values(runs, key)
    if not measured:
        return "-"
    mean, std = mean_std(measured)
    text = f"{mean:.{digits}f} ± {std:.{digits}f}" if len(measured) > 1 else f"{mean:.{digits}f}"
    return f"**{text}**" if bold else text


def compute_line(records: list[dict[str, Any]]) -> str:
    """The machine time the records took: wall seconds where recorded, training seconds of the older records."""
    timed = [record["wall_seconds"] for record in records if record.get("wall_seconds")]
    older = [r["train_seconds"] for r in records if not r.get("wall_seconds") and r["train_seconds"]]
    parts = []
    if timed:
        parts.append(f"{sum(timed) / 3600:.1f} h for the {len(timed)} runs timed in all (training, test, speed)")
    if older:
        parts.append(f"{sum(older) / 3600:.1f} h of training for {len(older)} older runs")
    return f"Machine time: {', and '.join(parts)}." if parts else ""


def header_lines(records: list[dict[str, Any]]) -> list[str]:
    """Title, stamp (commit, date, machine of this report) and the provenance of the records."""
    now = environment()
    environments = [record["environment"] for record in records]
    dates = sorted(env["date"][:10] for env in environments)
    commits = ", ".join(ordered(env["commit"] for env in environments))
    seeds = sorted({record["settings"]["seed"] for record in records})
    return [
        "# Benchmark results",
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d} at commit {now['commit']} on {platform.machine()} with "
        f"{now['cpu_count']} CPUs (torch {now['torch']}, anomalib {now['anomalib']}) from {len(records)} records "
        f"(`python -m benchmarks.run --report-only`). Runs dated {dates[0]} to {dates[-1]}, commits {commits}; "
        f"seeds {', '.join(map(str, seeds))}. {compute_line(records)}",
        "",
        "Every run trains and tests through anomalib's `Engine` with the same data, image size, seeds and batch size, "
        "scored by `anomalib_dhkd.models.evaluation.default_evaluator()` (PRO = anomalib's AUPRO up to FPR 0.3) "
        "after anomalib's post-processor. Cells: mean ± standard deviation over seeds; **bold**: ahead of the next "
        "configuration by more than their pooled standard deviation. images/s: torch eager, 2 threads, full forward; "
        "x encoder: against the model's encoder alone as its inference runs it, timed interleaved (records re-timed "
        "after a change of speed only, `python -m benchmarks.retime`, say so in `throughput_environment`).",
    ]


def common_datasets(groups: dict[Group, list[dict[str, Any]]], track: str) -> list[str]:
    """The datasets of ``track`` on which every configuration of that track has results."""
    models = {model for model, _, run_track in groups if run_track == track}
    datasets = ordered(dataset for _, dataset, run_track in groups if run_track == track)
    return [d for d in datasets if all(values(groups.get((m, d, track), []), "image_AUROC") for m in models)]


def summary_table(groups: dict[Group, list[dict[str, Any]]], track: str) -> list[str]:
    """Each configuration's quality averaged over the datasets all of ``track``'s configurations share, and ranks.

    A mean over different datasets would compare easy sets with hard ones, so datasets only some configurations have
    results on are left out here (their tables below have them) and named under the table.
    """
    shared = common_datasets(groups, track)
    common = {key: runs for key, runs in groups.items() if key[2] != track or key[1] in shared}
    per_metric = {key: ranks(common, track, key) for key in QUALITY}
    models = ordered((model for model, _, run_track in groups if run_track == track), MODELS)
    labels = list(QUALITY.values())
    lines = ["| model | " + " | ".join(labels) + " | mean rank " + " / ".join(labels) + " | datasets measured |"]
    lines.append("|---" * (len(QUALITY) + 3) + "|")
    for model in models:
        runs_by_dataset = [runs for (m, _, t), runs in common.items() if (m, t) == (model, track)]
        measured = sum(1 for m, _, t in groups if (m, t) == (model, track))
        means = []
        for key in QUALITY:
            dataset_means = [mean_std(values(runs, key))[0] for runs in runs_by_dataset if values(runs, key)]
            means.append(number(statistics.fmean(dataset_means)) if dataset_means else "-")
        mean_ranks = [
            number(statistics.fmean(per_metric[key][model]), 2) if model in per_metric[key] else "-" for key in QUALITY
        ]
        lines.append(f"| {model} | {' | '.join(means)} | {' / '.join(mean_ranks)} | {measured} |")
    others = ordered(d for _, d, t in groups if t == track and d not in shared)
    names = ", ".join(shared) or "none"
    lines += ["", f"Means and ranks over the datasets all configurations have results on: {names}."]
    if others:
        lines.append(f"Measured for some configurations only (see their tables): {', '.join(others)}.")
    return lines


README_START = "<!-- benchmark summary: generated by python -m benchmarks.run, do not edit -->"
README_END = "<!-- end of benchmark summary -->"


def update_readme(readme: Path, records: list[dict[str, Any]]) -> Path | None:
    """Replace the summary between the README's markers with the pretrained track's summary; ``None`` if unmarked."""
    text = readme.read_text() if readme.is_file() else ""
    if README_START not in text or README_END not in text:
        return None
    groups = grouped(records)
    block = [
        README_START,
        f"Track `pretrained`, mean over shared datasets of the mean over seeds ({datetime.now(timezone.utc):%Y-%m-%d}; "
        "commit, machine and details in [benchmarks/RESULTS.md](benchmarks/RESULTS.md)):",
        "",
        *summary_table(groups, "pretrained"),
        README_END,
    ]
    before, rest = text.split(README_START, 1)
    after = rest.split(README_END, 1)[1]
    readme.write_text(before + "\n".join(block) + after)
    return readme


def speed_ratio(runs: list[dict[str, Any]], batch_size: int) -> str:
    """Mean images/s of the model over that of its bare encoder, measured side by side."""
    ratios = [
        run[f"images_per_second_batch{batch_size}"] / run[f"encoder_images_per_second_batch{batch_size}"]
        for run in runs
        if run.get(f"encoder_images_per_second_batch{batch_size}") and run.get(f"images_per_second_batch{batch_size}")
    ]
    return f"{statistics.fmean(ratios):.2f}" if ratios else "-"


def dataset_table(groups: dict[Group, list[dict[str, Any]]], dataset: str, track: str) -> list[str]:
    """One row per configuration: quality mean ± std (leaders bold), per-seed values, cost, settings."""
    headers = [*QUALITY.values(), "seeds: image / pixel / PRO", "train s (per epoch, 100 images)"]
    headers += ["images/s b=1 / b=16", "x encoder b=1 / b=16", "peak RSS MB"]
    headers = ["model", *headers, "params M (total / trained)", "epochs", "backbone, layers"]
    lines = [f"| {' | '.join(headers)} |", "|---" * len(headers) + "|"]
    bold = {key: leaders(groups, dataset, track, key) for key in QUALITY}
    models = ordered((m for m, d, t in groups if (d, t) == (dataset, track)), MODELS)
    for model in models:
        runs = groups[model, dataset, track]
        first, settings = runs[0], runs[0]["settings"]
        per_seed = "; ".join(
            f"s{run['settings']['seed']}: " + " / ".join(number(run[key]) for key in QUALITY) for run in runs
        )
        params = "-"
        if first["params_total"] is not None:
            params = f"{first['params_total'] / 1e6:.2f} / {first['params_trainable'] / 1e6:.2f}"
        speed = f"{mean_cell(runs, 'images_per_second_batch1', 1)} / {mean_cell(runs, 'images_per_second_batch16', 1)}"
        cells = [
            model_label(first),
            *(mean_cell(runs, key, bold=model in bold[key]) for key in QUALITY),
            per_seed,
            f"{mean_cell(runs, 'train_seconds', 0)} ({mean_cell(runs, 'train_seconds_per_epoch_per_100_images', 1)})",
            speed,
            f"{speed_ratio(runs, 1)} / {speed_ratio(runs, 16)}",
            mean_cell(runs, "peak_rss_mb", 0),
            params,
            str(settings["epochs"]),
            f"{settings['backbone']} {', '.join(settings['layers'])}".strip(),
        ]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def run_conditions(record: dict[str, Any]) -> str:
    """Image size and batch sizes of a run, which every run compared in one track must share."""
    settings = record["settings"]
    return f"{settings['image_size']} px, batch {settings['batch_size']} (test batch {settings['eval_batch_size']})"


def conditions_lines(records: list[dict[str, Any]]) -> list[str]:
    """The runs' shared conditions, or a warning listing which runs ran under which."""
    runs_by_conditions: dict[str, list[str]] = {}
    for record in records:
        run = f"{record['model']} on {record['dataset']} (seed {record['settings']['seed']})"
        runs_by_conditions.setdefault(run_conditions(record), []).append(run)
    if len(runs_by_conditions) == 1:
        return [f"Every run: {next(iter(runs_by_conditions))}."]
    return [
        "**Not like for like: these runs differ in image size or batch size.**",
        "",
        *(f"- {conditions}: {', '.join(runs)}" for conditions, runs in runs_by_conditions.items()),
    ]


def hardest_lines(groups: dict[Group, list[dict[str, Any]]], dataset: str, track: str) -> list[str]:
    """Each configuration's hardest test images on ``dataset`` (its lowest seed that lists them), one line each."""
    lines = []
    for (model, run_dataset, run_track), runs in groups.items():
        listed = next((run for run in runs if run.get("hardest_images")), None)
        if (run_dataset, run_track) != (dataset, track) or listed is None:
            continue
        images = [
            f"`{image['image']}` ({'below' if image['defect'] else 'above'} {image['outranked_by']})"
            for image in listed["hardest_images"]
        ]
        lines.append(f"- {model} (seed {listed['settings']['seed']}): {', '.join(images)}")
    if not lines:
        return []
    intro = (
        "Hardest test images: each configuration's lowest-scored defect images (below how many normal images) and "
        "highest-scored normal image (above how many defect images); the gallery figure shows their maps."
    )
    return ["", intro, "", *lines]


def defect_type_cell(runs: list[dict[str, Any]], defect: str) -> str:
    """Seed-mean image AUROC / pixel AUROC of one defect type over the runs that measured it."""
    measured = [run["defect_types"][defect] for run in runs if defect in (run.get("defect_types") or {})]
    if not measured:
        return "-"
    means = []
    for key in ("image_AUROC", "pixel_AUROC"):
        found = [metrics[key] for metrics in measured if metrics[key] is not None]
        means.append(number(statistics.fmean(found)) if found else "-")
    return " / ".join(means)


def defect_type_lines(groups: dict[Group, list[dict[str, Any]]], dataset: str, track: str) -> list[str]:
    """Per configuration and defect type of ``dataset``: image AUROC / pixel AUROC against the normal test images."""
    runs_by_model = {
        model: runs
        for (model, run_dataset, run_track), runs in groups.items()
        if (run_dataset, run_track) == (dataset, track) and any(run.get("defect_types") for run in runs)
    }
    if not runs_by_model:
        return []
    defects = sorted({d for runs in runs_by_model.values() for run in runs for d in run.get("defect_types") or {}})
    lines = [
        "",
        "By defect type: image AUROC / pixel AUROC of each type's images against the normal test images (seed mean "
        "over the runs that recorded it; pixel AUROC on maps reduced to 128 px).",
        "",
        f"| model | {' | '.join(defects)} |",
        "|---" * (len(defects) + 1) + "|",
    ]
    for model in ordered(runs_by_model, MODELS):
        cells = [defect_type_cell(runs_by_model[model], defect) for defect in defects]
        lines.append(f"| {model} | {' | '.join(cells)} |")
    return lines


def track_section(track: str, records: list[dict[str, Any]]) -> list[str]:
    """Summary and per-dataset tables of one track, with its footnotes and failures."""
    groups = grouped(records)
    lines = ["", f"## Track `{track}`: {TRACK_TITLES.get(track, track)}", "", *summary_table(groups, track)]
    for dataset in ordered(r["dataset"] for r in records):
        if any(d == dataset for _, d, _ in groups):
            lines += ["", f"### {dataset}", "", *dataset_table(groups, dataset, track)]
            lines += defect_type_lines(groups, dataset, track)
            lines += hardest_lines(groups, dataset, track)
    lines += ["", *conditions_lines(records)]
    if any(NO_WEIGHTS_MARK in model_label(r) for r in records):
        lines += ["", NO_WEIGHTS_NOTE]
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {r['model']} on {r['dataset']}, seed {r['settings']['seed']}: `{r['error']}`" for r in failed]
    return lines


def write_markdown(records: list[dict[str, Any]], path: Path, figures: list[Path]) -> Path:
    """``RESULTS.md``: a section per track, then the figures."""
    lines = header_lines(records)
    for track in ordered((r["track"] for r in records), TRACKS):
        lines += track_section(track, [r for r in records if r["track"] == track])
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{figure.stem}]({figure.relative_to(path.parent).as_posix()})" for figure in figures]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_chart(groups: dict[Group, list[dict[str, Any]]], key: str, path: Path) -> Path:
    """Grouped bar chart of one measurement: a group per dataset and track, a bar per configuration, std as error."""
    columns = ordered(f"{dataset}\n{track}" for _, dataset, track in groups)
    models = ordered((model for model, _, _ in groups), MODELS)
    width = 0.8 / len(models)
    figure, axis = plt.subplots(figsize=(max(8.0, 1.9 * len(columns) + 2), 4.0))
    for index, model in enumerate(models):
        stats = {
            f"{dataset}\n{track}": mean_std(values(runs, key))
            for (run_model, dataset, track), runs in groups.items()
            if run_model == model and values(runs, key)
        }
        means = [stats[column][0] if column in stats else np.nan for column in columns]
        errors = [stats[column][1] if column in stats else 0.0 for column in columns]
        positions = np.arange(len(columns)) + (index - (len(models) - 1) / 2) * width
        axis.bar(positions, means, width, yerr=errors, capsize=2, label=model)
    axis.set_xticks(np.arange(len(columns)), columns, fontsize=7)
    axis.set_title(f"{COLUMNS[key][0]} (mean ± std over seeds)")
    axis.legend(fontsize=7, ncols=min(len(models), 5), loc="upper center", bbox_to_anchor=(0.5, -0.2))
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)
    return path


def overlay(axis: plt.Axes, payload: dict[str, Any], index: int) -> None:
    """One hard image with the model's map over it (scaled to the run's map range) and the defect's outline."""
    anomaly_map = payload["anomaly_maps"][index].numpy()
    low, high = payload["map_range"]
    image = Image.open(payload["image_paths"][index]).convert("RGB").resize(anomaly_map.shape[::-1])
    axis.imshow(image)
    axis.imshow((anomaly_map - low) / max(high - low, 1e-12), cmap="jet", vmin=0, vmax=1, alpha=0.45)
    mask = payload["masks"][index].numpy()
    if mask.any():
        axis.contour(mask, levels=[0.5], colors="white", linewidths=0.8)
    count = payload["outranked_by"][index]
    ranked = f"below {count} normal" if payload["labels"][index] else f"above {count} defect"
    name = "/".join(Path(payload["image_paths"][index]).parts[-2:])
    axis.set_title(f"{name}\nscored {ranked} image{'s' * (count != 1)}", fontsize=6)


def write_gallery(maps: dict[str, dict[str, Any]], title: str, path: Path) -> Path:
    """One row per configuration: its hardest test images (lowest-scored defects, highest-scored normal image)."""
    models = ordered(maps, MODELS)
    columns = max(len(maps[model]["image_paths"]) for model in models)
    figure, axes = plt.subplots(
        len(models), columns, figsize=(1.9 * columns + 0.6, 2.1 * len(models) + 0.5), squeeze=False
    )
    for row, model in zip(axes, models, strict=True):
        row[0].set_ylabel(model, fontsize=8)
        for index, axis in enumerate(row):
            if index < len(maps[model]["image_paths"]) and Path(maps[model]["image_paths"][index]).is_file():
                overlay(axis, maps[model], index)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def gallery_maps(groups: dict[Group, list[dict[str, Any]]], dataset: str, track: str, maps_dir: Path) -> dict:
    """The hardest-image maps of each configuration on ``dataset`` in ``track``, from its lowest seed that kept them.

    Maps stay on the machine that ran the seed (``--out``); a report regenerated elsewhere still shows every
    configuration that has maps of some seed.
    """
    maps = {}
    for (model, run_dataset, run_track), runs in groups.items():
        if (run_dataset, run_track) != (dataset, track):
            continue
        for path in (maps_path(maps_dir, run) for run in runs):
            payload = torch.load(path, weights_only=True) if path.is_file() else {}
            if "map_range" in payload:  # maps of the earlier fixed-image galleries are not shown
                maps[model] = payload
                break
    return maps


def write_report(records: list[dict[str, Any]], report_dir: Path, maps_dir: Path) -> list[Path]:
    """Write ``RESULTS.md`` and its figures (charts, galleries from ``maps_dir``) to ``report_dir``."""
    figures_dir = report_dir / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    groups = grouped(records)
    figures = [write_chart(groups, key, figures_dir / f"chart_{key}.png") for key in COLUMNS] if groups else []
    for dataset in ordered(d for _, d, _ in groups):
        for track in ordered((t for _, _, t in groups), TRACKS):
            maps = gallery_maps(groups, dataset, track, maps_dir)
            if maps:
                title = (
                    f"{dataset}, track {track}: each model's hardest test images (lowest seed with maps)\n"
                    "map scaled to the run's 1st-99.9th percentile of all test-map values; white: ground truth"
                )
                figures.append(write_gallery(maps, title, figures_dir / f"gallery_{slug(dataset)}_{track}.png"))
    return [write_markdown(records, report_dir / "RESULTS.md", figures), *figures]
