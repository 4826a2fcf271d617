"""Ablations: variants of the family's suite configurations, each with one choice undone, and their report.

A variant changes constructor options of a model's suite configuration (:data:`ABLATIONS`); everything else (data,
image size, seeds, budget, layers) stays the suite's, so a variant's row compares with the full model's row of the
main suite. ``python -m benchmarks.run --ablations`` runs them and keeps their records apart
(:data:`ABLATION_RECORDS_DIR`); ``benchmarks/ABLATIONS.md`` puts each variant beside the full model, per dataset, with
the change of the mean over the datasets both have.
"""

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.suite.records import REPO_ROOT, VARIANT_SEPARATOR
from benchmarks.suite.report import QUALITY, grouped, header_lines, mean_cell, ordered
from benchmarks.suite.settings import TRACKS, RunSettings, run_settings

ABLATION_RECORDS_DIR = REPO_ROOT / "benchmarks" / "ablations"
ABLATION_REPORT = REPO_ROOT / "benchmarks" / "ABLATIONS.md"
PRETRAINED_ONLY = ("pretrained",)


@dataclass(frozen=True)
class Ablation:
    """One variant of a suite configuration.

    Args:
        options: Constructor options that replace the configuration's; a dictionary (a settings dataclass) is merged
            into the configuration's key by key.
        question: What the variant measures, for the report.
        tracks: Tracks whose configuration makes the choice the variant undoes (a DHKD default decided by encoder
            is off without ImageNet weights already).
        layers: Feature layers that replace the configuration's; ``None``: the configuration's.
        epochs: Training epochs that replace the configuration's (a cheaper budget); ``None``: the configuration's.

    """

    options: dict[str, Any]
    question: str
    tracks: tuple[str, ...] = TRACKS
    layers: tuple[str, ...] | None = None
    epochs: int | None = None


STANDARDIZED_MAP_QUESTION = "per-position standardised discrepancies in the map (DHKD's default without pretraining)"

