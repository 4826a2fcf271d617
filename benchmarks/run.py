"""Benchmark suite: train and test DHKD and anomalib's peers on the same data, then write tables and figures.

python -m benchmarks.run [--models dhkd padim ...] [--data ROOT:CATEGORY ...] [--tracks pretrained none]
                         [--out results/bench] [--quick] [--seed 0] [--image-size 256] [--resume] [--report-only]
                         [--merge DIR ...]

Each (model, dataset, track) trains and tests through anomalib's ``Engine`` in a fresh subprocess
(:mod:`benchmarks.suite.worker`). Records go to ``OUT/results.jsonl``: a run replaces the record of the same
(model, dataset, track) and keeps all others; a failed run is recorded with ``"status": "failed"``. ``--resume``
skips runs already recorded as ok with the same settings, so an interrupted suite goes on where it stopped. A run
whose settings equal those of a run of the other track (Reverse Distillation, without weights in both) reuses that
run's record and maps.
``--merge`` first imports the records and gallery maps of other output folders, by the same rule. The report
(``results.md``, ``chart_<metric>.png``, ``gallery_<dataset>_<track>.png``) is regenerated from all records.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

from anomalib_dhkd.constants import IMAGE_EXTENSIONS
from benchmarks.suite.report import MAPS_DIR, dataset_name, maps_path, write_report
from benchmarks.suite.settings import (
    FULL_DATA,
    FULL_IMAGE_SIZE,
    MEASUREMENTS,
    MODELS,
    QUICK_DATA,
    QUICK_IMAGE_SIZE,
    QUICK_THROUGHPUT_SECONDS,
    THROUGHPUT_SECONDS,
    TRACKS,
    RunSettings,
    run_settings,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RECORDS_FILE = "results.jsonl"
ERROR_TAIL_BYTES = 8192


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line and fill in the defaults of full and quick mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--data", nargs="+", metavar="ROOT:CATEGORY", help="MVTec-layout datasets")
    parser.add_argument("--tracks", nargs="+", choices=TRACKS, help="default: both; --quick: pretrained")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--quick", action="store_true", help="64 px, one epoch each, hazelnut toy data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, help=f"default {FULL_IMAGE_SIZE}; --quick: {QUICK_IMAGE_SIZE}")
    parser.add_argument("--gallery-images", type=int, default=4, help="defect images in each heat-map gallery")
    parser.add_argument(
        "--layers",
        nargs="+",
        default=[],
        metavar="MODEL=L1,L2",
        help="replace a model's feature layers, e.g. cflow=blocks.2,blocks.4,blocks.6",
    )
    parser.add_argument("--resume", action="store_true", help="skip runs recorded as ok with the same settings")
    parser.add_argument("--report-only", action="store_true", help="regenerate the report from results.jsonl")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=[],
        metavar="DIR",
        help="first import the records and gallery maps of these output folders; a later folder's record wins",
    )
    args = parser.parse_args(argv)
    args.data = args.data or list(QUICK_DATA if args.quick else FULL_DATA)
    args.tracks = args.tracks or (["pretrained"] if args.quick else list(TRACKS))
    args.image_size = args.image_size or (QUICK_IMAGE_SIZE if args.quick else FULL_IMAGE_SIZE)
    args.layers = parse_layers(parser, args.layers)
    return args


def parse_layers(parser: argparse.ArgumentParser, specs: list[str]) -> dict[str, tuple[str, ...]]:
    """Turn ``MODEL=L1,L2`` specs into ``{model: (L1, L2)}``."""
    layers = {}
    for spec in specs:
        model, _, names = spec.partition("=")
        if model not in MODELS or not names:
            parser.error(f"--layers {spec!r}: expected MODEL=L1,L2 with MODEL one of {', '.join(MODELS)}")
        layers[model] = tuple(names.split(","))
    return layers


def gallery_images(root: Path, category: str, count: int) -> list[str]:
    """The first ``count`` defect test images, sorted by path, taking one per defect type in turn."""
    test_dir = root / category / "test"
    if not test_dir.is_dir():
        return []
    by_type = [
        sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS)
        for folder in sorted(test_dir.iterdir())
        if folder.is_dir() and folder.name != "good"
    ]
    selected = []
    for rank in range(count):
        selected += [images[rank] for images in by_type if rank < len(images)]
    return [str(path.resolve()) for path in selected[:count]]


def environment() -> dict[str, Any]:
    """Date, machine and code version of a run."""
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
        "torch": version("torch"),
        "anomalib": version("anomalib"),
    }


def base_record(model: str, dataset: str, track: str, settings: RunSettings) -> dict[str, Any]:
    """A failed record with empty measurements, completed by :func:`execute`."""
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


def stream_worker(command: list[str]) -> tuple[int, str]:
    """Run the worker, echoing its stderr (progress bars, tracebacks); return the exit status and stderr's tail."""
    tail = b""
    with subprocess.Popen(command, stderr=subprocess.PIPE) as process:
        while chunk := process.stderr.read1(4096):
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
            tail = (tail + chunk)[-ERROR_TAIL_BYTES:]
    return process.returncode, tail.decode(errors="replace")


