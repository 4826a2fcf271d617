"""Measure the inference throughput of finished records again, on an untrained copy of each record's model.

python -m benchmarks.retime --models asymmetric_ts [--ablations] [--records DIR]

A run's images/s depend on its architecture and the machine, not on its trained weights. After a change that makes a
model faster without changing its outputs (AsymmetricTs' EMAN teacher folding its BatchNorms for inference, tested
to give the same features), its records are timed again here instead of training every run again: each record keeps
its metrics; its four throughput fields are replaced and ``throughput_environment`` says when and at which commit
they were measured. The measurement is the suite's own (:func:`~benchmarks.suite.worker.throughput`: interleaved
rounds beside the bare encoder, medians, 2 threads). Run it alone on the machine.
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from benchmarks.suite.ablations import ABLATION_RECORDS_DIR, VARIANT_SEPARATOR
from benchmarks.suite.models import SUITE_MODELS
from benchmarks.suite.records import RECORDS_DIR, environment, load_records, save_record
from benchmarks.suite.settings import THROUGHPUT_SECONDS, RunSettings
from benchmarks.suite.worker import TORCH_THREADS, build_model, throughput


def retime(records_dir: Path, models: list[str], seconds: float) -> int:
    """Time every ``ok`` record of ``models`` (ablation variants included) under ``records_dir`` again.

    Returns:
        How many records were updated.

    """
    torch.set_num_threads(TORCH_THREADS)
    updated = 0
    for record in load_records(records_dir):
        model = record["model"].split(VARIANT_SEPARATOR)[0]
        if model not in models or record["status"] != "ok":
            continue
        settings = RunSettings.from_dict(record["settings"])
        before = record["images_per_second_batch1"], record["images_per_second_batch16"]
        record.update(throughput(build_model(model, settings), settings.image_size, seconds))
        record["throughput_environment"] = environment()
        save_record(records_dir, record)
        updated += 1
        after = record["images_per_second_batch1"], record["images_per_second_batch16"]
        print(f"{record['model']} {record['dataset']} {record['track']} s{settings.seed}: images/s {before} -> {after}")
    return updated


def main(argv: list[str] | None = None) -> None:
    """Time the chosen models' records again; regenerate the reports with ``benchmarks.run --report-only``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, choices=sorted(SUITE_MODELS))
    parser.add_argument("--ablations", action="store_true", help="the ablation records instead of the suite's")
    parser.add_argument("--records", type=Path, help="default: benchmarks/records (benchmarks/ablations)")
    parser.add_argument("--seconds", type=float, default=THROUGHPUT_SECONDS, help="timed seconds per batch size")
    args = parser.parse_args(argv)
    records_dir = args.records or (ABLATION_RECORDS_DIR if args.ablations else RECORDS_DIR)
    updated = retime(records_dir, args.models, args.seconds)
    if not updated:
        raise SystemExit(f"no ok record of {', '.join(args.models)} under {records_dir}")
    print(f"{updated} records timed again; now run python -m benchmarks.run --report-only")


if __name__ == "__main__":
    main()
