"""Deployment path: `anomalib export` CLI, INT8 quantisation, runtime parity on real images and folder prediction."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openvino
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import CompressionType, ExportType
from anomalib.engine import Engine
from PIL import Image

from anomalib_dhkd import Dhkd
from anomalib_dhkd.components.scoring import ScoringConfig
from anomalib_dhkd.deployment.quantization import encoder_only_scope, feature_taps, upstream_names
from anomalib_dhkd.deployment.runtime import fixed_size, load_exported, resize_to_input
from tests.conftest import TINY_IMAGE_SIZE, TINY_SCORING, anomalib_cli, shared_category, tiny_dhkd

FEATURE_TAP_NAME = Dhkd.FEATURE_TAP_NAME
pytestmark = pytest.mark.slow
SIZE = (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)


@pytest.mark.parametrize(
    ("shape", "size"),
    [([1, 3, 256, 192], (256, 192)), (["batch", 3, "height", "width"], None), ([None, 3, None, 64], None)],
)
def test_fixed_size_reads_static_height_and_width_only(shape: list, size: tuple | None) -> None:
    """ONNX Runtime names dynamic axes with strings, our OpenVINO reader gives ``None``: both mean no fixed size."""
    assert fixed_size(shape) == size


def eager_outputs(model: Dhkd, images: torch.Tensor) -> dict[str, np.ndarray]:
    model.eval()
    with torch.no_grad():
        output = model(images)
    return {name: getattr(output, name).numpy() for name in ("pred_score", "pred_label", "anomaly_map", "pred_mask")}


def real_test_images(root: Path, category: str) -> torch.Tensor:
    data = MVTecAD(root=root, category=category, num_workers=0)
    data.setup("test")
    return torch.cat([resize_to_input(item.image[None], SIZE) for item in data.test_data])


@pytest.fixture(scope="module")
def hazelnut_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, Dhkd, MVTecAD, Path]:
    """A tiny DHKD trained on the real hazelnut toy set, with its ONNX and OpenVINO exports.

    Like the ImageNet preset, it scores on a deep layer of its own, ``blocks.6``, which ends in convolution +
    BatchNorm without a residual connection: the exporter folds that layer's feature tap into the convolution.
    """
    root = shared_category("hazelnut_toy", "hazelnut")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("hazelnut")
    engine = Engine(default_root_dir=out, logger=False, enable_progress_bar=False)
    model = tiny_dhkd(scoring=ScoringConfig(**{**TINY_SCORING, "score_layers": ["blocks.4", "blocks.6"]}))
    data = MVTecAD(root=root, category="hazelnut", train_batch_size=8, eval_batch_size=8, num_workers=0)
    engine.fit(model=model, datamodule=data)
    engine.export(model, ExportType.ONNX, export_root=out, input_size=SIZE)
    engine.export(model, ExportType.OPENVINO, export_root=out, input_size=SIZE)
    return engine, model, data, out / "weights"


@pytest.mark.parametrize("path", ["onnx/model.onnx", "openvino/model.xml"])
def test_runtimes_match_torch_on_real_images(hazelnut_model: tuple, path: str) -> None:
    """ONNX Runtime and OpenVINO (f32) give torch's normalised scores and maps within 1e-3, and its decisions."""
    _, model, _, weights = hazelnut_model
    images = real_test_images(shared_category("hazelnut_toy", "hazelnut"), "hazelnut")
    expected = eager_outputs(model, images)
    exported = load_exported(weights / path)
    actual = exported(images.numpy())
    np.testing.assert_allclose(actual["pred_score"].ravel(), expected["pred_score"].ravel(), atol=1e-3)
    np.testing.assert_allclose(actual["anomaly_map"], expected["anomaly_map"], atol=1e-3)
    single = exported(images[:1].numpy())  # deployed one image at a time: batch 1 converts differently in OpenVINO
    np.testing.assert_allclose(single["anomaly_map"], expected["anomaly_map"][:1], atol=1e-3)
    np.testing.assert_allclose(single["pred_score"].ravel(), expected["pred_score"].ravel()[:1], atol=1e-3)
    decided = np.abs(expected["pred_score"].ravel() - 0.5) > 1e-3  # a score on the threshold may round either way
    labels, expected_labels = actual["pred_label"].ravel().astype(bool), expected["pred_label"].ravel().astype(bool)
    assert (labels == expected_labels)[decided].all()
    assert (actual["pred_mask"].astype(bool) == expected["pred_mask"].astype(bool)).mean() > 0.999
    assert exported.input_size == SIZE


def export_openvino(
    engine: Engine, model: Dhkd, root: Path, compression: CompressionType, data: MVTecAD | None = None
) -> Path:
    return engine.export(
        model, ExportType.OPENVINO, export_root=root, input_size=SIZE, compression_type=compression, datamodule=data
    )


