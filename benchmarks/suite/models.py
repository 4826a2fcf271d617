"""The models the suite knows, each with its budget, layers and options: the family's and anomalib's peers.

A family model (:data:`anomalib_dhkd.models.MODELS`) is described by its offline preset; its settings' options
state every constructor default, with dataclass settings as JSON objects, so a record says exactly which model it
measured and ``--resume`` re-runs records trained under other defaults. Every model builds its own pre-processor
from its backbone's normalisation (:func:`~anomalib_dhkd.components.encoders.backbone_pre_processor`).
"""

import dataclasses
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import skimage.data
from anomalib.models import Cflow, Draem, Glass, Padim, Patchcore, ReverseDistillation, Stfpm, Supersimplenet
from anomalib.models.components import AnomalibModule, TimmFeatureExtractor
from PIL import Image

from anomalib_dhkd.components.encoders import backbone_pre_processor
from anomalib_dhkd.models import OFFLINE_BACKBONE, AsymmetricTs, Bikd, Dhkd, Dmdd, offline_preset
from anomalib_dhkd.models.evaluation import default_evaluator
from benchmarks.suite.backbones import fx_backbone

COMPONENT_ARGUMENTS = frozenset({"pre_processor", "post_processor", "evaluator", "visualizer"})
# Settings the suite sets itself, left out of a family model's stated defaults.
RUN_ARGUMENTS = frozenset({"backbone", "layers", "pre_trained", "max_epochs"}) | COMPONENT_ARGUMENTS
TRACKS = ("pretrained", "none")
TEXTURE_PHOTOS = ("brick", "grass", "gravel")


@dataclass(frozen=True)
class SuiteModel:
    """How the suite trains one model configuration (one row of the report).

    Args:
        model_class: The anomalib model class.
        epochs: Training epochs of the full suite (``--quick``: 1).
        layers: Feature layers, or a function of the track (``pretrained``/``none``) for the family's presets;
            ``()`` for a model without a feature extractor.
        backbone: timm backbone; ``None`` for a model without one.
        options: Further constructor arguments, or a function of (track, quick) returning them.
        tracks: Tracks the configuration runs in.
        without_weights: Trains without ImageNet weights in every track (marked in the report).
        fx_backbone: Pass the backbone as an ``nn.Module`` (:func:`~benchmarks.suite.backbones.fx_backbone`), which
            reaches layers timm does not expose (``blocks.3`` of ``tf_efficientnet_lite0``).
        prepare: Adjusts the built model to the run's settings (e.g. a peer's random teacher without weights); called
            with the model, whether it has ImageNet weights and the image size.
        needs_gpu: Runs in the full suite only with ``--accelerator gpu`` (``--quick`` runs it anywhere).
        min_image_size: Smallest image size the model runs at; ``--quick`` runs it at this size if its own is smaller.

    """

    model_class: type[AnomalibModule]
    epochs: int
    layers: tuple[str, ...] | Callable[[str], tuple[str, ...]]
    backbone: str | None = OFFLINE_BACKBONE
    options: dict[str, Any] | Callable[[str, bool], dict[str, Any]] = field(default_factory=dict)
    tracks: tuple[str, ...] = TRACKS
    without_weights: bool = False
    fx_backbone: bool = False
    prepare: Callable[[AnomalibModule, bool, int], None] | None = None
    needs_gpu: bool = False
    min_image_size: int = 0

    def default_layers(self, track: str) -> tuple[str, ...]:
        """Feature layers in ``track``."""
        return tuple(self.layers(track) if callable(self.layers) else self.layers)

    def default_options(self, track: str, quick: bool) -> dict[str, Any]:
        """JSON-ready constructor options in ``track``."""
        return dict(self.options(track, quick) if callable(self.options) else self.options)

    def build(
        self, layers: tuple[str, ...], pre_trained: bool, epochs: int, image_size: int, options: dict[str, Any]
    ) -> AnomalibModule:
        """Build the model with its own pre-processor and the family's evaluator; JSON options become dataclasses.

        A model with a backbone normalises with that backbone's statistics; one without uses its own pre-processor.
        """
        size = (image_size, image_size)
        parameters = inspect.signature(self.model_class).parameters
        arguments: dict[str, Any] = {
            "pre_processor": self.model_class.configure_pre_processor(image_size=size)
            if self.backbone is None
            else backbone_pre_processor(self.backbone, size),
            "evaluator": default_evaluator(),
            "visualizer": False,
        }
        if self.backbone is not None:
            backbone = fx_backbone(self.backbone, pre_trained, image_size) if self.fx_backbone else self.backbone
            arguments |= {"backbone": backbone, "layers": list(layers)}
        if "pre_trained" in parameters:
            arguments["pre_trained"] = pre_trained
        if "max_epochs" in parameters:
            arguments["max_epochs"] = epochs
        if "input_shape" in parameters:  # GLASS shapes its layers for the input size
            arguments["input_shape"] = size
        arguments |= {name: _from_json(self.model_class, name, value) for name, value in options.items()}
        model = self.model_class(**arguments)
        if self.prepare is not None:
            self.prepare(model, pre_trained, image_size)
        return model