def last_line(text: str) -> str:
    """The last non-empty line of ``text`` (progress-bar carriage returns count as line breaks)."""
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def execute(job: dict[str, Any], record: dict[str, Any], maps_file: Path) -> dict[str, Any]:
    """Run ``job`` in a worker process and return ``record`` completed with its measurements or its error."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "benchmarks.suite.worker", json.dumps(job), str(result_file), str(maps_file)]
        status, stderr_tail = stream_worker(command)
        if status == 0 and result_file.is_file():
            return {**record, **json.loads(result_file.read_text()), "status": "ok"}
    maps_file.unlink(missing_ok=True)
    signal = f" (killed by signal {-status})" if status < 0 else ""
    return {**record, "error": (last_line(stderr_tail) or f"worker exited with status {status}") + signal}


def load_records(path: Path) -> list[dict[str, Any]]:
    """Records of ``results.jsonl``, or none if it does not exist."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_key(record: dict[str, Any]) -> tuple[str, str, str]:
    """The (model, dataset, track) a record is about; ``results.jsonl`` holds one record per key."""
    return record["model"], record["dataset"], record["track"]


def save_record(path: Path, record: dict[str, Any]) -> None:
    """Replace the record of the same (model, dataset, track) in ``path``, or append it; write atomically."""
    key = record_key(record)
    records = load_records(path)
    keys = [record_key(r) for r in records]
    if key in keys:
        records[keys.index(key)] = record
    else:
        records.append(record)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)


def copy_maps(source_maps: Path, out_maps: Path) -> None:
    """Copy a record's gallery maps to ``out_maps``; a record without maps removes the stale ones there."""
    if source_maps.is_file():
        shutil.copyfile(source_maps, out_maps)
    else:
        out_maps.unlink(missing_ok=True)


def merge_outputs(sources: list[Path], out: Path) -> None:
    """Import every record of each source's ``results.jsonl`` into ``out`` with its gallery maps, in order.

    A record replaces ``out``'s record of the same (model, dataset, track), as a run does; so does its maps file, and
    a record without maps removes ``out``'s stale ones. Every source is checked before anything is imported.
    """
    loaded = []
    for source in sources:
        if source.resolve() == out.resolve():
            raise SystemExit(f"--merge {source}: that is the --out folder itself")
        records = load_records(source / RECORDS_FILE)
        if not records:
            raise SystemExit(f"--merge {source}: no records in {source / RECORDS_FILE}")
        loaded.append((source, records))
    (out / MAPS_DIR).mkdir(parents=True, exist_ok=True)
    for source, records in loaded:
        for record in records:
            copy_maps(maps_path(source, *record_key(record)), maps_path(out, *record_key(record)))
            save_record(out / RECORDS_FILE, record)
        print(f"merged {len(records)} records from {source}", flush=True)


