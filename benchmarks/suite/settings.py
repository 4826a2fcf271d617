"""What each benchmark run trains: models, tracks, epoch budgets, backbones and layers.

Every budget and layer choice of the suite is in this module; ``benchmarks/README.md`` explains them.
"""

import inspect
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from anomalib_dhkd import Dhkd
from anomalib_dhkd.models.dhkd.presets import OFFLINE_BACKBONE, offline_preset
from anomalib_dhkd.models.dhkd.torch_model import encoder_layer_names

MODELS = ("dhkd", "padim", "patchcore", "cflow", "reverse_distillation")
TRACKS = ("pretrained", "none")
# Test metrics of anomalib_dhkd.evaluation.default_evaluator kept in the records (pixel_AUPRO is PRO).
METRICS = ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_AUPRO")
MEASUREMENTS = (
    *METRICS,
    "train_seconds",
    "images_per_second_batch1",
    "images_per_second_batch16",
    "peak_rss_mb",
    "params_total",
    "params_trainable",
)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
FULL_DATA = (f"{SHARED_DATA / 'mvtec_ad'}:bottle", f"{SHARED_DATA / 'magnetic_tile'}:magnetic_tile")
QUICK_DATA = (f"{SHARED_DATA / 'hazelnut_toy'}:hazelnut",)
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

# Training epochs per model on 2 CPU cores. PaDiM and PatchCore fit statistics in one pass (anomalib fixes 1).
# DHKD: 8 epochs, 4 training the teacher alone, then 4 training the student alone against the frozen teacher
# (freeze_teacher). Magnetic Tile with ImageNet weights, PRO after 2 + 4, 3 + 4 and 4 + 4 epochs: 0.714, 0.732 and
# 0.739, against 0.754 after 1 + 5 epochs of joint training, which took 774 s against 563 s (benchmarks/README.md).
# CFlow takes an optimiser step per 64 feature vectors (about 18,000 steps per epoch on bottle at 256 px);
# measured 26 s per batch of 8, about 12 min per epoch on bottle. Reverse Distillation (resnet18, no weights):
# 1.7 s per batch, under 1 min per epoch.
EPOCHS = {"dhkd": 8, "padim": 1, "patchcore": 1, "cflow": 1, "reverse_distillation": 10}
DHKD_WARMUP_EPOCHS = 4
# --quick: one epoch each; DHKD then trains teacher and student jointly from the start (no warm-up).
QUICK_EPOCHS = dict.fromkeys(MODELS, 1)
QUICK_DHKD_WARMUP_EPOCHS = 0

BACKBONES = dict.fromkeys(MODELS, OFFLINE_BACKBONE) | {"reverse_distillation": "resnet18"}
# Feature layers: the tf_efficientnet_lite0 equivalents (same stride) of anomalib's defaults, among the layers timm
# exposes (blocks.0/1/2/4/6 at strides 2/4/8/16/32). CFlow's default layer2-4 would be blocks.2/4/6; blocks.6 has
# 320 channels and made CFlow's training twice as slow, so CFlow uses blocks.1/2/4. DHKD's layers are its offline
# preset's, which depend on the track (anomalib_dhkd.models.dhkd.presets.offline_preset).
LAYERS = {
    "padim": ("blocks.1", "blocks.2", "blocks.4"),  # anomalib: layer1-3
    "patchcore": ("blocks.2", "blocks.4"),  # anomalib: layer2-3
    "cflow": ("blocks.1", "blocks.2", "blocks.4"),  # anomalib: layer2-4
    "reverse_distillation": ("layer1", "layer2", "layer3"),  # anomalib's default; RD decodes ResNets only
}
# anomalib's ReverseDistillation builds its decoder for ResNets only, and no ResNet weights are available offline:
# it runs with pre_trained=False in both tracks.
WITHOUT_WEIGHTS = frozenset({"reverse_distillation"})
# PaDiM keeps a random subset of the 176 channels; anomalib has no default for tf_efficientnet_lite0 and keeps 100
# for resnet18. PatchCore keeps a 1 % coreset instead of anomalib's default 10 %: its greedy coreset selection
# (one pass over all ~214,000 patch features of bottle per selected feature) ran at 6 selections/s on the 2 cores,
# about 60 min for the 21,400 of 10 % on bottle and several hours on Magnetic Tile. The PatchCore paper also
# evaluates a 1 % coreset (PatchCore-1%).
MODEL_OPTIONS: dict[str, dict[str, Any]] = {"padim": {"n_features": 100}, "patchcore": {"coreset_sampling_ratio": 0.01}}


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
        """Every layer the model's encoder extracts: ``layers``, then DHKD's extra ``score_layers`` (any depth)."""
        return tuple(encoder_layer_names(self.layers, self.options.get("score_layers") or ()))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunSettings":
        """Inverse of :meth:`to_dict`."""
        return cls(**{**values, "layers": tuple(values["layers"])})


def dhkd_hyperparameters() -> dict[str, int | float | bool | None]:
    """DHKD's plain defaults (loss weights, noise levels, flow sizes, scoring), stated in each DHKD record.

    A record then says exactly which model it measured, and ``--resume`` re-runs DHKD records trained under other
    defaults. ``None`` means the model picks by encoder (see :class:`Dhkd`). Settings the suite sets itself (epochs,
    warm-up, teacher freezing, backbone, layers, score layers, weights, pre- and post-processing, evaluator,
    visualizer) are left out.
    """
    run_level = {"max_epochs", "teacher_warmup_epochs", "freeze_teacher", "pre_trained", "score_layers"}
    components = {"pre_processor", "post_processor", "evaluator", "visualizer"}
    parameters = inspect.signature(Dhkd).parameters.values()
    plain = {int, float, bool, type(None)}
    excluded = run_level | components
    return {p.name: p.default for p in parameters if type(p.default) in plain and p.name not in excluded}


def run_settings(
    model: str,
    track: str,
    image_size: int,
    seed: int,
    quick: bool,
    layers: tuple[str, ...] | None = None,
) -> RunSettings:
    """Settings of ``model`` in ``track``; ``layers`` replaces the model's default layers."""
    options = dict(MODEL_OPTIONS.get(model, {}))
    default_layers = LAYERS.get(model)
    if model == "dhkd":
        preset = offline_preset(pre_trained=track == "pretrained")
        default_layers = preset.pop("layers")
        options |= dhkd_hyperparameters() | {name: list(v) if isinstance(v, tuple) else v for name, v in preset.items()}
        options["teacher_warmup_epochs"] = QUICK_DHKD_WARMUP_EPOCHS if quick else DHKD_WARMUP_EPOCHS
        options["freeze_teacher"] = not quick  # a frozen teacher needs a warm-up to train in
    return RunSettings(
        epochs=(QUICK_EPOCHS if quick else EPOCHS)[model],
        image_size=image_size,
        seed=seed,
        backbone=BACKBONES[model],
        layers=layers or default_layers,
        pre_trained=track == "pretrained" and model not in WITHOUT_WEIGHTS,
        batch_size=BATCH_SIZE,
        eval_batch_size=EVAL_BATCH_SIZE,
        options=options,
    )