def random_stfpm_teacher(model: AnomalibModule, pre_trained: bool, _image_size: int) -> None:
    """Without weights, STFPM's teacher is a random frozen encoder (anomalib's STFPM always loads ImageNet weights)."""
    if pre_trained:
        return
    teacher = model.model.teacher_model
    model.model.teacher_model = TimmFeatureExtractor(
        backbone=teacher.backbone, layers=list(teacher.layers), pre_trained=False
    ).eval()


def own_fx_stfpm_student(model: AnomalibModule, _pre_trained: bool, image_size: int) -> None:
    """Give STFPM on an FX backbone a student of its own, randomly initialised.

    anomalib builds STFPM's teacher and student from the backbone it is given; an ``nn.Module`` backbone (the FX path
    to ``blocks.3``) would make both extract from the same module, so that training the student moved the teacher's
    weights too. The teacher (ImageNet or random weights, by track) is kept.
    """
    layers = list(model.model.teacher_model.layers)
    student = fx_backbone(OFFLINE_BACKBONE, pre_trained=False, image_size=image_size).train()
    student.requires_grad_(True)
    model.model.student_model = TimmFeatureExtractor(student, layers, pre_trained=False, requires_grad=True)


def offline_textures() -> str:
    """A folder of scikit-image's texture photographs, DRAEM's anomaly source where DTD cannot be downloaded."""
    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "anomalib_dhkd" / "textures"
    if not all((folder / f"{name}.png").is_file() for name in TEXTURE_PHOTOS):
        folder.mkdir(parents=True, exist_ok=True)
        for name in TEXTURE_PHOTOS:
            Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(folder / f"{name}.png")
    return str(folder)


def family_options(model_class: type[AnomalibModule], **settings: Any) -> dict[str, Any]:
    """Every plain and dataclass default of a family model, ``settings`` (its preset, its schedule) applied."""
    parameters = inspect.signature(model_class).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.name not in RUN_ARGUMENTS}
    return {name: _to_json(value) for name, value in {**defaults, **settings}.items()}


def dhkd_options(track: str, quick: bool) -> dict[str, Any]:
    """DHKD's offline preset of ``track`` and its two-stage schedule.

    ``--quick`` trains one epoch: the teacher and student then train together from the start.
    """
    preset = offline_preset(pre_trained=track == "pretrained")
    preset.pop("layers")
    schedule = {"teacher_warmup_epochs": 0 if quick else DHKD_WARMUP_EPOCHS, "freeze_teacher": not quick}
    return family_options(Dhkd, **preset, **schedule)


def dmdd_options(track: str, quick: bool) -> dict[str, Any]:
    """Dmdd's defaults with its schedule spelled out: 20 epochs of student and head, then 5 of the head alone.

    ``--quick`` trains one epoch, in which student and head train together.
    """
    return family_options(Dmdd, head_epochs=0 if quick else DMDD_HEAD_EPOCHS)


def _to_json(value: Any) -> Any:
    """Dataclasses as dictionaries, tuples as lists."""
    if dataclasses.is_dataclass(value):
        return {name: _to_json(item) for name, item in dataclasses.asdict(value).items()}
    if isinstance(value, tuple | list):
        return [_to_json(item) for item in value]
    return value


def _from_json(model_class: type[AnomalibModule], name: str, value: Any) -> Any:
    """``value`` as the dataclass that ``model_class`` takes for ``name``, if it takes one."""
    annotation = inspect.signature(model_class).parameters[name].annotation
    return annotation(**value) if dataclasses.is_dataclass(annotation) and isinstance(value, dict) else value


# DHKD: 8 epochs, 4 training the teacher alone, then 4 training the student against the frozen teacher.
DHKD_WARMUP_EPOCHS = 4
# Dmdd: 25 epochs, the last 5 training its segmentation head alone on the finished student's maps (Dmdd.head_epochs).
DMDD_HEAD_EPOCHS = 5