ABLATIONS: dict[str, dict[str, Ablation]] = {
    "dhkd": {
        "teacher_2_blocks": Ablation({"teacher": {"blocks": 2}}, "half the flow couplings: cost of a faster teacher"),
        "teacher_2_blocks_half_width": Ablation(
            {"teacher": {"blocks": 2, "hidden_ratio": 0.5}}, "a quarter of the teacher's cost (speed)"
        ),
        "fast": Ablation(
            {
                "teacher": {"blocks": 2},
                "scoring": {"score_layers": ["blocks.4"], "coherence_layers": ["blocks.4"], "coherence_weight": 0.15},
            },
            "two-block teacher without the blocks.6 pair (1.6 times the images/s)",
            PRETRAINED_ONLY,
        ),
        "no_position_condition": Ablation(
            {"teacher": {"condition_channels": 0}},
            "the flows' positional conditioning (parts that shift between images, as transistor's)",
        ),
        "teacher_half_width": Ablation(
            {"teacher": {"hidden_ratio": 0.5}}, "coupling sub-networks half as wide, four blocks kept (speed)"
        ),
        "no_stride_4_pair": Ablation(
            {},
            "the map's stride-4 blocks.1 pair, a third of the flows' time (speed)",
            PRETRAINED_ONLY,
            layers=("blocks.2", "blocks.4"),
        ),
        "no_stride_32_score": Ablation(
            {"scoring": {"score_layers": ["blocks.4"], "coherence_layers": ["blocks.4"], "coherence_weight": 0.15}},
            "the score-only blocks.6 pair (its encoder stage and pair cost a third of the time)",
            PRETRAINED_ONLY,
        ),
        "teacher_no_noise": Ablation(
            {"teacher": {"noise_level": 0.0}}, "the teacher's dequantisation noise", PRETRAINED_ONLY
        ),
        "student_2_blocks": Ablation({"student": {"blocks": 2}}, "a deeper student (the model default)"),
        "teacher_6_blocks": Ablation(
            {"teacher": {"blocks": 6}}, "a deeper flow: does transistor want more teacher capacity (1.5 times its cost)"
        ),
        "wide_teacher": Ablation(
            {"teacher": {"hidden_ratio": 2.0}}, "coupling sub-networks twice as wide (transistor lost with half width)"
        ),
        "wide_teacher_no_stride_4_pair": Ablation(
            {"teacher": {"hidden_ratio": 2.0}},
            "wide couplings on the blocks.2 and blocks.4 pairs only (the wide teacher's accuracy at today's cost?)",
            PRETRAINED_ONLY,
            layers=("blocks.2", "blocks.4"),
        ),
        "student_half_width": Ablation(
            {"student": {"hidden_ratio": 0.5}}, "students half as wide, a third of their cost (speed)"
        ),
        "pointwise_flow_output": Ablation(
            {"teacher": {"output_kernel_size": 1}}, "1x1 output convolutions in the couplings, 0.4x the flows' cost"
        ),
        "light_heads": Ablation(
            {"student": {"hidden_ratio": 0.5}, "teacher": {"output_kernel_size": 1}},
            "both: teachers and students at a third of their cost (speed)",
        ),
        "no_coherence": Ablation(
            {"scoring": {"coherence_weight": 0.0}}, "the map's discrepancy coherence", PRETRAINED_ONLY
        ),
        "sharper_map": Ablation(
            {"scoring": {"blur_sigma": 2.0}},
            "half the map's smoothing (transistor's thin cut leads are DHKD's weakest defects)",
            PRETRAINED_ONLY,
        ),
        "scaled_map_layers": Ablation(
            {"scoring": {"scale_map_layers": True}},
            "map layers weighted by their spread on normal images (thin leads vary at stride 4 on normal transistors)",
            PRETRAINED_ONLY,
        ),
        "no_global_score": Ablation(
            {"scoring": {"global_score": False}}, "the latent statistics in the image score", PRETRAINED_ONLY
        ),
        "patch_memory": Ablation(
            {"scoring": {"memory_layers": ["blocks.2", "blocks.4"]}},
            "a memory of normal encoder patches: each position's nearest-neighbour distance added to map and score",
        ),
    },
    "asymmetric_ts": {
        "cot_student": Ablation(
            {"student": {"contextual": True}}, "the paper's CoT blocks against plain 3x3 residual blocks"
        ),
        "bn_teacher": Ablation({"eman_momentum": 1.0}, "EMAN against the teacher's ImageNet BatchNorm statistics"),
        "student_3_blocks": Ablation({"student": {"blocks": 3}}, "three residual blocks per student scale"),
        "nonlinear_output": Ablation(
            {"student": {"linear_output": False}}, "the student's linear output (teacher features of both signs)"
        ),
        "wide_student": Ablation({"student": {"width": 64}}, "student blocks at least 64 channels wide"),
        "standardized_map": Ablation({"scoring": {"standardize_map": True}}, STANDARDIZED_MAP_QUESTION),
        "product_fusion": Ablation(
            {"scoring": {"map_fusion": "product"}}, "the scales' maps multiplied, as in STFPM, instead of averaged"
        ),
        "scaled_map_layers": Ablation(
            {"scoring": {"scale_map_layers": True}}, "each scale's map weighted by its spread on normal images"
        ),
    },
    "bikd": {
        "forward_only": Ablation(
            {"directions": ["forward"], "anomaly_probability": 0.0}, "the forward student alone, clean images"
        ),
        "reverse_only": Ablation(
            {"directions": ["reverse"], "anomaly_probability": 0.0}, "the reverse branch alone, clean images"
        ),
        "both": Ablation(
            {"feature_exchange": False, "anomaly_probability": 0.0}, "both directions trained apart on clean images"
        ),
        "both_exchange": Ablation(
            {"feature_exchange": False, "exchange_weight": 0.5, "anomaly_probability": 0.0},
            "both with the consistency exchange, clean images",
        ),
        "no_exchange": Ablation(
            {"feature_exchange": False}, "no exchange of either kind, with the synthetic anomalies"
        ),
        "consistency_exchange": Ablation(
            {"feature_exchange": False, "exchange_weight": 0.5},
            "the exchange read as a consistency term (weight 0.5) instead of the feature exchange",
        ),
        "clean_images": Ablation({"anomaly_probability": 0.0}, "the synthetic anomalies (with the feature exchange)"),
        "standardized_map": Ablation(
            {"scoring": {"standardize_map": True}}, STANDARDIZED_MAP_QUESTION, PRETRAINED_ONLY
        ),
    },
    "dmdd": {
        "no_ngm": Ablation({"normality_weight": 0.0}, "normality-guided mimicking"),
        "no_aim": Ablation({"abnormality_weight": 0.0}, "abnormality inverse mimicking"),
        "no_head": Ablation({"segmentation_head": False}, "the segmentation head against the raw discrepancy map"),
        "head_only": Ablation({"normality_in_map": False}, "the normality discrepancy multiplied into the head's map"),
        "multi_perception": Ablation(
            {"multi_perception": True}, "a per-position head against the paper's multi-perception head"
        ),
        "anywhere": Ablation({"anomaly_on_foreground": False}, "synthetic anomalies on the object only"),
        "half_epochs": Ablation(
            {"head_epochs": 2}, "half the training epochs (training time within twice DHKD's)", epochs=12
        ),
        "joint_only": Ablation(
            {"head_epochs": 0},
            "the 5 last epochs in which only the head learns, on the finished student's maps (two-stage)",
            epochs=20,
        ),
    },
}


def variant_name(model: str, variant: str) -> str:
    """The configuration name of a variant in its records and report, e.g. ``bikd+no_exchange``."""
    return f"{model}{VARIANT_SEPARATOR}{variant}"


