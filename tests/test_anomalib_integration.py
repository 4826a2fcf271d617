"""DHKD through anomalib itself: registration, Engine fit/validate/test/predict, checkpoints, export and CLI."""

import collections
import copy
import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from lightning.pytorch import Callback

from anomalib_dhkd import Dhkd
from anomalib_dhkd.components.teachers import FlowTeacherConfig
from anomalib_dhkd.models.dhkd.config import LEGACY_ARGUMENTS

from .conftest import TINY_IMAGE_SIZE, anomalib_cli, tiny_dhkd, write_tiny_config

pytestmark = pytest.mark.slow
IMAGE_SIZE = TINY_IMAGE_SIZE


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, env={**_environ(), **env}
    )


def _environ() -> dict[str, str]:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_plugin_is_registered_lazily_without_importing_torch() -> None:
    result = run_python("import sys, anomalib; print('torch' in sys.modules, 'anomalib_dhkd.models' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
    result = run_python(
        "import anomalib.models as m; from anomalib.models import get_model; "
        "print(m.Dhkd.__module__, type(get_model('dhkd', backbone='tf_efficientnet_lite0', "
        "layers=['blocks.1', 'blocks.2', 'blocks.4'], pre_trained=False)).__name__, "
        "type(get_model({'class_path': 'Dhkd', 'init_args': {'backbone': 'tf_efficientnet_lite0', "
        "'layers': ['blocks.1', 'blocks.2', 'blocks.4'], 'pre_trained': False}})).__name__)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["anomalib_dhkd.models.dhkd.lightning_model", "Dhkd", "Dhkd"]


def test_autoload_can_be_switched_off() -> None:
    result = run_python("import anomalib.models as m; print(hasattr(m, 'Dhkd'))", ANOMALIB_DHKD_AUTOLOAD="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_trainer_arguments_carry_epochs_and_clipping(trained_tiny: tuple[Engine, Dhkd, MVTecAD]) -> None:
    engine, model, _ = trained_tiny
    assert engine.trainer.max_epochs == model.max_epochs == 2
    assert engine.trainer.current_epoch == 2
    assert engine.trainer.gradient_clip_val == 1.0
    assert model.training_student


class WeightsAfterWarmup(Callback):
    """Keep copies of the teacher and student weights at the end of the first (warm-up) epoch; count student runs."""

    def on_train_start(self, trainer, pl_module: Dhkd) -> None:
        self.student_runs = collections.Counter()  # training-mode forward passes of a student, by epoch

        def count(student: torch.nn.Module, _: tuple) -> None:
            if student.training:
                self.student_runs.update([trainer.current_epoch])

        pl_module.model.students[0].register_forward_pre_hook(count)

    def on_train_epoch_end(self, trainer, pl_module: Dhkd) -> None:
        if trainer.current_epoch == 0:
            self.teachers = copy.deepcopy(pl_module.model.teachers.state_dict())
            self.students = copy.deepcopy(pl_module.model.students.state_dict())


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(value, module.state_dict()[name]) for name, value in before.items())


@pytest.mark.parametrize("freeze_teacher", [True, False])
def test_teacher_trains_after_the_warmup_only_without_freeze_teacher(
    texture_root: Path, tmp_path: Path, freeze_teacher: bool
) -> None:
    warmup = WeightsAfterWarmup()
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, callbacks=[warmup])
    model = tiny_dhkd(freeze_teacher=freeze_teacher)
    data = MVTecAD(root=texture_root, category="brick", train_batch_size=8, eval_batch_size=8, num_workers=0)
    engine.fit(model=model, datamodule=data)
    assert model.training_teacher is not freeze_teacher
    assert changed(warmup.teachers, model.model.teachers) is not freeze_teacher
    assert changed(warmup.students, model.model.students)
    assert warmup.student_runs[0] == 0
    assert warmup.student_runs[1] > 0


def test_fit_leaves_normal_statistics_of_the_final_weights(trained_tiny: tuple[Engine, Dhkd, MVTecAD]) -> None:
    """The statistics the scores are standardised with come from the trained model's outputs on the training images."""
    _, model, data = trained_tiny
    statistics = model.model.scorer.position_statistics
    assert [s.mean.shape[-1] for s in statistics] == [IMAGE_SIZE // 4, IMAGE_SIZE // 8, IMAGE_SIZE // 16]
    refitted = copy.deepcopy(model.model)
    transform = model.pre_processor.transform
    refitted.fit_normal_statistics(lambda: (transform(batch.image) for batch in data.train_dataloader()))
    for expected, actual in zip(refitted.scorer.position_statistics, statistics, strict=True):
        torch.testing.assert_close(actual.mean, expected.mean)
        torch.testing.assert_close(actual.std, expected.std)
    fitted_fusion = dict(model.model.scorer.score_fusion.named_buffers())
    assert fitted_fusion["source_std"].ne(1).all()  # calibrated, not the unfitted identity
    for name, expected in refitted.scorer.score_fusion.named_buffers():
        torch.testing.assert_close(fitted_fusion[name], expected)


def test_validate_and_test_report_finite_metrics(trained_tiny: tuple[Engine, Dhkd, MVTecAD]) -> None:
    engine, model, data = trained_tiny
    validation = engine.validate(model=model, datamodule=data, verbose=False)[0]
    assert "image_AUROC" in validation
    results = engine.test(model=model, datamodule=data, verbose=False)[0]
    for name in ("image_AUROC", "image_F1Score", "pixel_AUROC", "pixel_F1Score", "pixel_AUPRO"):
        assert 0.0 <= results[name] <= 1.0, (name, results[name])


def test_predict_gives_maps_scores_and_labels(trained_tiny: tuple[Engine, Dhkd, MVTecAD]) -> None:
    engine, model, data = trained_tiny
    predictions = engine.predict(model=model, dataloaders=data.test_dataloader())
    batch = predictions[0]
    assert batch.anomaly_map.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)
    assert batch.pred_score.shape == (batch.image.shape[0],)
    assert batch.pred_label.dtype == torch.bool
    assert torch.isfinite(batch.anomaly_map).all()


def test_checkpoint_reload_gives_identical_scores(trained_tiny: tuple[Engine, Dhkd, MVTecAD], tmp_path: Path) -> None:
    engine, model, _ = trained_tiny
    checkpoint = tmp_path / "dhkd.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    reloaded = Dhkd.load_from_checkpoint(checkpoint)
    assert reloaded.hparams["teacher"]["blocks"] == 2  # settings are saved as plain dictionaries
    assert len(reloaded.model.teachers[0].flow.module_list) == 2
    reloaded_weights = [m.weight for m in reloaded.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in reloaded_weights)
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected, actual = model.eval()(images), reloaded.eval()(images)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map)
    torch.testing.assert_close(actual.pred_score, expected.pred_score)


