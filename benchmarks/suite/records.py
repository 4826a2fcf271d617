"""The suite's records: one small JSON file per run, written whole or not at all, and the gallery maps beside them.

``RECORDS/<track>/<dataset>/<model>__s<seed>.json`` holds the model configuration, dataset, track, seed, status (ok or
failed with its error), metrics, seconds, peak memory, settings, package versions and commit of one run. The suite
skips a run whose record is ok with the same settings, so a grid is filled in chunks, across sessions, and the
records folder is tracked in git. The anomaly maps of each run's gallery images go to
``OUT/maps/<model>__<dataset>__<track>__s<seed>.pt`` (untracked).
"""

import json
import os
import subprocess
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks.suite.settings import MEASUREMENTS, RunSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
RECORDS_DIR = REPO_ROOT / "benchmarks" / "records"
MAPS_DIR = "maps"
VARIANT_SEPARATOR = "+"  # between a model and its ablation variant in record names
# Options added with a default that changed the model, unlike a switch added at the old behaviour: a record without
# the option was measured with the value given here, so it is no longer current.
MEASURED_WITHOUT_OPTION: dict[str, dict[str, Any]] = {
    "asymmetric_ts": {"student": {"linear_output": False}},  # the student's linear output became the default
}
PACKAGES = ("torch", "torchvision", "anomalib", "timm", "lightning", "openvino", "anomalib-dhkd")


def slug(dataset: str) -> str:
    """File-name form of a dataset name: ``mvtec_ad/bottle`` -> ``mvtec_ad-bottle``."""
    return dataset.replace("/", "-")


def record_key(record: dict[str, Any]) -> tuple[str, str, str, int]:
    """The (model, dataset, track, seed) a record is about; the records folder holds one record per key."""
    return record["model"], record["dataset"], record["track"], record["settings"]["seed"]


def record_path(records_dir: Path, record: dict[str, Any]) -> Path:
    """Where ``record`` is kept."""
    model, dataset, track, seed = record_key(record)
    return records_dir / track / slug(dataset) / f"{model}__s{seed}.json"


def maps_path(out: Path, record: dict[str, Any]) -> Path:
    """Where a run keeps the anomaly maps of its gallery images."""
    model, dataset, track, seed = record_key(record)
    return out / MAPS_DIR / f"{model}__{slug(dataset)}__{track}__s{seed}.pt"


def checkpoint_path(checkpoints_dir: Path, record: dict[str, Any]) -> Path:
    """Where a run kept with ``--keep-checkpoints`` saves its trained model (for ``benchmarks.rescore``)."""
    return record_path(checkpoints_dir, record).with_suffix(".ckpt")


def load_records(records_dir: Path) -> list[dict[str, Any]]:
    """Every record under ``records_dir``, in a stable order (none if it does not exist)."""
    return [json.loads(path.read_text()) for path in sorted(records_dir.rglob("*.json"))]


def save_record(records_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` atomically (a killed run leaves the previous record or none, never half of one)."""
    path = record_path(records_dir, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    temporary.replace(path)
    return path


def finished_run(
    records_dir: Path, record: dict[str, Any], defaults: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The ok record with ``record``'s key and settings, if there is one.

    Args:
        records_dir: The records folder.
        record: The run about to start, with its settings.
        defaults: The suite configuration's options today; an option an earlier record lacks counts as set to its
            value here (a constructor argument added since, such as an ablation switch, keeps the model as it was
            at its default, so the records measured before stay current). ``None``: every option must match.

    Returns:
        The earlier record, or ``None`` if the run has to happen.

    """
    path = record_path(records_dir, record)
    if not path.is_file():
        return None
    earlier = json.loads(path.read_text())
    model = record["model"].partition(VARIANT_SEPARATOR)[0]
    current = earlier["status"] == "ok" and same_settings(earlier["settings"], record["settings"], defaults, model)
    return earlier if current else None


def with_defaults(options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``options`` completed by ``defaults``, in nested settings groups too (``{"scoring": {...}}``).

    Example:
        >>> with_defaults({"scoring": {"a": 2}}, {"scoring": {"a": 1, "b": False}, "c": 3})
        {'scoring': {'a': 2, 'b': False}, 'c': 3}

    """
    completed = {**defaults, **options}
    for name, default in defaults.items():
        if isinstance(default, dict) and isinstance(options.get(name), dict):
            completed[name] = with_defaults(options[name], default)
    return completed


def same_settings(
    earlier: dict[str, Any], settings: dict[str, Any], defaults: dict[str, Any] | None = None, model: str = ""
) -> bool:
    """Whether a record's ``earlier`` settings are ``settings``, options it lacks counting as in ``defaults``.

    An option added to a settings group after the record was made (a new scoring setting at its default) counts as
    measured at its default, unless :data:`MEASURED_WITHOUT_OPTION` gives ``model``'s earlier value.

    Example:
        >>> same_settings({"seed": 0, "options": {}}, {"seed": 0, "options": {"a": 1}}, {"a": 1})
        True
        >>> earlier = {"options": {"student": {"blocks": 1}}}
        >>> today = {"student": {"blocks": 1, "linear_output": True}}
        >>> same_settings(earlier, {"options": today}, today, "asymmetric_ts")
        False

    """
    options = with_defaults(earlier["options"], MEASURED_WITHOUT_OPTION.get(model, {}))
    return {**earlier, "options": with_defaults(options, defaults or {})} == settings


def package_version(name: str) -> str | None:
    """Installed version of a package, ``None`` if it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Date, machine, package versions and code version of a run."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, cwd=REPO_ROOT
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
    ).stdout.strip()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit + ("+dirty" if dirty else ""),
        "cpu_count": os.cpu_count(),
        **{package: package_version(package) for package in PACKAGES},
    }


def base_record(model: str, dataset: str, track: str, settings: RunSettings) -> dict[str, Any]:
    """A failed record with empty measurements, completed when the run ends."""
    return {
        "model": model,
        "dataset": dataset,
        "track": track,
        "status": "failed",
        "error": None,
        **dict.fromkeys(MEASUREMENTS),
        "settings": settings.to_dict(),
        "environment": environment(),
    }
