"""Train and test DHKD on the shared real datasets; print and append one JSON line per run.

python -m benchmarks.dhkd_shared_data --data ../shared/data/mvtec_ad:bottle --epochs 10 [--no-pretrained]
"""

import argparse
import json
import os
import resource
import subprocess
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_dhkd.models import Dhkd, offline_dhkd
from anomalib_dhkd.weights import install_efficientnet_lite0


def images_per_second(model: Dhkd, image_size: int, batch_size: int = 1, repeats: int = 20) -> float:
    """Torch eager CPU throughput of the full forward (pre-processing to post-processing), after warm-up."""
    images = torch.rand(batch_size, 3, image_size, image_size)
    model.eval()
    with torch.inference_mode():
        for _ in range(3):
            model(images)
        start = time.perf_counter()
        for _ in range(repeats):
            model(images)
    return batch_size * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="ROOT:CATEGORY")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--no-pretrained", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/dhkd_shared_data.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    seed_everything(args.seed, workers=True)
    root, _, category = args.data.rpartition(":")
    if not args.no_pretrained:
        install_efficientnet_lite0()
    model = offline_dhkd(
        args.image_size,
        pre_trained=not args.no_pretrained,
        max_epochs=args.epochs,
        teacher_warmup_epochs=args.warmup,
    )
    datamodule = MVTecAD(root=root, category=category, train_batch_size=8, eval_batch_size=8, num_workers=1)
    # Validation (which fits the post-processor's normalisation) only after the last epoch, to save CPU time.
    engine = Engine(
        default_root_dir=args.out.parent / "runs",
        logger=False,
        enable_progress_bar=False,
        check_val_every_n_epoch=args.epochs,
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    record = {
        "model": "dhkd",
        "dataset": f"{Path(root).name}/{category}",
        "pre_trained": not args.no_pretrained,
        "epochs": args.epochs,
        "image_size": args.image_size,
        "seed": args.seed,
        **{key: round(float(value), 4) for key, value in metrics.items()},
        "train_seconds": round(train_seconds, 1),
        "images_per_second_batch1": round(images_per_second(model, args.image_size), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch_threads": torch.get_num_threads(),
        "commit": commit.stdout.strip(),
    }
    print(json.dumps(record))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as file:
        file.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
