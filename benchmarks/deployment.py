"""Deployment benchmark: export parity, INT8 accuracy and CPU latency of DHKD, PaDiM and CFlow.

python -m benchmarks.deployment --data ../shared/data/mvtec_ad:bottle --models dhkd padim cflow --out results/deploy

Per model: train through anomalib's ``Engine`` (or load ``--ckpt MODEL=PATH``, a checkpoint of the suite's model
settings), export with ``Engine.export`` to ONNX and OpenVINO: FP32, FP16 weights, INT8 post-training quantisation
(``INT8_PTQ``: NNCF, calibrated by anomalib on the datamodule's validation images) and INT8 weights (``INT8``). Then
every test image runs through torch eager and each exported model (OpenVINO with inference precision hint f32), on
the same ``[0, 1]`` images at the export size. A format that fails to export or compile is reported with its
error. Reported:

- parity against torch: largest absolute difference of the normalised scores and anomaly maps, share of equal
  image labels and of equal mask pixels;
- accuracy per runtime: image AUROC and pixel AUROC, so INT8's change is measured on the same test set;
- latency: median milliseconds per image at batch 1 over ``--repeats`` runs after warm-up, fixed thread count.

Writes ``deployment.json`` and ``deployment.md`` to ``--out``.
"""

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import CompressionType, ExportType
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule
from lightning.pytorch import seed_everything
from torch.nn import functional
from torchmetrics.functional.classification import binary_auroc

from anomalib_dhkd.deployment import load_exported, resize_to_input
from benchmarks.measure import median_seconds
from benchmarks.suite.settings import run_settings
from benchmarks.suite.worker import build_model

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]
OUTPUTS = ("pred_score", "pred_label", "anomaly_map", "pred_mask")