def test_int8_ptq_quantises_the_encoder_only(hazelnut_model: tuple, tmp_path: Path) -> None:
    """INT8_PTQ puts every quantiser upstream of the visible feature taps; the model still ranks like FP32."""
    engine, model, data, weights = hazelnut_model
    int8_path = export_openvino(engine, model, tmp_path, CompressionType.INT8_PTQ, data)
    graph = openvino.Core().read_model(int8_path)
    quantisers = {op.get_friendly_name() for op in graph.get_ordered_ops() if op.get_type_name() == "FakeQuantize"}
    taps = feature_taps(graph, FEATURE_TAP_NAME)
    assert len(taps) == len(model.model.teachers) - 1  # blocks.6's tap is folded into its last convolution
    assert len(quantisers) > 10
    assert quantisers <= upstream_names(taps)
    images = real_test_images(shared_category("hazelnut_toy", "hazelnut"), "hazelnut")
    fp32 = load_exported(weights / "openvino/model.xml")(images.numpy())
    int8 = load_exported(int8_path)(images.numpy())
    assert np.isfinite(int8["anomaly_map"]).all()
    assert np.corrcoef(int8["pred_score"].ravel(), fp32["pred_score"].ravel())[0, 1] > 0.9


def test_int8_scope_fails_clearly_when_the_feature_taps_are_not_found(hazelnut_model: tuple) -> None:
    graph = openvino.Core().read_model(hazelnut_model[3] / "openvino/model.xml")
    encoder_only_scope(graph, FEATURE_TAP_NAME, num_taps=4)
    with pytest.raises(ValueError, match=r"Expected 1 to 2 feature taps .* found 3"):
        encoder_only_scope(graph, FEATURE_TAP_NAME, num_taps=2)
    with pytest.raises(ValueError, match=r"Expected 1 to 4 feature taps named '\*no_such_op\*' .* found 0"):
        encoder_only_scope(graph, "no_such_op", num_taps=4)


def test_int8_accuracy_control_is_refused_with_a_reason(hazelnut_model: tuple, tmp_path: Path) -> None:
    engine, model, data, _ = hazelnut_model
    with pytest.raises(ValueError, match=r"does not support INT8_ACQ.*Use INT8_PTQ"):
        export_openvino(engine, model, tmp_path, CompressionType.INT8_ACQ, data)


def test_int8_weight_compression_exports_a_smaller_runnable_model(hazelnut_model: tuple, tmp_path: Path) -> None:
    engine, model, _, weights = hazelnut_model
    int8_path = export_openvino(engine, model, tmp_path, CompressionType.INT8)
    assert int8_path.with_suffix(".bin").stat().st_size < 0.5 * (weights / "openvino/model.bin").stat().st_size
    outputs = load_exported(int8_path)(torch.rand(2, 3, *SIZE).numpy())
    assert np.isfinite(outputs["anomaly_map"]).all()
    assert outputs["anomaly_map"].shape == (2, 1, *SIZE)


def test_anomalib_export_cli_from_checkpoint(trained_tiny: tuple, tmp_path: Path) -> None:
    """`anomalib export --model Dhkd --ckpt_path ...` rebuilds the model from the checkpoint and exports it."""
    engine, _, _ = trained_tiny
    checkpoint = tmp_path / "dhkd.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    command = [anomalib_cli(), "export", "--model", "Dhkd"]
    command += ["--model.backbone", "tf_efficientnet_lite0", "--model.layers", "[blocks.1, blocks.2, blocks.4]"]
    command += ["--model.pre_trained", "false", "--ckpt_path", str(checkpoint), "--export_type", "openvino"]
    command += ["--input_size", f"[{SIZE[0]},{SIZE[1]}]", "--default_root_dir", str(tmp_path / "export")]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ})
    assert result.returncode == 0, result.stderr[-3000:]
    xml = tmp_path / "export" / "weights" / "openvino" / "model.xml"
    images = torch.rand(2, 3, *SIZE)
    expected = eager_outputs(Dhkd.load_from_checkpoint(checkpoint), images)
    np.testing.assert_allclose(load_exported(xml)(images.numpy())["anomaly_map"], expected["anomaly_map"], atol=1e-3)