def merged_options(options: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``options`` with ``changes`` applied; a dictionary change is merged into the dictionary it replaces.

    Example:
        >>> merged_options({"teacher": {"blocks": 4, "clamp": 2.0}, "max": 1}, {"teacher": {"blocks": 2}})
        {'teacher': {'blocks': 2, 'clamp': 2.0}, 'max': 1}

    """
    result = dict(options)
    for name, value in changes.items():
        if name not in options:
            msg = f"option {name!r} is not one of the configuration's: {sorted(options)}"
            raise KeyError(msg)
        result[name] = {**options[name], **value} if isinstance(value, dict) else value
    return result


def ablation_settings(model: str, variant: str, track: str, image_size: int, seed: int) -> RunSettings | None:
    """Settings of ``model``'s ``variant`` in ``track``; ``None`` where the variant has nothing to undo there.

    A choice the track's preset does not make (e.g. the global score without ImageNet weights) has nothing to undo.
    """
    ablation = ABLATIONS[model][variant]
    if track not in ablation.tracks:
        return None
    settings = run_settings(model, track, image_size, seed, quick=False)
    changed = dataclasses.replace(
        settings,
        options=merged_options(settings.options, ablation.options),
        layers=ablation.layers or settings.layers,
        epochs=ablation.epochs or settings.epochs,
    )
    return None if changed == settings else changed


def relative_change(variant_runs: dict[str, list], full_runs: dict[str, list], key: str) -> str:
    """Mean over datasets of the variant's mean ``key`` minus the full model's, on the seeds both have, in points."""
    differences = []
    for dataset, runs in variant_runs.items():
        full = {run["settings"]["seed"]: run for run in full_runs.get(dataset, [])}
        pairs = [(run, full[run["settings"]["seed"]]) for run in runs if run["settings"]["seed"] in full]
        pairs = [(run, other) for run, other in pairs if run[key] is not None and other[key] is not None]
        if pairs:
            differences.append(statistics.fmean(run[key] - other[key] for run, other in pairs))
    return f"{100 * statistics.fmean(differences):+.1f}" if differences else "-"


def model_section(model: str, track: str, groups: dict, suite_groups: dict) -> list[str]:
    """Table of ``model``'s variants in ``track``: per dataset image AUROC / pixel AUROC / PRO, and the change."""
    measured = {(configuration, run_track) for configuration, _, run_track in groups}
    variants = [name for name in ABLATIONS[model] if (variant_name(model, name), track) in measured]
    if not variants:
        return []
    rows = {"full model": {d: runs for (m, d, t), runs in suite_groups.items() if (m, t) == (model, track)}}
    for name in variants:
        configuration = variant_name(model, name)
        rows[name] = {d: runs for (m, d, t), runs in groups.items() if (m, t) == (configuration, track)}
    datasets = ordered(d for runs in rows.values() for d in runs)
    labels = " / ".join(QUALITY.values())
    headers = ["variant", *datasets, f"change of the mean, points ({labels})", "what it measures"]
    lines = [f"### {model}, track {track}", "", f"| {' | '.join(headers)} |", "|---" * len(headers) + "|"]
    for name, by_dataset in rows.items():
        cells = [" / ".join(mean_cell(by_dataset.get(d, []), key) for key in QUALITY) for d in datasets]
        change = " / ".join(relative_change(by_dataset, rows["full model"], key) for key in QUALITY)
        question = ABLATIONS[model][name].question if name in ABLATIONS[model] else "the suite's configuration"
        lines.append(f"| {name} | {' | '.join(cells)} | {'-' if name == 'full model' else change} | {question} |")
    return [*lines, ""]


def write_ablation_report(records: list[dict[str, Any]], suite_records: list[dict[str, Any]], path: Path) -> Path:
    """Write the ablation report: per model and track, each variant beside the full model's suite records."""
    groups, suite_groups = grouped(records), grouped(suite_records)
    lines = header_lines(records)[:3]  # title and stamp
    lines[0] = "# Ablations of the family's models"
    lines[2] = lines[2].replace("--report-only", "--ablations --report-only")
    lines += [
        "",
        "Each variant undoes one choice of a model's suite configuration (`benchmarks/suite/ablations.py`) and runs "
        "with the suite's data, image size, seeds and budget; `full model` is the suite's own row (RESULTS.md). Cells: "
        f"{' / '.join(QUALITY.values())}, mean ± std over seeds. The change is the variant's minus the full model's, "
        "on the seeds and datasets both have, averaged, in points (negative: the choice helps).",
        "",
    ]
    for model in ABLATIONS:
        for track in TRACKS:
            lines += model_section(model, track, groups, suite_groups)
    path.write_text("\n".join(lines) + "\n")
    return path