def test_checkpoint_with_the_former_flat_arguments_loads_and_scores_the_same(
    trained_tiny: tuple[Engine, Dhkd, MVTecAD], tmp_path: Path
) -> None:
    """Checkpoints saved before the settings were grouped (``flow_blocks=2``, ``model.position_statistics.*``)."""
    engine, model, _ = trained_tiny
    checkpoint_path = tmp_path / "grouped.ckpt"
    engine.trainer.save_checkpoint(checkpoint_path)
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    grouped = checkpoint["hyper_parameters"]
    flat = {name: value for name, value in grouped.items() if name not in LEGACY_ARGUMENTS}
    for group, names in LEGACY_ARGUMENTS.items():
        flat |= {old: grouped[group][new] for old, new in names.items()}
    checkpoint["hyper_parameters"] = flat
    checkpoint["state_dict"] = {
        key.replace("model.scorer.map_fusion.", "model.anomaly_map_generator.").replace(
            "model.scorer.", "model."
        ): value
        for key, value in checkpoint["state_dict"].items()
    }
    assert flat["flow_blocks"] == 2 != inspect.signature(FlowTeacherConfig).parameters["blocks"].default
    assert "model.position_statistics.0.mean" in checkpoint["state_dict"]
    legacy_path = tmp_path / "flat.ckpt"
    torch.save(checkpoint, legacy_path)
    reloaded = Dhkd.load_from_checkpoint(legacy_path)
    assert reloaded.hparams["teacher"]["blocks"] == 2
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected, actual = model.eval()(images), reloaded.eval()(images)
    torch.testing.assert_close(actual.pred_score, expected.pred_score, rtol=0, atol=0)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map, rtol=0, atol=0)


