"""The command line stops on bad data, wrong arguments and unwritable folders before any work, in a line or two."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from anomalib.data import Folder, MVTecAD
from PIL import Image

from anomalib_dhkd.tools.preflight import datamodule_problems
from tests.conftest import anomalib_cli, shared_category, write_tiny_config

CATEGORY = "hazelnut"


@pytest.fixture
def hazelnut(tmp_path: Path) -> Path:
    """A writable copy of the real hazelnut toy set (MVTec layout)."""
    root = tmp_path / "data"
    shutil.copytree(shared_category("hazelnut_toy", CATEGORY) / CATEGORY, root / CATEGORY)
    return root


def truncate_first_training_image(category: Path) -> str:
    path = sorted((category / "train" / "good").glob("*.png"))[0]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path.name


def empty_training_folder(category: Path) -> str:
    for path in (category / "train" / "good").iterdir():
        path.unlink()
    return "train/good"


def delete_first_mask(category: Path) -> str:
    mask = sorted((category / "ground_truth" / "colour").glob("*_mask.png"))[0]
    mask.unlink()
    return mask.name.removesuffix("_mask.png") + ".png"


BREAKAGES = {
    "truncated image": truncate_first_training_image,
    "empty train/good": empty_training_folder,
    "defect image without mask": delete_first_mask,
}


def train(config: Path, root: Path, category: str, run_dir: Path) -> subprocess.CompletedProcess:
    command = [anomalib_cli(), "train", "--config", str(config), "--data", "anomalib.data.MVTecAD"]
    command += ["--data.root", str(root), "--data.category", category, "--data.num_workers", "0"]
    command += ["--default_root_dir", str(run_dir)]
    return subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ}, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("breakage", BREAKAGES)
def test_bad_data_stops_training_before_the_first_epoch_naming_the_file(
    hazelnut: Path, tmp_path: Path, breakage: str
) -> None:
    named = BREAKAGES[breakage](hazelnut / CATEGORY)
    result = train(write_tiny_config(tmp_path / "dhkd.yaml"), hazelnut, CATEGORY, tmp_path / "run")
    assert result.returncode == 1, result.stderr[-2000:]
    problems = [line for line in result.stderr.splitlines() if line.startswith("PROBLEM ")]
    assert problems, result.stderr[-2000:]
    assert any(named in line for line in problems)
    assert f"python -m anomalib_dhkd.check {hazelnut} --category {CATEGORY}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Epoch" not in result.stdout + result.stderr  # nothing trained
    assert not list((tmp_path / "run").rglob("*.ckpt"))


@pytest.mark.slow
def test_mistyped_category_stops_before_a_download(hazelnut: Path, tmp_path: Path) -> None:
    result = train(write_tiny_config(tmp_path / "dhkd.yaml"), hazelnut, "hazelnutt", tmp_path / "run")
    assert result.returncode == 1
    assert "'hazelnutt' is not a category anomalib can download" in result.stderr
    assert f"folders in {hazelnut}: {CATEGORY}" in result.stderr
    assert "download" not in result.stdout.lower()
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_wrong_model_argument_is_one_line_with_the_choices(hazelnut: Path, tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path / "dhkd.yaml", layers=["blocks.1", "blocks.9"])
    result = train(config, hazelnut, CATEGORY, tmp_path / "run")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Dhkd: Backbone 'tf_efficientnet_lite0' has no feature layer(s) ['blocks.9'].")
    assert "Choose from ['blocks.0', 'blocks.1', 'blocks.2', 'blocks.4', 'blocks.6']" in last
    assert "Traceback" not in result.stderr
    assert "╭" not in result.stderr  # no rich traceback box either


@pytest.mark.slow
def test_export_to_an_unwritable_folder_stops_before_tracing(trained_tiny: tuple, tmp_path: Path) -> None:
    engine, _, _ = trained_tiny
    checkpoint = tmp_path / "dhkd.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    blocked = tmp_path / "a_file"
    blocked.write_text("")  # a folder below a file cannot be created, as root too (root ignores permission bits)
    command = [anomalib_cli(), "export", "--config", str(write_tiny_config(tmp_path / "dhkd.yaml"))]
    command += ["--ckpt_path", str(checkpoint), "--export_type", "onnx", "--export_root", str(blocked / "export")]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ}, timeout=600)
    assert result.returncode == 2
    expected = f"Cannot write to the output folder {blocked / 'export'} (NotADirectoryError)"
    assert result.stderr.strip().splitlines()[-1] == f"error: {expected}; choose another --export_root."


def test_clean_real_data_has_no_problems() -> None:
    root = shared_category("mvtec_ad", "bottle")
    assert datamodule_problems(MVTecAD(root=root, category="bottle")) == []


def test_folder_datamodule_folders_are_checked(hazelnut: Path) -> None:
    category = hazelnut / CATEGORY
    named = truncate_first_training_image(category)
    folder = Folder(name="nuts", root=category, normal_dir="train/good", abnormal_dir="test/colour")
    problems = datamodule_problems(folder)
    assert len(problems) == 1
    assert named in problems[0]
    assert "unreadable or corrupt image" in problems[0]


def test_warnings_alone_do_not_stop_a_run_but_a_problem_does(hazelnut: Path) -> None:
    from anomalib_dhkd.tools.preflight import data_report

    category = hazelnut / CATEGORY
    mask = next((category / "ground_truth").rglob("*_mask.png"))
    Image.fromarray(np.zeros(Image.open(mask).size[::-1], np.uint8)).save(mask)
    message, stop = data_report(MVTecAD(root=hazelnut, category=CATEGORY))
    assert not stop
    assert message.splitlines()[0].startswith(f"WARNING {mask}: empty mask")
    assert "1 warning(s)" in message.splitlines()[-1]
    named = truncate_first_training_image(category)
    message, stop = data_report(MVTecAD(root=hazelnut, category=CATEGORY))
    assert stop
    assert named in message
    assert message.splitlines()[-1].startswith("error: the data has 1 problem(s)")


def test_a_missing_known_category_is_left_to_anomalibs_download(tmp_path: Path) -> None:
    assert datamodule_problems(MVTecAD(root=tmp_path / "MVTecAD", category="bottle")) == []