def test_predict_command_writes_heat_maps_and_table(hazelnut_model: tuple, tmp_path: Path) -> None:
    """`python -m anomalib_dhkd.predict MODEL FOLDER` visualises every readable image and lists the broken one."""
    _, _, _, weights = hazelnut_model
    source = shared_category("hazelnut_toy", "hazelnut") / "hazelnut" / "test"
    folder = tmp_path / "incoming"
    (folder / "line1").mkdir(parents=True)
    for index, path in enumerate(sorted(source.rglob("*.png"))[:3]):
        Image.open(path).save(folder / "line1" / f"part{index}.png")
    Image.open(path).convert("L").resize((90, 50)).save(folder / "odd_size_gray.jpg")
    (folder / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "predictions"
    command = [sys.executable, "-m", "anomalib_dhkd.predict", str(weights / "openvino/model.xml"), str(folder)]
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "truncated.png" in result.stderr
    with (out / "predictions.csv").open() as file:
        rows = {row["image"]: row for row in csv.DictReader(file)}
    assert set(rows) == {"line1/part0.png", "line1/part1.png", "line1/part2.png", "odd_size_gray.jpg", "truncated.png"}
    assert rows["truncated.png"]["label"] == "error"
    for name in set(rows) - {"truncated.png"}:
        assert 0.0 <= float(rows[name]["score"]) <= 1.0
        assert rows[name]["label"] in {"normal", "anomalous"}
        figure = Image.open((out / "images" / name).with_suffix(".png"))
        original = Image.open(folder / name)
        assert figure.height == original.height  # three panels at the image's own size
        assert figure.width == 3 * original.width


def test_anomalib_predict_cli_reloads_a_checkpoint(trained_tiny: tuple, texture_root: Path, tmp_path: Path) -> None:
    """`anomalib predict --ckpt_path ... --data FOLDER` (torch) writes a visualisation per image.

    Unlike `anomalib export`, `predict` loads the checkpoint's weights into the model the CLI builds, so the model
    arguments must be those of training.
    """
    engine, _, _ = trained_tiny
    checkpoint = tmp_path / "dhkd.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    images = texture_root / "brick" / "test" / "scratch"
    command = [anomalib_cli(), "predict", "--model", "Dhkd"]
    command += ["--model.backbone", "tf_efficientnet_lite0", "--model.layers", "[blocks.1, blocks.2, blocks.4]"]
    command += [
        "--model.pre_trained",
        "false",
        "--model.teacher.blocks",
        "2",
        "--model.teacher.condition_channels",
        "8",
    ]
    command += ["--model.scoring.global_score", "true", "--model.scoring.coherence_layers", "[blocks.2, blocks.4]"]
    command += ["--model.scoring.coherence_weight", "[0.15, 0.25]"]
    command += ["--ckpt_path", str(checkpoint), "--data", str(images)]
    command += ["--default_root_dir", str(tmp_path / "predict")]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ})
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted(path.name for path in (tmp_path / "predict").rglob("*.png"))
    assert written == sorted(path.name for path in images.glob("*.png"))


def test_predict_refuses_images_it_cannot_judge_and_keeps_rows_when_interrupted(
    hazelnut_model: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny and 16-bit images get a reason instead of a score; rows are written as they finish; --out is checked."""
    from anomalib_dhkd.deployment import predict

    _, _, _, weights = hazelnut_model
    model_path = weights / "openvino/model.xml"
    source = sorted((shared_category("hazelnut_toy", "hazelnut") / "hazelnut" / "test").rglob("*.png"))[0]
    folder = tmp_path / "incoming"
    folder.mkdir()
    Image.open(source).save(folder / "a_good.png")
    Image.open(source).resize((4, 4)).save(folder / "b_tiny.png")
    Image.fromarray(np.full((64, 64), 4000, dtype=np.uint16)).save(folder / "c_16bit.png")
    rows = {row.image: row for row in predict.run(model_path, folder, tmp_path / "out")}
    assert rows["a_good.png"].label in {"normal", "anomalous"}
    assert (rows["b_tiny.png"].label, rows["b_tiny.png"].score) == ("error", None)
    assert "far below the model's input" in rows["b_tiny.png"].error
    assert "values above 255" in rows["c_16bit.png"].error

    calls = []

    def interrupted(*args: object) -> object:
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args)

    original = predict.predict_image
    monkeypatch.setattr(predict, "predict_image", interrupted)
    (folder / "b_tiny.png").unlink()
    Image.open(source).save(folder / "b_second.png")
    with pytest.raises(KeyboardInterrupt):
        predict.run(model_path, folder, tmp_path / "cut")
    with (tmp_path / "cut" / "predictions.csv").open() as file:
        assert [row["image"] for row in csv.DictReader(file)] == ["a_good.png"]  # the finished row survived

    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("")  # an output path that cannot be created, as root too (root ignores permission bits)
    monkeypatch.setattr(
        predict, "load_exported", lambda *args: pytest.fail("the model loaded before --out was checked")
    )
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(model_path), str(folder), "--out", str(not_a_folder / "out")])
    assert exit_info.value.code == 2


def test_predict_names_a_model_file_it_cannot_run_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from anomalib_dhkd.deployment import predict

    source = sorted((shared_category("hazelnut_toy", "hazelnut") / "hazelnut" / "test" / "good").glob("*.png"))[0]
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"not an exported model")
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(weights), str(source), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "error: Cannot run model.pt with runtime" in capsys.readouterr().err