def summary(record: dict[str, Any]) -> str:
    """One-line outcome of a run."""
    if record["status"] != "ok":
        return f"FAILED: {record['error']}"
    return (
        f"ok, train {record['train_seconds']:.0f} s, image AUROC {record['image_AUROC']:.3f}, "
        f"pixel AUROC {record['pixel_AUROC']:.3f}, PRO {record['pixel_AUPRO']:.3f}, "
        f"{record['images_per_second_batch1']:.1f} images/s (batch 1)"
    )


def plan(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """All (model, data spec, track) runs, dataset by dataset."""
    return [(model, spec, track) for spec in args.data for track in args.tracks for model in args.models]


def identical_run(
    records: list[dict[str, Any]], model: str, dataset: str, track: str, settings: RunSettings
) -> dict[str, Any] | None:
    """A successful record of ``model`` on ``dataset`` with exactly ``settings``: of ``track`` if any, else of another.

    Settings that are the same in both tracks mean the same training: Reverse Distillation trains without weights in
    both, so its second track reuses the first's record and maps instead of training again (21 min on Magnetic Tile).
    """
    wanted = settings.to_dict()
    matches = [
        r for r in records if (r["model"], r["dataset"], r["status"], r["settings"]) == (model, dataset, "ok", wanted)
    ]
    return next((r for r in matches if r["track"] == track), matches[0] if matches else None)


def reuse_run(earlier: dict[str, Any], track: str, out: Path) -> dict[str, Any]:
    """``earlier``'s record and gallery maps, filed under ``track`` as well."""
    record = {**earlier, "track": track}
    copy_maps(maps_path(out, *record_key(earlier)), maps_path(out, *record_key(record)))
    return record


def run_suite(args: argparse.Namespace) -> None:
    """Run every planned job in turn, saving each record as soon as it is done."""
    runs = plan(args)
    (args.out / MAPS_DIR).mkdir(parents=True, exist_ok=True)
    finished = load_records(args.out / RECORDS_FILE) if args.resume else []
    for index, (model, spec, track) in enumerate(runs, start=1):
        root, _, category = spec.rpartition(":")
        dataset = dataset_name(root, category)
        settings = run_settings(model, track, args.image_size, args.seed, args.quick, args.layers.get(model))
        prefix = f"[{index}/{len(runs)}] {model} {dataset} {track}"
        earlier = identical_run(finished, model, dataset, track, settings)
        if earlier is not None and earlier["track"] == track:
            print(f"{prefix}: already done, skipped (--resume)", flush=True)
            continue
        if earlier is not None:
            record = reuse_run(earlier, track, args.out)
            save_record(args.out / RECORDS_FILE, record)
            print(f"{prefix}: the same settings as its {earlier['track']} run, record and maps reused", flush=True)
            continue
        job = {
            "model": model,
            "root": root,
            "category": category,
            "settings": settings.to_dict(),
            "gallery": gallery_images(Path(root), category, args.gallery_images),
            "throughput_seconds": QUICK_THROUGHPUT_SECONDS if args.quick else THROUGHPUT_SECONDS,
        }
        print(f"{prefix} ({settings.epochs} epochs, {settings.image_size} px) ...", flush=True)
        start = time.perf_counter()
        record = execute(job, base_record(model, dataset, track, settings), maps_path(args.out, model, dataset, track))
        save_record(args.out / RECORDS_FILE, record)
        finished.append(record)
        print(f"{prefix} {summary(record)} ({time.perf_counter() - start:.0f} s in all)", flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run the suite (unless ``--report-only``) and regenerate the report."""
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    merge_outputs(args.merge, args.out)
    if not args.report_only:
        run_suite(args)
    records = load_records(args.out / RECORDS_FILE)
    if not records:
        raise SystemExit(f"no records in {args.out / RECORDS_FILE}")
    for path in write_report(records, args.out):
        print(f"wrote {path}")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
