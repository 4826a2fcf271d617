"""Long-run numerical stability and memory of DHKD training.

python -m benchmarks.stability --data ../shared/data/hazelnut_toy:hazelnut --epochs 100 [--no-pretrained]

Trains through anomalib's ``Engine`` for ``--epochs`` epochs at batch 8 and records, per epoch, the range of every
loss term, whether any teacher log-determinant or latent was non-finite, and the process RSS; then tests and checks
the anomaly maps for NaN/Inf. Prints and appends one JSON line to ``--out``: a run that produced a non-finite value
stops with ``FloatingPointError`` (see ``Dhkd.training_step``) and is recorded as failed.
"""

import argparse
import json
import math
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from anomalib_dhkd.models import offline_dhkd


def resident_mb() -> int:
    """Current resident memory of this process in MiB (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20


class StabilityMonitor(Callback):
    """Collect per-epoch loss ranges, non-finite teacher outputs and resident memory."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []
        self.losses: dict[str, list[float]] = {}
        self.nonfinite_teacher_outputs = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        """Record this step's logged loss terms."""
        del pl_module, args
        for name, value in trainer.callback_metrics.items():
            if name.startswith("train_") and not name.endswith("_epoch"):
                self.losses.setdefault(name, []).append(float(value))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Check the teacher on one training batch and close the epoch's record."""
        batch = next(iter(trainer.train_dataloader))
        with torch.no_grad():
            latents, log_dets, _ = pl_module.model(batch.image.to(pl_module.device))
        if not all(torch.isfinite(t).all() for t in [*latents, *log_dets]):
            self.nonfinite_teacher_outputs += 1
        self.epochs.append(
            {
                "epoch": trainer.current_epoch,
                "rss_mb": resident_mb(),
                **{name: [round(min(v), 4), round(max(v), 4)] for name, v in self.losses.items()},
            }
        )
        self.losses = {}


def main() -> None:
    """Train, test and record one long run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/hazelnut_toy:hazelnut", help="MVTec-layout ROOT:CATEGORY")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--no-pretrained", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("results/stability.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    seed_everything(0, workers=True)
    root, _, category = args.data.rpartition(":")
    model = offline_dhkd(args.image_size, pre_trained=not args.no_pretrained, max_epochs=args.epochs)
    datamodule = MVTecAD(root=root, category=category, train_batch_size=8, eval_batch_size=8, num_workers=0)
    monitor = StabilityMonitor()
    engine = Engine(
        default_root_dir=args.out.parent / "stability_runs",
        logger=False,
        callbacks=[monitor],
        check_val_every_n_epoch=args.epochs,
    )
    record = {"dataset": args.data, "epochs": args.epochs, "image_size": args.image_size, "batch_size": 8}
    record["pre_trained"] = not args.no_pretrained
    start = time.perf_counter()
    try:
        engine.fit(model=model, datamodule=datamodule)
        predictions = engine.predict(model=model, dataloaders=datamodule.test_dataloader())
        maps_finite = all(bool(torch.isfinite(batch.anomaly_map).all()) for batch in predictions)
        record |= {"status": "ok", "anomaly_maps_finite": maps_finite}
        record |= engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    except FloatingPointError as error:
        record |= {"status": "failed", "error": str(error)}
    record["train_and_test_seconds"] = round(time.perf_counter() - start)
    record["nonfinite_teacher_epochs"] = monitor.nonfinite_teacher_outputs
    rss = [epoch["rss_mb"] for epoch in monitor.epochs]
    record["rss_mb_epoch_1_10_last"] = [rss[0], rss[min(9, len(rss) - 1)], rss[-1]] if rss else []
    record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    losses = [e for e in monitor.epochs if "train_total" in e]
    record["total_loss_first_last_epoch"] = [losses[0]["train_total"], losses[-1]["train_total"]] if losses else []
    record = {k: round(v, 4) if isinstance(v, float) and math.isfinite(v) else v for k, v in record.items()}
    print(json.dumps(record))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as file:
        file.write(json.dumps(record) + "\n")
    (args.out.parent / f"stability_epochs_{'none' if args.no_pretrained else 'imagenet'}.json").write_text(
        json.dumps(monitor.epochs)
    )


if __name__ == "__main__":
    main()
