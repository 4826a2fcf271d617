"""Reliability: same seed gives the same model, and an interrupted run resumes to the uninterrupted result."""

import os
import signal
import subprocess
from functools import partial
from pathlib import Path

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from anomalib_dhkd import Dhkd

from .conftest import TINY_IMAGE_SIZE, anomalib_cli, shared_category, tiny_dhkd, write_tiny_config

pytestmark = pytest.mark.slow


class PowerCut(Callback):
    """Fail at the first training batch of ``epoch``, after earlier epochs were checkpointed."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        del pl_module, args
        if trainer.current_epoch == self.epoch:
            msg = "simulated power cut"
            raise RuntimeError(msg)


def fit(root: Path, texture_root: Path, max_epochs: int = 3, ckpt_path: Path | None = None, **engine_args) -> Dhkd:
    """Train a tiny DHKD with seed 0; ``test_metrics`` holds its test metrics."""
    seed_everything(0, workers=True)
    model = tiny_dhkd(max_epochs=max_epochs)
    data = MVTecAD(root=texture_root, category="brick", train_batch_size=8, eval_batch_size=8, num_workers=0)
    engine = Engine(default_root_dir=root, logger=False, enable_progress_bar=False, **engine_args)
    engine.fit(model=model, datamodule=data, ckpt_path=ckpt_path)
    model.test_metrics = engine.test(model=model, datamodule=data, verbose=False)[0]
    return model.eval()


def predictions(model: Dhkd) -> torch.Tensor:
    """Raw anomaly maps of three fixed random images (normalised ones would saturate at 1 on noise)."""
    images = torch.rand(3, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.model(images).anomaly_map


def test_same_seed_gives_identical_models(texture_root: Path, tmp_path: Path) -> None:
    first = predictions(fit(tmp_path / "a", texture_root, max_epochs=2))
    second = predictions(fit(tmp_path / "b", texture_root, max_epochs=2))
    assert torch.equal(first, second)


def test_interrupted_run_resumes_to_the_uninterrupted_result(texture_root: Path, tmp_path: Path) -> None:
    """Weights, optimiser, warm-up schedule and random generators all come back from the checkpoint."""
    full_model = fit(tmp_path / "full", texture_root)
    uninterrupted = predictions(full_model)
    with pytest.raises(RuntimeError, match="simulated power cut"):
        fit(tmp_path / "cut", texture_root, callbacks=[PowerCut(epoch=2)])
    (checkpoint,) = (tmp_path / "cut").rglob("*.ckpt")
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    resumed_model = fit(tmp_path / "resumed", texture_root, ckpt_path=checkpoint)
    torch.testing.assert_close(predictions(resumed_model), uninterrupted, rtol=0, atol=1e-6)
    assert set(resumed_model.test_metrics) >= {"image_AUROC", "pixel_AUROC", "pixel_AUPRO"}
    assert resumed_model.test_metrics == pytest.approx(full_model.test_metrics, abs=1e-6)
    # anomalib's Engine.train hands the checkpoint it resumed from to test as well; the finished model is tested
    seed_everything(0, workers=True)
    model = tiny_dhkd(max_epochs=3)
    data = MVTecAD(root=texture_root, category="brick", train_batch_size=8, eval_batch_size=8, num_workers=0)
    engine = Engine(default_root_dir=tmp_path / "train", logger=False, enable_progress_bar=False)
    train_metrics = engine.train(model=model, datamodule=data, ckpt_path=checkpoint)[0]
    assert train_metrics == pytest.approx(full_model.test_metrics, abs=1e-6)
    torch.testing.assert_close(predictions(model.eval()), uninterrupted, rtol=0, atol=1e-6)
    different_start = predictions(fit(tmp_path / "short", texture_root, max_epochs=2))
    assert not torch.allclose(different_start, uninterrupted, atol=1e-4)  # the comparison can tell runs apart


def test_cli_trains_under_cpu_ddp(texture_root: Path, tmp_path: Path) -> None:
    """`anomalib train ... --trainer.strategy ddp --trainer.devices 2` on CPU trains, checkpoints and tests."""
    config = write_tiny_config(tmp_path / "dhkd.yaml")
    command = [anomalib_cli(), "train", "--config", str(config)]
    command += ["--data", "anomalib.data.MVTecAD", "--data.root", str(texture_root), "--data.category", "brick"]
    command += ["--data.train_batch_size", "4", "--data.num_workers", "0", "--default_root_dir", str(tmp_path / "runs")]
    command += ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "image_AUROC" in result.stdout + result.stderr
    assert list((tmp_path / "runs").rglob("*.ckpt"))


def cli_train(
    config: Path, data_root: Path, root: Path, *extra: str, category: str = "brick"
) -> tuple[dict[str, torch.Tensor], str]:
    """Train with `anomalib train --config CONFIG` (seed 0); the checkpoint's state dict and the printed metrics."""
    command = [anomalib_cli(), "train", "--config", str(config), "--seed_everything", "0"]
    command += ["--data", "anomalib.data.MVTecAD", "--data.root", str(data_root), "--data.category", category]
    command += ["--data.num_workers", "0", "--default_root_dir", str(root), *extra]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = root.rglob("*.ckpt")
    metrics = [line for line in (result.stdout + result.stderr).splitlines() if "AUROC" in line or "AUPRO" in line]
    return torch.load(checkpoint, weights_only=True)["state_dict"], "\n".join(metrics)


