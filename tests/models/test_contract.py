"""The contract every model of the family keeps, parametrised over :data:`FAMILY`: add a model there to cover it.

Each entry builds a tiny model (random encoder, 64 px) that trains in seconds, and gives the ``anomalib train``
arguments that build the same model from the command line.
"""

import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import InferenceBatch, MVTecAD
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib.models.components import AnomalibModule, TimmFeatureExtractor

from anomalib_dhkd.deployment.runtime import load_exported
from anomalib_dhkd.models import MODELS
from tests.conftest import TINY_IMAGE_SIZE, anomalib_cli, tiny_asymmetric_ts, tiny_bikd, tiny_dhkd, tiny_dmdd

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class FamilyModel:
    """A model of the family as the contract tests build it."""

    build: Callable[..., AnomalibModule]
    cli_arguments: tuple[str, ...]
    one_epoch: tuple[tuple[str, object], ...] = ()  # further arguments of a one-epoch run (schedules)

    def cli_one_epoch(self) -> list[str]:
        """The ``anomalib train`` arguments of a one-epoch run."""
        return ["--model.max_epochs=1", *(f"--model.{name}={str(value).lower()}" for name, value in self.one_epoch)]


FAMILY = {
    "Dhkd": FamilyModel(
        tiny_dhkd,
        (
            "--model.backbone=tf_efficientnet_lite0",
            "--model.pre_trained=false",
            "--model.teacher.blocks=2",
            "--model.teacher.condition_channels=8",
        ),
        one_epoch=(("teacher_warmup_epochs", 0), ("freeze_teacher", False)),
    ),
    "Bikd": FamilyModel(tiny_bikd, ("--model.backbone=tf_efficientnet_lite0", "--model.pre_trained=false")),
    "Dmdd": FamilyModel(tiny_dmdd, ("--model.backbone=tf_efficientnet_lite0", "--model.pre_trained=false")),
    "AsymmetricTs": FamilyModel(
        tiny_asymmetric_ts,
        ("--model.backbone=tf_efficientnet_lite0", "--model.pre_trained=false"),
    ),
}


def test_every_registered_model_is_covered() -> None:
    assert sorted(FAMILY) == sorted(model.__name__ for model in MODELS)


@pytest.fixture(scope="module", params=sorted(FAMILY))
def trained(
    request: pytest.FixtureRequest, texture_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Engine, AnomalibModule, MVTecAD]:
    """``(name, engine, model, datamodule)``: each family model fitted for one epoch on the synthetic textures."""
    torch.manual_seed(0)
    engine = Engine(default_root_dir=tmp_path_factory.mktemp("contract"), logger=False, enable_progress_bar=False)
    family_model = FAMILY[request.param]
    model = family_model.build(max_epochs=1, **dict(family_model.one_epoch))
    data = MVTecAD(root=texture_root, category="brick", train_batch_size=8, eval_batch_size=8, num_workers=0)
    engine.fit(model=model, datamodule=data)
    return request.param, engine, model, data


def test_eval_output_is_an_inference_batch_with_map_and_score(trained: tuple) -> None:
    _, _, model, _ = trained
    images = torch.rand(3, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with torch.no_grad():
        output = model.model.eval()(images)
    assert isinstance(output, InferenceBatch)
    assert output.anomaly_map.shape == (3, 1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert output.pred_score.shape == (3,)
    assert torch.isfinite(output.anomaly_map).all()
    assert torch.isfinite(output.pred_score).all()


def test_checkpoint_reload_gives_identical_scores(trained: tuple, tmp_path: Path) -> None:
    _, engine, model, _ = trained
    checkpoint = tmp_path / "model.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    reloaded = type(model).load_from_checkpoint(checkpoint)  # weights_only=True, as anomalib loads
    images = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with torch.no_grad():
        expected, actual = model.eval()(images), reloaded.eval()(images)
    torch.testing.assert_close(actual.pred_score, expected.pred_score, rtol=0, atol=0)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("export_type", "exported_file"),
    [(ExportType.ONNX, "onnx/model.onnx"), (ExportType.OPENVINO, "openvino/model.xml")],
)
def test_export_matches_torch(trained: tuple, tmp_path: Path, export_type: ExportType, exported_file: str) -> None:
    _, engine, model, _ = trained
    engine.export(model, export_type, export_root=tmp_path, input_size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))
    images = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with torch.no_grad():
        expected = model.eval()(images)
    exported = load_exported(tmp_path / "weights" / exported_file)(images.numpy())  # OpenVINO at f32
    np.testing.assert_allclose(exported["anomaly_map"], expected.anomaly_map.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(exported["pred_score"], expected.pred_score.numpy(), atol=1e-4, rtol=1e-4)


def test_non_finite_image_is_rejected_with_its_path(trained: tuple) -> None:
    _, _, model, data = trained
    batch = next(iter(data.train_dataloader()))
    batch.image[1, 0, 0, 0] = float("nan")
    model.train()
    with pytest.raises(ValueError, match=r"NaN or infinite pixel values: .*\.png"):
        model.training_step(batch)


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_unknown_layer_names_the_valid_ones(name: str) -> None:
    with pytest.raises(ValueError, match=r"no feature layer\(s\) \['blocks\.9'\]\. Choose from"):
        FAMILY[name].build(layers=["blocks.2", "blocks.9"])


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_cli_trains_one_epoch(name: str, texture_root: Path, tmp_path: Path) -> None:
    command = [anomalib_cli(), "train", "--model", name, *FAMILY[name].cli_arguments]
    command += FAMILY[name].cli_one_epoch()
    command += ["--data", "anomalib.data.MVTecAD", "--data.root", str(texture_root), "--data.category", "brick"]
    command += ["--data.num_workers", "0", "--default_root_dir", str(tmp_path), "--seed_everything", "0"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "image_AUROC" in result.stdout + result.stderr
    assert list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_optimiser_trains_exactly_the_parameters_that_require_gradients(name: str) -> None:
    model = FAMILY[name].build(max_epochs=2)
    optimised = [p for group in model.configure_optimizers().param_groups for p in group["params"]]
    trainable = [p for p in model.model.parameters() if p.requires_grad]
    assert optimised
    # nothing trainable left out, nothing of a frozen part in (a fixed buffer-like parameter of a trained part may be)
    assert {id(p) for p in optimised if p.requires_grad} == {id(p) for p in trainable}
    assert len(optimised) == len({id(p) for p in optimised})  # no parameter twice
    encoders = [m for m in model.model.modules() if isinstance(m, TimmFeatureExtractor)]
    frozen = [m for m in encoders if not any(p.requires_grad for p in m.parameters())]
    assert frozen  # every model of the family distils a frozen encoder
    assert not {id(p) for m in frozen for p in m.parameters()} & {id(p) for p in optimised}


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_convolutions_run_channels_last(name: str) -> None:
    model = FAMILY[name].build()
    convolutions = [m for m in model.model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.dim() == 4]
    assert convolutions
    # oneDNN and cuDNN run NHWC faster; a single 1x1-spatial kernel is both layouts at once
    slow = [m for m in convolutions if not m.weight.is_contiguous(memory_format=torch.channels_last)]
    assert not slow, f"{len(slow)} convolutions keep NCHW weights, e.g. {slow[0]}"
