"""The models the suite knows, each with its budget, layers and options: the family's and anomalib's peers.

A family model (:data:`anomalib_dhkd.models.MODELS`) is described by its offline preset; its settings' options
state every constructor default, with dataclass settings as JSON objects, so a record says exactly which model it
measured and ``--resume`` re-runs records trained under other defaults. Every model builds its own pre-processor
from its backbone's normalisation (:func:`~anomalib_dhkd.components.encoders.backbone_pre_processor`).
"""

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from anomalib.models import Cflow, Padim, Patchcore, ReverseDistillation
from anomalib.models.components import AnomalibModule

from anomalib_dhkd.components.encoders import backbone_pre_processor
from anomalib_dhkd.models import OFFLINE_BACKBONE, Dhkd, offline_preset
from anomalib_dhkd.models.evaluation import default_evaluator

COMPONENT_ARGUMENTS = frozenset({"pre_processor", "post_processor", "evaluator", "visualizer"})
# Settings the suite sets itself, left out of a family model's stated defaults.
RUN_ARGUMENTS = frozenset({"backbone", "layers", "pre_trained", "max_epochs"}) | COMPONENT_ARGUMENTS


@dataclass(frozen=True)
class SuiteModel:
    """How the suite trains one model.

    Args:
        model_class: The anomalib model class.
        epochs: Training epochs of the full suite (``--quick``: 1).
        layers: Feature layers, or a function of the track (``pretrained``/``none``) for the family's presets.
        backbone: timm backbone.
        options: Further constructor arguments, or a function of (track, quick) returning them.
        without_weights: Trains without ImageNet weights in both tracks.

    """

    model_class: type[AnomalibModule]
    epochs: int
    layers: tuple[str, ...] | Callable[[str], tuple[str, ...]]
    backbone: str = OFFLINE_BACKBONE
    options: dict[str, Any] | Callable[[str, bool], dict[str, Any]] = field(default_factory=dict)
    without_weights: bool = False

    def default_layers(self, track: str) -> tuple[str, ...]:
        """Feature layers in ``track``."""
        return tuple(self.layers(track) if callable(self.layers) else self.layers)

    def default_options(self, track: str, quick: bool) -> dict[str, Any]:
        """JSON-ready constructor options in ``track``."""
        return dict(self.options(track, quick) if callable(self.options) else self.options)

    def build(
        self, layers: tuple[str, ...], pre_trained: bool, epochs: int, image_size: int, options: dict[str, Any]
    ) -> AnomalibModule:
        """Build the model with its own pre-processor and the family's evaluator; JSON options become dataclasses."""
        common = {
            "pre_processor": backbone_pre_processor(self.backbone, (image_size, image_size)),
            "evaluator": default_evaluator(),
            "visualizer": False,
        }
        if "max_epochs" in inspect.signature(self.model_class).parameters:
            common["max_epochs"] = epochs
        arguments = {name: _from_json(self.model_class, name, value) for name, value in options.items()}
        return self.model_class(
            backbone=self.backbone, layers=list(layers), pre_trained=pre_trained, **arguments, **common
        )


def family_options(model_class: type[AnomalibModule], track: str, quick: bool, warmup_epochs: int) -> dict[str, Any]:
    """Every plain and dataclass default of a family model, with its offline preset of ``track`` applied.

    ``--quick`` trains one epoch: the teacher and student then train together from the start.
    """
    parameters = inspect.signature(model_class).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.name not in RUN_ARGUMENTS}
    preset = offline_preset(pre_trained=track == "pretrained")
    preset.pop("layers")
    options = {name: _to_json(value) for name, value in {**defaults, **preset}.items()}
    return options | {"teacher_warmup_epochs": 0 if quick else warmup_epochs, "freeze_teacher": not quick}


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

# Training epochs on 2 CPU cores. PaDiM and PatchCore fit statistics in one pass (anomalib fixes 1). CFlow takes an
# optimiser step per 64 feature vectors (about 12 min per epoch on bottle at 256 px). Feature layers are the
# tf_efficientnet_lite0 equivalents (same stride) of anomalib's defaults among the layers timm exposes (blocks.0/1/2/4/6
# at strides 2/4/8/16/32); CFlow's layer2-4 would be blocks.2/4/6, whose 320 channels doubled its training time.
# PaDiM keeps 100 random channels (anomalib's choice for resnet18); PatchCore a 1 % coreset (greedy selection of 10 %
# took about 60 min on bottle on the 2 cores; the PatchCore paper evaluates 1 % too). anomalib's ReverseDistillation
# decodes ResNets only and no ResNet weights are available offline, so it runs without weights in both tracks.
SUITE_MODELS: dict[str, SuiteModel] = {
    "dhkd": SuiteModel(
        Dhkd,
        epochs=8,
        layers=lambda track: tuple(offline_preset(pre_trained=track == "pretrained")["layers"]),
        options=lambda track, quick: family_options(Dhkd, track, quick, DHKD_WARMUP_EPOCHS),
    ),
    "padim": SuiteModel(Padim, epochs=1, layers=("blocks.1", "blocks.2", "blocks.4"), options={"n_features": 100}),
    "patchcore": SuiteModel(
        Patchcore, epochs=1, layers=("blocks.2", "blocks.4"), options={"coreset_sampling_ratio": 0.01}
    ),
    "cflow": SuiteModel(Cflow, epochs=1, layers=("blocks.1", "blocks.2", "blocks.4")),
    "reverse_distillation": SuiteModel(
        ReverseDistillation,
        epochs=10,
        layers=("layer1", "layer2", "layer3"),
        backbone="resnet18",
        without_weights=True,
    ),
}