# Training epochs on 2 CPU cores. PaDiM and PatchCore fit statistics in one pass (anomalib fixes 1). CFlow takes an
# optimiser step per 64 feature vectors (about 12 min per epoch on bottle at 256 px). Feature layers are the
# tf_efficientnet_lite0 equivalents (same stride) of anomalib's defaults among the layers timm exposes (blocks.0/1/2/4/6
# at strides 2/4/8/16/32); CFlow's layer2-4 would be blocks.2/4/6, whose 320 channels doubled its training time. The
# "_b3" configurations reach the real blocks.3 (80 channels, stride 16) through the FX path, which PaDiM and PatchCore
# use at their best. PaDiM keeps 100 random channels (anomalib's choice for resnet18); PatchCore a 1 % coreset (greedy
# selection of 10 % took about 60 min on bottle on the 2 cores; the PatchCore paper evaluates 1 % too). anomalib's
# ReverseDistillation decodes ResNets only and no ResNet weights are available offline, so it runs without weights.
# STFPM trains its student for 20 epochs (117 s on the 28 images of the hazelnut toy set); the family's AsymmetricTs,
# Bikd and Dmdd, whose students are trained the same way, as many, on the same layers (Dmdd then trains its segmentation
# head alone for 5 more epochs). DRAEM has no pretrained encoder; its anomaly source is scikit-image's texture
# photographs (DTD cannot be downloaded). It needs a GPU: on the 2 CPU cores one run of 4 epochs on the hazelnut toy set
# at 256 px had not finished after 20 minutes (8.4 GB). SuperSimpleNet (layer2/layer3 of its default: blocks.2/blocks.4)
# and GLASS (the same layers, the texture photographs as anomaly source) need a GPU too: one epoch on the hazelnut toy
# set at 256 px took 36 s and 192 s on the 2 CPU cores (beside another run), so 20 epochs on bottle would take hours;
# SuperSimpleNet fails at 64 px, so --quick runs it at 128 px. The no-pretraining track runs the family and the peers
# that can run without weights.
SUITE_MODELS: dict[str, SuiteModel] = {
    "dhkd": SuiteModel(
        Dhkd,
        epochs=8,
        layers=lambda track: tuple(offline_preset(pre_trained=track == "pretrained")["layers"]),
        options=dhkd_options,
    ),
    "asymmetric_ts": SuiteModel(
        AsymmetricTs,
        epochs=20,
        layers=("blocks.1", "blocks.2", "blocks.4"),
        options=lambda track, quick: family_options(AsymmetricTs),
    ),
    "bikd": SuiteModel(
        Bikd,
        epochs=20,
        layers=("blocks.1", "blocks.2", "blocks.4"),
        options=lambda track, quick: family_options(Bikd),
    ),
    "dmdd": SuiteModel(
        Dmdd,
        epochs=25,
        layers=("blocks.1", "blocks.2", "blocks.4"),
        options=dmdd_options,
    ),
    "padim": SuiteModel(Padim, epochs=1, layers=("blocks.1", "blocks.2", "blocks.4"), options={"n_features": 100}),
    "padim_b3": SuiteModel(
        Padim, epochs=1, layers=("blocks.1", "blocks.2", "blocks.3"), options={"n_features": 100}, fx_backbone=True
    ),
    "patchcore": SuiteModel(
        Patchcore, epochs=1, layers=("blocks.2", "blocks.4"), options={"coreset_sampling_ratio": 0.01}
    ),
    "patchcore_b3": SuiteModel(
        Patchcore,
        epochs=1,
        layers=("blocks.2", "blocks.3"),
        options={"coreset_sampling_ratio": 0.01},
        fx_backbone=True,
    ),
    "stfpm": SuiteModel(Stfpm, epochs=20, layers=("blocks.1", "blocks.2", "blocks.4"), prepare=random_stfpm_teacher),
    "stfpm_b3": SuiteModel(
        Stfpm, epochs=20, layers=("blocks.1", "blocks.2", "blocks.3"), fx_backbone=True, prepare=own_fx_stfpm_student
    ),
    "cflow": SuiteModel(Cflow, epochs=1, layers=("blocks.1", "blocks.2", "blocks.4"), tracks=("pretrained",)),
    "cflow_b3": SuiteModel(
        Cflow, epochs=1, layers=("blocks.1", "blocks.2", "blocks.3"), tracks=("pretrained",), fx_backbone=True
    ),
    "reverse_distillation": SuiteModel(
        ReverseDistillation,
        epochs=10,
        layers=("layer1", "layer2", "layer3"),
        backbone="resnet18",
        tracks=("pretrained",),
        without_weights=True,
    ),
    "supersimplenet": SuiteModel(
        Supersimplenet,
        epochs=20,
        layers=("blocks.2", "blocks.4"),
        tracks=("pretrained",),
        needs_gpu=True,
        min_image_size=128,
    ),
    "glass": SuiteModel(
        Glass,
        epochs=20,
        layers=("blocks.2", "blocks.4"),
        options=lambda track, quick: {"anomaly_source_path": offline_textures()},
        tracks=("pretrained",),
        needs_gpu=True,
    ),
    "draem": SuiteModel(
        Draem,
        epochs=4,
        layers=(),
        backbone=None,
        options=lambda track, quick: {"dtd_dir": offline_textures()},
        tracks=("pretrained",),
        without_weights=True,
        needs_gpu=True,
    ),
}