class SigKill(Callback):
    """``kill -9`` the training process at the second batch of ``epoch`` (mid-epoch, after a checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: object, index: int) -> None:
        del pl_module, batch
        if trainer.current_epoch == self.epoch and index == 1:
            os.kill(os.getpid(), signal.SIGKILL)


def test_cli_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights_and_metrics(tmp_path: Path) -> None:
    """`kill -9` mid-epoch, then the same `anomalib train` command with `--ckpt_path`: as if never interrupted."""
    hazelnut = shared_category("hazelnut_toy", "hazelnut")
    config = write_tiny_config(tmp_path / "dhkd.yaml", max_epochs=3)
    run = partial(cli_train, config, hazelnut, category="hazelnut")
    full_weights, full_metrics = run(tmp_path / "full", "--data.train_batch_size", "8")
    killer = ["--trainer.callbacks+=tests.test_reliability.SigKill", "--trainer.callbacks.epoch=2"]
    command = [anomalib_cli(), "train", "--config", str(config), "--seed_everything", "0", *killer]
    command += ["--data", "anomalib.data.MVTecAD", "--data.root", str(hazelnut), "--data.category", "hazelnut"]
    command += ["--data.num_workers", "0", "--data.train_batch_size", "8", "--default_root_dir", str(tmp_path / "cut")]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    killed = subprocess.run(command, capture_output=True, text=True, check=False, env=environment, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (checkpoint,) = (tmp_path / "cut").rglob("*.ckpt")
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1  # epochs 0 and 1 done, killed inside epoch 2
    resumed_weights, resumed_metrics = run(
        tmp_path / "resumed", "--data.train_batch_size", "8", "--ckpt_path", str(checkpoint)
    )
    assert resumed_weights.keys() == full_weights.keys()
    assert [name for name in full_weights if not torch.equal(full_weights[name], resumed_weights[name])] == []
    assert "image_AUROC" in full_metrics
    assert resumed_metrics == full_metrics


def test_two_seeded_cli_runs_train_identical_models(texture_root: Path, tmp_path: Path) -> None:
    """anomalib 2.7's CLI declares --seed_everything but never seeds; the plugin makes it seed before building."""
    config = write_tiny_config(tmp_path / "dhkd.yaml")
    first_weights, first_metrics = cli_train(config, texture_root, tmp_path / "a")
    second_weights, second_metrics = cli_train(config, texture_root, tmp_path / "b")
    assert first_weights.keys() == second_weights.keys()
    different = [name for name in first_weights if not torch.equal(first_weights[name], second_weights[name])]
    assert different == []
    assert "image_AUROC" in first_metrics
    assert first_metrics == second_metrics