def test_export_torch_onnx_openvino_match_eager(trained_tiny: tuple[Engine, Dhkd, MVTecAD], tmp_path: Path) -> None:
    engine, model, _ = trained_tiny
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    model.eval()
    with torch.no_grad():
        expected = model(images)

    torch_path = engine.export(model=model, export_type=ExportType.TORCH, export_root=tmp_path)
    assert torch_path.is_file()

    onnx_path = engine.export(
        model=model, export_type=ExportType.ONNX, export_root=tmp_path, input_size=(IMAGE_SIZE, IMAGE_SIZE)
    )
    import onnx
    import onnxruntime

    op_types = {node.op_type for node in onnx.load(str(onnx_path)).graph.node}
    assert "DFT" not in op_types
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, {"input": images.numpy()}), strict=True)
    )
    np.testing.assert_allclose(outputs["anomaly_map"], expected.anomaly_map.numpy(), atol=1e-4)
    np.testing.assert_allclose(outputs["pred_score"].ravel(), expected.pred_score.numpy().ravel(), atol=1e-4)

    xml_path = engine.export(
        model=model, export_type=ExportType.OPENVINO, export_root=tmp_path, input_size=(IMAGE_SIZE, IMAGE_SIZE)
    )
    import openvino

    compiled = openvino.Core().compile_model(str(xml_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(images.numpy())
    anomaly_map = next(value for port, value in result.items() if "anomaly_map" in port.get_names())
    np.testing.assert_allclose(anomaly_map, expected.anomaly_map.numpy(), atol=1e-3)


def test_cli_train_and_yaml_config(texture_root: Path, tmp_path: Path) -> None:
    config = write_tiny_config(
        tmp_path / "dhkd.yaml",
        teacher={"blocks": 1, "condition_channels": 8},
        scoring={"coherence_weight": 0.25},
        max_epochs=1,
        teacher_warmup_epochs=0,
        freeze_teacher=False,
    )
    command = [
        anomalib_cli(),
        "train",
        "--config",
        str(config),
        "--data",
        "anomalib.data.MVTecAD",
        "--data.root",
        str(texture_root),
        "--data.category",
        "brick",
        "--data.train_batch_size",
        "16",
        "--data.num_workers",
        "0",
        "--default_root_dir",
        str(tmp_path / "runs"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=_environ())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "image_AUROC" in result.stdout + result.stderr
    assert list((tmp_path / "runs").rglob("*.ckpt"))
    help_result = subprocess.run(
        [command[0], "train", "--model.help", "Dhkd"], capture_output=True, text=True, check=False, env=_environ()
    )
    assert help_result.returncode == 0, help_result.stderr[-2000:]
    assert "--model.student.noise_level" in help_result.stdout
    assert "--model.scoring.coherence_weight" in help_result.stdout
    assert "relative to" in help_result.stdout


def test_trains_and_tests_on_shared_real_data(tmp_path: Path) -> None:
    """One short epoch on the real hazelnut toy set (../shared/data) gives finite metrics in range."""
    from .conftest import shared_category

    root = shared_category("hazelnut_toy", "hazelnut")
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    model = tiny_dhkd()
    data = MVTecAD(root=root, category="hazelnut", train_batch_size=8, eval_batch_size=8, num_workers=0)
    engine.fit(model=model, datamodule=data)
    results = engine.test(model=model, datamodule=data, verbose=False)[0]
    for name in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"):
        assert 0.0 <= results[name] <= 1.0, (name, results[name])