def load_test_images(datamodule: MVTecAD, image_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All test images in ``[0, 1]`` resized to the export size, with their labels and masks."""
    datamodule.setup("test")
    images, labels, masks = [], [], []
    for item in datamodule.test_data:
        images.append(resize_to_input(item.image[None], (image_size, image_size)))
        labels.append(int(item.gt_label))
        mask = item.gt_mask if item.gt_mask is not None else torch.zeros(item.image.shape[-2:])
        masks.append(functional.interpolate(mask[None, None].float(), size=image_size, mode="nearest")[0] > 0.5)
    return torch.cat(images), torch.tensor(labels), torch.stack(masks)


def torch_runner(model: AnomalibModule) -> Runner:
    """Eager torch forward of the whole model (pre-processing, network, post-processing), as exported."""
    model.eval()

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            output = model(torch.from_numpy(images))
        return {name: getattr(output, name).numpy() for name in OUTPUTS}

    return run


def predict_all(runner: Runner, images: torch.Tensor) -> dict[str, np.ndarray]:
    """Outputs for every image, one at a time (batch 1, as deployed)."""
    outputs = [runner(image[None].numpy()) for image in images]
    return {
        name: np.concatenate([np.asarray(o[name]).reshape(1, *np.shape(o[name])[1:]) for o in outputs])
        for name in outputs[0]
    }


def latency_ms(runner: Runner, image: torch.Tensor, repeats: int, warmup: int = 5) -> float:
    """Median wall-clock milliseconds of one batch-1 inference after ``warmup`` runs."""
    batch = image[None].numpy()
    return 1000 * median_seconds(lambda: runner(batch), min_seconds=0, min_calls=repeats, warmup=warmup)


def accuracy(outputs: dict[str, np.ndarray], labels: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """Image AUROC and pixel AUROC of one runtime's outputs."""
    scores = torch.from_numpy(outputs["pred_score"]).float().reshape(-1)
    maps = torch.from_numpy(outputs["anomaly_map"]).float().reshape(-1)
    return {
        "image_AUROC": round(float(binary_auroc(scores, labels)), 4),
        "pixel_AUROC": round(float(binary_auroc(maps, masks.reshape(-1).long())), 4),
    }


def parity(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """Differences to the torch outputs: largest absolute score and map differences, label and mask agreement."""
    return {
        "max_abs_score_diff": float(
            np.abs(outputs["pred_score"].reshape(-1) - reference["pred_score"].reshape(-1)).max()
        ),
        "max_abs_map_diff": float(np.abs(outputs["anomaly_map"] - reference["anomaly_map"]).max()),
        "label_agreement": float(
            (outputs["pred_label"].reshape(-1).astype(bool) == reference["pred_label"].reshape(-1).astype(bool)).mean()
        ),
        "mask_agreement": float((outputs["pred_mask"].astype(bool) == reference["pred_mask"].astype(bool)).mean()),
    }


def export(engine: Engine, model: AnomalibModule, root: Path, image_size: int, **options: object) -> Path:
    """Export one model with anomalib's ``Engine.export`` at a fixed square input size."""
    return engine.export(model, export_root=root, input_size=(image_size, image_size), **options)


def exported_runners(
    engine: Engine, model: AnomalibModule, datamodule: MVTecAD, root: Path, args: argparse.Namespace
) -> dict[str, Runner | str]:
    """Runners of every exported format; a format whose export or compilation fails maps to its error line."""
    exports = {
        "onnxruntime": {"export_type": ExportType.ONNX},
        "openvino_fp32": {"export_type": ExportType.OPENVINO},
        "openvino_fp16_weights": {"export_type": ExportType.OPENVINO, "compression_type": CompressionType.FP16},
        "openvino_int8_ptq": {
            "export_type": ExportType.OPENVINO,
            "compression_type": CompressionType.INT8_PTQ,
            "datamodule": datamodule,
        },
        "openvino_int8_weights": {"export_type": ExportType.OPENVINO, "compression_type": CompressionType.INT8},
    }
    runners: dict[str, Runner | str] = {}
    for runtime, options in exports.items():
        try:
            path = export(engine, model, root / runtime, args.image_size, **options)
            runners[runtime] = load_exported(path, threads=args.threads)
        except Exception as error:  # a failed format is a result to report, not a crash
            runners[runtime] = f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"
        if runtime == "openvino_fp32" and not isinstance(runners[runtime], str):
            # OpenVINO's default inference precision on CPUs with bfloat16 support (anomalib's OpenVINOInferencer).
            runners["openvino_fp32_bf16"] = load_exported(path, threads=args.threads, precision="bf16")
    return runners


def benchmark_model(name: str, args: argparse.Namespace, datamodule: MVTecAD) -> dict:
    """Train (or load), export and measure one model; returns its record."""
    seed_everything(args.seed, workers=True)
    root = args.out / name
    settings = run_settings(name, "pretrained", args.image_size, args.seed, quick=False)
    engine = Engine(default_root_dir=root / "runs", logger=False, enable_progress_bar=False, max_epochs=settings.epochs)
    model = build_model(name, settings)
    if name in args.checkpoints:
        # Into the suite's model (its evaluator and pre-processor), not one rebuilt from the checkpoint's
        # hyper-parameters, which do not record them.
        checkpoint = torch.load(args.checkpoints[name], map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["state_dict"])
    else:
        engine.fit(model=model, datamodule=datamodule)
    runners = {"torch": torch_runner(model), **exported_runners(engine, model, datamodule, root, args)}
    images, labels, masks = load_test_images(datamodule, args.image_size)
    record = {"model": name, "dataset": args.data, "test_images": len(images), "runtimes": {}}
    reference = predict_all(runners["torch"], images)
    for runtime, runner in runners.items():
        if isinstance(runner, str):
            record["runtimes"][runtime] = {"error": runner}
        else:
            outputs = reference if runtime == "torch" else predict_all(runner, images)
            record["runtimes"][runtime] = {
                **accuracy(outputs, labels, masks),
                **({} if runtime == "torch" else parity(outputs, reference)),
                "latency_ms": round(latency_ms(runner, images[0], args.repeats), 2),
            }
        print(name, runtime, record["runtimes"][runtime], flush=True)
    return record


def markdown_row(model: str, runtime: str, values: dict) -> str:
    """One table row; parity columns say "reference" for torch and the error for a failed format."""
    if "error" in values:
        return f"| {model} | {runtime} | failed: {values['error']} |||||||"

    def parity_cell(key: str, spec: str) -> str:
        return format(values[key], spec) if key in values else "reference"

    return (
        f"| {model} | {runtime} | {values['image_AUROC']:.4f} | {values['pixel_AUROC']:.4f} | "
        f"{parity_cell('max_abs_score_diff', '.1e')} | {parity_cell('max_abs_map_diff', '.1e')} | "
        f"{parity_cell('label_agreement', '.3f')} | {parity_cell('mask_agreement', '.5f')} | "
        f"{values['latency_ms']:.1f} |"
    )


def markdown(records: list[dict], header: str) -> str:
    """Parity, accuracy and latency table."""
    lines = [
        header,
        "",
        "| model | runtime | image AUROC | pixel AUROC | max score diff | max map diff | labels equal | mask pixels "
        "equal | latency ms (b=1) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [markdown_row(r["model"], runtime, v) for r in records for runtime, v in r["runtimes"].items()]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mvtec_ad:bottle", help="MVTec-layout ROOT:CATEGORY")
    parser.add_argument("--models", nargs="+", default=["dhkd", "padim", "cflow"])
    parser.add_argument("--ckpt", nargs="*", default=[], metavar="MODEL=PATH", help="skip training these models")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every runtime")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per latency figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/deploy"))
    args = parser.parse_args(argv)
    args.checkpoints = dict(item.split("=", 1) for item in args.ckpt)
    return args


def main(argv: list[str] | None = None) -> None:
    """Measure every model and write ``deployment.json`` and ``deployment.md``."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    root, _, category = args.data.rpartition(":")
    datamodule = MVTecAD(root=root, category=category, train_batch_size=8, eval_batch_size=8, num_workers=0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    header = (
        f"Deployment benchmark, {time.strftime('%Y-%m-%d')}, commit {commit.stdout.strip()}, {platform.machine()} "
        f"({os.cpu_count()} CPUs), {args.threads} threads, {args.data}, {args.image_size} px, seed {args.seed}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for name in args.models:
        records.append(benchmark_model(name, args, datamodule))
        # Written after every model, so that a later model's failure loses nothing measured before it.
        (args.out / "deployment.json").write_text(json.dumps({"header": header, "records": records}, indent=2))
        (args.out / "deployment.md").write_text(markdown(records, header))
    print(markdown(records, header))


if __name__ == "__main__":
    main()
