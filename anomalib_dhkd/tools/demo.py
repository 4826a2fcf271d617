"""Main job: train, test and visualise DHKD offline on an embedded dataset.

``python -m anomalib_dhkd.demo`` generates a texture dataset with synthetic defects from scikit-image's brick
photograph (or uses ``--data ROOT:CATEGORY`` for any MVTec-layout folder), installs the offline EfficientNet-Lite0
ImageNet weights, trains DHKD through anomalib's ``Engine``, prints image AUROC, pixel AUROC and PRO, and writes
a heat-map figure (image, ground truth, anomaly map per row) to ``--out``.
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import seed_everything

from anomalib_dhkd.models import offline_dhkd
from anomalib_dhkd.tools.data import generate_texture_dataset
from anomalib_dhkd.tools.weights import install_efficientnet_lite0

REPORTED_METRICS = {"image_AUROC": "image AUROC", "pixel_AUROC": "pixel AUROC", "pixel_AUPRO": "PRO"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments without the program name. Defaults to ``sys.argv[1:]``.

    Returns:
        The options, with the defaults of the measured demo (8 epochs, 256 px, seed 0).

    Example:
        >>> parse_args(["--epochs", "2"]).epochs
        2

    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="MVTec-layout dataset as ROOT:CATEGORY (default: embedded brick textures)")
    parser.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (teacher warm-up included)")
    parser.add_argument("--image-size", type=int, default=256, help="model input size in pixels")
    parser.add_argument("--num-figures", type=int, default=6, help="test images in the heat-map figure")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def resolve_dataset(spec: str | None, out: Path, seed: int) -> tuple[Path, str]:
    """Return ``(root, category)``, generating the embedded dataset when no ``--data`` is given.

    Args:
        spec: ``ROOT:CATEGORY`` of an MVTec-layout dataset, or ``None`` for the embedded brick textures.
        out: Output folder; the embedded dataset is generated in ``out/dataset``.
        seed: Seed of the embedded dataset.

    Returns:
        The dataset root and category, as ``MVTecAD`` takes them.

    Raises:
        SystemExit: If ``spec`` is not ``ROOT:CATEGORY`` with normal images in ``ROOT/CATEGORY/train/good``.

    """
    if spec is None:
        root = out / "dataset"
        generate_texture_dataset(root, "brick", seed=seed)
        return root, "brick"
    root, _, category = spec.rpartition(":")
    if not root or not (Path(root) / category / "train" / "good").is_dir():
        msg = f"--data {spec!r}: expected ROOT:CATEGORY with ROOT/CATEGORY/train/good/ holding normal images."
        raise SystemExit(msg)
    return Path(root), category


def select_samples(predictions: list, count: int) -> list:
    """Pick ``count`` test samples, cycling over the defect types (folder names) so each type is shown.

    Args:
        predictions: Batches returned by ``Engine.predict``.
        count: Number of samples to pick.

    Returns:
        Up to ``count`` items, defect types in name order and ``good`` last in each round.

    """
    by_type: dict[str, list] = {}
    for item in (item for batch in predictions for item in batch):
        by_type.setdefault(Path(item.image_path).parent.name, []).append(item)
    defect_types = sorted(by_type, key=lambda name: (name == "good", name))
    selected: list = []
    while len(selected) < count and any(by_type.values()):
        for name in defect_types:
            if by_type[name] and len(selected) < count:
                selected.append(by_type[name].pop(0))
    return selected


def save_heat_maps(predictions: list, out: Path, count: int) -> Path:
    """Write one figure with a row per test image: input, ground truth and the anomaly-map overlay.

    Args:
        predictions: Batches returned by ``Engine.predict``.
        out: Output folder.
        count: Number of test images in the figure (see :func:`select_samples`).

    Returns:
        Path of the figure, ``out/heat_maps.png``.

    """
    samples = select_samples(predictions, count)
    out.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(len(samples), 3, figsize=(8, 2.7 * len(samples)), squeeze=False)
    for row, item in zip(axes, samples, strict=True):
        image = plt.imread(item.image_path)
        anomaly_map = item.anomaly_map.squeeze().cpu()
        mask = item.gt_mask.squeeze().cpu() if item.gt_mask is not None else torch.zeros_like(anomaly_map)
        extent = (0, anomaly_map.shape[1], anomaly_map.shape[0], 0)
        row[0].imshow(image, cmap="gray")
        row[0].set_title(f"{Path(item.image_path).parent.name}/{Path(item.image_path).name}", fontsize=9)
        row[1].imshow(mask, cmap="gray", vmin=0, vmax=1)
        row[1].set_title("ground truth", fontsize=9)
        row[2].imshow(image, cmap="gray", extent=extent)
        row[2].imshow(anomaly_map, cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=extent)
        row[2].set_title(f"anomaly map, score {float(item.pred_score):.2f}", fontsize=9)
        for axis in row:
            axis.axis("off")
    figure.tight_layout()
    path = out / "heat_maps.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the demo and return the test metrics.

    Args:
        argv: Arguments without the program name. Defaults to ``sys.argv[1:]``.

    Returns:
        Image AUROC, pixel AUROC and PRO of the test set, and the training time in seconds.

    Example:
        >>> metrics = main(["--epochs", "2", "--out", "results/demo"])  # doctest: +SKIP
        >>> sorted(metrics)  # doctest: +SKIP
        ['PRO', 'image AUROC', 'pixel AUROC', 'training seconds']

    """
    args = parse_args(argv)
    seed_everything(args.seed, workers=True)
    root, category = resolve_dataset(args.data, args.out, args.seed)
    install_efficientnet_lite0()
    # Half the epochs train the teacher, the other half the student alone; a single epoch trains both together.
    warmup = args.epochs // 2
    model = offline_dhkd(
        args.image_size, max_epochs=args.epochs, teacher_warmup_epochs=warmup, freeze_teacher=warmup > 0
    )
    datamodule = MVTecAD(root=root, category=category, train_batch_size=8, eval_batch_size=8, num_workers=2)
    engine = Engine(default_root_dir=args.out / "runs", logger=False)
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    predictions = engine.predict(model=model, dataloaders=datamodule.test_dataloader())
    figure = save_heat_maps(predictions, args.out, args.num_figures)
    summary = {name: float(metrics[key]) for key, name in REPORTED_METRICS.items()}
    summary["training seconds"] = round(train_seconds, 1)
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(f"\nDHKD on {root / category} ({args.epochs} epochs, {args.image_size} px)")
    for name, value in summary.items():
        print(f"  {name:>16}: {value:.3f}" if name != "training seconds" else f"  {name:>16}: {value:.0f}")
    print(f"  heat maps: {figure}")
    return summary


if __name__ == "__main__":
    main()
