"""Benchmark suite: the family's models and anomalib's peers on every shared dataset, seeds and tracks; one report.

python -m benchmarks.run [--models dhkd padim ...] [--datasets bottle magnetic_tile ...] [--tracks pretrained none]
                         [--seeds 0 1 2] [--budget-minutes 50] [--force] [--report-only] [--quick]
                         [--data ROOT:CATEGORY ...] [--records DIR] [--out DIR] [--report-dir DIR]
                         [--ablations [--variants NAME ...]]

Datasets are discovered under ``../shared/data`` (every ``<dataset>/<category>/train/good``); ``--datasets`` keeps
those whose name contains one of the given words, ``--data`` names other MVTec-layout folders. Each (model
configuration, dataset, track, seed) trains and tests through anomalib's ``Engine`` in a fresh subprocess
(:mod:`benchmarks.suite.worker`) and writes one record (:mod:`benchmarks.suite.records`); a failed run is recorded
as failed. A run whose record is ok with the same settings is skipped (``--force`` runs it again), so the grid is
filled in chunks: ``--budget-minutes`` starts no new run once that much time has passed. The report
(``RESULTS.md``, ``figures/chart_<metric>.png``, ``figures/gallery_<dataset>_<track>.png``) is regenerated from all
records: ``benchmarks/RESULTS.md`` for the full suite, ``OUT/RESULTS.md`` with ``--quick``.

``--ablations`` runs, instead of the configurations, the variants of the family's models
(:mod:`benchmarks.suite.ablations`; ``--variants`` picks some), with records in ``benchmarks/ablations`` and the
report ``benchmarks/ABLATIONS.md``.
"""

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from itertools import product
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks.suite.ablations import (
    ABLATION_RECORDS_DIR,
    ABLATION_REPORT,
    ABLATIONS,
    VARIANT_SEPARATOR,
    ablation_settings,
    variant_name,
    write_ablation_report,
)
from benchmarks.suite.models import SUITE_MODELS
from benchmarks.suite.records import (
    RECORDS_DIR,
    REPO_ROOT,
    base_record,
    checkpoint_path,
    finished_run,
    load_records,
    maps_path,
    same_settings,
    save_record,
)
from benchmarks.suite.report import update_readme, write_report
from benchmarks.suite.settings import (
    FULL_IMAGE_SIZE,
    MODELS,
    QUICK_DATA,
    QUICK_IMAGE_SIZE,
    QUICK_THROUGHPUT_SECONDS,
    SEEDS,
    THROUGHPUT_SECONDS,
    TRACKS,
    RunSettings,
    dataset_name,
    discover_datasets,
    run_settings,
)

ERROR_TAIL_BYTES = 8192


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line and fill in the defaults of full and quick mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--datasets", nargs="+", metavar="NAME", help="shared datasets whose name contains NAME")
    parser.add_argument("--data", nargs="+", default=[], metavar="ROOT:CATEGORY", help="other MVTec-layout data")
    parser.add_argument("--tracks", nargs="+", choices=TRACKS, help="default: both; --quick: pretrained")
    parser.add_argument("--seeds", nargs="+", type=int, help=f"default {' '.join(map(str, SEEDS))}; --quick: 0")
    parser.add_argument("--quick", action="store_true", help="64 px, one epoch each, hazelnut toy data, seed 0")
    parser.add_argument("--image-size", type=int, help=f"default {FULL_IMAGE_SIZE}; --quick: {QUICK_IMAGE_SIZE}")
    parser.add_argument("--records", type=Path, help=f"default {RECORDS_DIR.relative_to(REPO_ROOT)}; --quick: OUT")
    parser.add_argument(
        "--out", type=Path, default=Path("results/bench"), help="maps of the hardest images (and --quick report)"
    )
    parser.add_argument("--report-dir", type=Path, help="default benchmarks/; --quick: OUT")
    parser.add_argument(
        "--hardest-images", type=int, default=4, help="hardest test images per run in the galleries (defects, 1 normal)"
    )
    parser.add_argument(
        "--layers",
        nargs="+",
        default=[],
        metavar="MODEL=L1,L2",
        help="replace a model's feature layers, e.g. cflow=blocks.2,blocks.4,blocks.6",
    )
    parser.add_argument("--force", action="store_true", help="run again even where an ok record has the settings")
    parser.add_argument("--budget-minutes", type=float, help="start no new run after this many minutes")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator of every run, e.g. gpu")
    parser.add_argument(
        "--keep-checkpoints", type=Path, metavar="DIR", help="save each trained model under DIR (benchmarks.rescore)"
    )
    parser.add_argument("--report-only", action="store_true", help="regenerate the report from the records")
    parser.add_argument("--ablations", action="store_true", help="run the family's ablation variants instead")
    variants = sorted({name for model in ABLATIONS.values() for name in model})
    parser.add_argument("--variants", nargs="+", choices=variants, help="with --ablations: only these variants")
    args = parser.parse_args(argv)
    if args.ablations and (args.quick or args.layers):
        parser.error("--ablations runs the full suite's settings: no --quick or --layers")
    if args.variants and not args.ablations:
        parser.error("--variants needs --ablations")
    args.specs = select_datasets(parser, args)
    args.tracks = args.tracks or (["pretrained"] if args.quick else list(TRACKS))
    args.seeds = args.seeds or ([0] if args.quick else list(SEEDS))
    args.image_size = args.image_size or (QUICK_IMAGE_SIZE if args.quick else FULL_IMAGE_SIZE)
    args.records = args.records or (
        args.out / "records" if args.quick else ABLATION_RECORDS_DIR if args.ablations else RECORDS_DIR
    )
    args.report_dir = args.report_dir or (args.out if args.quick else REPO_ROOT / "benchmarks")
    args.layers = parse_layers(parser, args.layers)
    return args


