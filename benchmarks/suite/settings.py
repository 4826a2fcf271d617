"""What each benchmark run trains: models, tracks, epoch budgets, backbones and layers.

Every budget and layer choice of the suite is in this module; ``benchmarks/README.md`` explains them.
"""

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from anomalib_dhkd.components.encoders import encoder_layer_names
from benchmarks.suite.models import SUITE_MODELS

MODELS = tuple(SUITE_MODELS)
TRACKS = ("pretrained", "none")
# Test metrics of anomalib_dhkd.models.evaluation.default_evaluator kept in the records (pixel_AUPRO is PRO).
METRICS = ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO")
MEASUREMENTS = (
    *METRICS,
    "train_seconds",
    "train_seconds_per_epoch_per_100_images",
    "images_per_second_batch1",
    "images_per_second_batch16",
    "encoder_images_per_second_batch1",
    "encoder_images_per_second_batch16",
    "peak_rss_mb",
    "device",
    "params_total",
    "params_trainable",
)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
QUICK_DATA = (f"{SHARED_DATA / 'hazelnut_toy'}:hazelnut",)
SEEDS = (0, 1, 2)
FULL_IMAGE_SIZE = 256
# --quick: all five models run at 64 px (Reverse Distillation's bottleneck then works on 2 x 2 maps).
QUICK_IMAGE_SIZE = 64
BATCH_SIZE = 8
# Test batches of anomalib's default size for every model. CFlow normalises likelihoods over the test batch, so its
# scores depend on the batch: on the quick set (23 test images) batch 8 gave image AUROC 0.029, batch 32 gave 1.000.
EVAL_BATCH_SIZE = 32
# Seconds of timed inference per batch size (at least 3 calls, after one warm-up call; the median call counts).
THROUGHPUT_SECONDS = 3.0
QUICK_THROUGHPUT_SECONDS = 1.0


def discover_datasets(root: Path = SHARED_DATA) -> list[str]:
    """``ROOT:CATEGORY`` of every MVTec-layout category under ``root`` (``<dataset>/<category>/train/good``), sorted."""
    if not root.is_dir():
        return []
    categories = sorted(path.parent.parent for path in root.glob("*/*/train/good") if path.is_dir())
    return [f"{category.parent}:{category.name}" for category in categories]


def dataset_name(spec: str) -> str:
    """``<dataset folder>/<category>`` of a ``ROOT:CATEGORY`` spec, e.g. ``mvtec_ad/bottle``."""
    root, _, category = spec.rpartition(":")
    return f"{Path(root).name}/{category}"


@dataclass(frozen=True)
class RunSettings:
    """Settings of one run, stored in its record."""

    epochs: int
    image_size: int
    seed: int
    backbone: str
    layers: tuple[str, ...]
    pre_trained: bool
    batch_size: int
    eval_batch_size: int
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {**asdict(self), "layers": list(self.layers)}

    @property
    def encoder_layers(self) -> tuple[str, ...]:
        """Every layer the model's encoder extracts: ``layers``, then a family model's extra score layers."""
        score_layers = (self.options.get("scoring") or {}).get("score_layers") or ()
        return tuple(encoder_layer_names(self.layers, score_layers))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunSettings":
        """Inverse of :meth:`to_dict`."""
        return cls(**{**values, "layers": tuple(values["layers"])})


def run_settings(
    model: str,
    track: str,
    image_size: int,
    seed: int,
    quick: bool,
    layers: tuple[str, ...] | None = None,
) -> RunSettings:
    """Settings of ``model`` in ``track``; ``layers`` replaces the model's default layers."""
    suite_model = SUITE_MODELS[model]
    return RunSettings(
        epochs=1 if quick else suite_model.epochs,
        image_size=max(image_size, suite_model.min_image_size) if quick else image_size,
        seed=seed,
        backbone=suite_model.backbone,
        layers=layers or suite_model.default_layers(track),
        pre_trained=track == "pretrained" and not suite_model.without_weights,
        batch_size=BATCH_SIZE,
        eval_batch_size=EVAL_BATCH_SIZE,
        options=suite_model.default_options(track, quick),
    )