def select_datasets(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """``ROOT:CATEGORY`` specs to run: the discovered shared datasets (filtered by ``--datasets``) and ``--data``."""
    if args.quick and not args.datasets and not args.data:
        return list(QUICK_DATA)
    shared = discover_datasets()
    if args.datasets:
        shared = [spec for spec in shared if any(word in dataset_name(spec) for word in args.datasets)]
        if not shared:
            parser.error(f"--datasets {' '.join(args.datasets)}: no shared dataset matches")
    elif args.data:
        shared = []
    return [*shared, *args.data]


def parse_layers(parser: argparse.ArgumentParser, specs: list[str]) -> dict[str, tuple[str, ...]]:
    """Turn ``MODEL=L1,L2`` specs into ``{model: (L1, L2)}``."""
    layers = {}
    for spec in specs:
        model, _, names = spec.partition("=")
        if model not in MODELS or not names:
            parser.error(f"--layers {spec!r}: expected MODEL=L1,L2 with MODEL one of {', '.join(MODELS)}")
        layers[model] = tuple(names.split(","))
    return layers


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
    return {**record, "error": failure_message(status, stderr_tail)}


def failure_message(status: int, stderr_tail: str) -> str:
    """What a failed worker's record says: its last output line, and the signal that killed it if one did."""
    message = last_line(stderr_tail) or f"worker exited with status {status}"
    if status == -signal.SIGKILL:
        return f"{message} (killed by signal 9: on Linux most often the out-of-memory killer, see dmesg)"
    if status < 0:
        return f"{message} (killed by signal {-status})"
    return message


def summary(record: dict[str, Any]) -> str:
    """One-line outcome of a run."""
    if record["status"] != "ok":
        return f"FAILED: {record['error']}"
    return (
        f"ok, train {record['train_seconds']:.0f} s, image AUROC {record['image_AUROC']:.3f}, "
        f"pixel AUROC {record['pixel_AUROC']:.3f}, PRO {record['pixel_AUPRO']:.3f}, "
        f"{record['images_per_second_batch1']:.1f} images/s (batch 1)"
    )


class Run(NamedTuple):
    """One planned run: the configuration it records (a model or an ablation variant), the model it builds, where."""

    configuration: str
    model: str
    spec: str
    track: str
    settings: RunSettings


def plan(args: argparse.Namespace) -> list[Run]:
    """All runs, dataset by dataset, skipping tracks a model does not run in.

    A model that needs a GPU is left out of a full CPU run, with a notice. With ``--ablations`` the runs are the
    variants of the chosen models that change something in the track.
    """
    on_cpu = args.accelerator == "cpu" and not args.quick
    skipped = [model for model in args.models if on_cpu and SUITE_MODELS[model].needs_gpu]
    if skipped:
        print(f"not run on the CPU (needs --accelerator gpu): {', '.join(skipped)}", flush=True)
    models = [m for m in args.models if m not in skipped and (not args.ablations or m in ABLATIONS)]
    runs = []
    for spec, track, seed, model in product(args.specs, args.tracks, args.seeds, models):
        if track not in SUITE_MODELS[model].tracks:
            continue
        if not args.ablations:
            settings = run_settings(model, track, args.image_size, seed, args.quick, args.layers.get(model))
            runs.append(Run(model, model, spec, track, settings))
            continue
        for variant in ABLATIONS[model]:
            settings = ablation_settings(model, variant, track, args.image_size, seed)
            if settings is not None and (not args.variants or variant in args.variants):
                runs.append(Run(variant_name(model, variant), model, spec, track, settings))
    return runs


def run_suite(args: argparse.Namespace) -> None:
    """Run every planned job without an ok record of the same settings, saving each record as soon as it is done."""
    runs = plan(args)
    start = time.perf_counter()
    for index, run in enumerate(runs, start=1):
        root, _, category = run.spec.rpartition(":")
        dataset = dataset_name(run.spec)
        record = base_record(run.configuration, dataset, run.track, run.settings)
        prefix = f"[{index}/{len(runs)}] {run.configuration} {dataset} {run.track} seed {run.settings.seed}"
        defaults = run_settings(run.model, run.track, args.image_size, run.settings.seed, args.quick).options
        if not args.force and finished_run(args.records, record, defaults) is not None:
            print(f"{prefix}: already done, skipped", flush=True)
            continue
        minutes = (time.perf_counter() - start) / 60
        if args.budget_minutes is not None and minutes >= args.budget_minutes:
            print(
                f"budget of {args.budget_minutes:g} min used ({minutes:.0f} min): stopping before {prefix}", flush=True
            )
            return
        job = {
            "model": run.model,
            "root": root,
            "category": category,
            "settings": run.settings.to_dict(),
            "hardest_images": args.hardest_images,
            "throughput_seconds": QUICK_THROUGHPUT_SECONDS if args.quick else THROUGHPUT_SECONDS,
            "accelerator": args.accelerator,
        }
        if args.keep_checkpoints is not None:
            job["checkpoint"] = str(checkpoint_path(args.keep_checkpoints, record))
        print(f"{prefix} ({run.settings.epochs} epochs, {run.settings.image_size} px) ...", flush=True)
        run_start = time.perf_counter()
        maps_path(args.out, record).parent.mkdir(parents=True, exist_ok=True)
        record = execute(job, record, maps_path(args.out, record))
        record["wall_seconds"] = round(time.perf_counter() - run_start, 1)  # training, testing, speed, in all
        save_record(args.records, record)
        print(f"{prefix} {summary(record)} ({record['wall_seconds']:.0f} s in all)", flush=True)


def current_records(records: list[dict[str, Any]], quick: bool) -> list[dict[str, Any]]:
    """The records measured with today's settings of their configuration; the others are counted on stdout.

    A record measured before a default changed (or of a configuration or variant that is gone) would mix an older
    model into the means; the suite reruns it (its settings differ), and until then the report leaves it out.
    """
    kept = []
    for record in records:
        model, _, variant = record["model"].partition(VARIANT_SEPARATOR)
        size, seed = record["settings"]["image_size"], record["settings"]["seed"]
        settings = defaults = None
        if model in SUITE_MODELS and not variant:  # layers as the run chose them (--layers)
            layers = tuple(record["settings"]["layers"])
            settings = run_settings(model, record["track"], size, seed, quick, layers)
            defaults = settings.options
        elif variant in ABLATIONS.get(model, {}):
            settings = ablation_settings(model, variant, record["track"], size, seed)
            defaults = run_settings(model, record["track"], size, seed, quick=False).options
        if settings is not None and same_settings(record["settings"], settings.to_dict(), defaults, model):
            kept.append(record)
    if len(kept) < len(records):
        print(f"{len(records) - len(kept)} record(s) measured with other settings than today's left out of the report")
    return kept


def main(argv: list[str] | None = None) -> None:
    """Run the suite (unless ``--report-only``) and regenerate the report."""
    args = parse_args(argv)
    start = time.perf_counter()
    if not args.report_only:
        run_suite(args)
    records = load_records(args.records)
    if not records:
        raise SystemExit(f"no records in {args.records}")
    records = current_records(records, args.quick)
    if args.ablations:
        suite_records = current_records(load_records(RECORDS_DIR), quick=False)
        print(f"wrote {write_ablation_report(records, suite_records, ABLATION_REPORT)}")
        return
    written = write_report(records, args.report_dir, maps_dir=args.out)
    if args.report_dir.resolve() == (REPO_ROOT / "benchmarks").resolve():
        written.append(update_readme(REPO_ROOT / "README.md", records))
    for path in filter(None, written):
        print(f"wrote {path}")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
