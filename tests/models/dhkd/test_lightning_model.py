"""DHKD's Lightning module: schedule, guards, pre-processing, default layers and training end to end."""

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch, MVTecAD
from anomalib.deploy import ExportType
from anomalib.engine import Engine

from anomalib_dhkd import Dhkd
from anomalib_dhkd.components.scoring import ScoringConfig
from anomalib_dhkd.deployment.runtime import load_exported
from tests.conftest import TINY_BACKBONE, TINY_IMAGE_SIZE, TINY_SCORING, tiny_dhkd


def test_invalid_schedule_is_rejected() -> None:
    with pytest.raises(ValueError, match="teacher_warmup_epochs"):
        Dhkd(**TINY_BACKBONE, pre_trained=False, teacher_warmup_epochs=5, max_epochs=5)
    with pytest.raises(ValueError, match="freeze_teacher=True needs teacher_warmup_epochs >= 1"):
        Dhkd(**TINY_BACKBONE, pre_trained=False, teacher_warmup_epochs=0, freeze_teacher=True)
    joint = Dhkd(**TINY_BACKBONE, pre_trained=False, teacher_warmup_epochs=0, freeze_teacher=False)
    assert joint.training_teacher
    assert joint.training_student


@pytest.mark.parametrize(("max_epochs", "warmup", "frozen"), [(10, 2, True), (3, 1, True), (2, 1, True), (1, 0, False)])
def test_the_default_schedule_follows_the_budget(max_epochs: int, warmup: int, frozen: bool) -> None:
    """`--model.max_epochs 2` alone works: the warm-up shrinks with the budget, and no warm-up trains jointly."""
    model = Dhkd(**TINY_BACKBONE, pre_trained=False, max_epochs=max_epochs)
    assert (model.teacher_warmup_epochs, model.freeze_teacher) == (warmup, frozen)
    assert model.trainer_arguments["max_epochs"] == max_epochs
    explicit = Dhkd(**TINY_BACKBONE, pre_trained=False, max_epochs=10, teacher_warmup_epochs=4, freeze_teacher=False)
    assert (explicit.teacher_warmup_epochs, explicit.freeze_teacher) == (4, False)


def test_non_finite_loss_stops_training_with_a_clear_error() -> None:
    """A diverged teacher (a NaN weight) stops training at the step, naming the loss term."""
    dhkd = Dhkd(**TINY_BACKBONE, pre_trained=False)
    with torch.no_grad():
        next(dhkd.model.teachers.parameters()).fill_(float("nan"))
    batch = ImageBatch(image=torch.rand(2, 3, 64, 64))
    with pytest.raises(FloatingPointError, match="Dhkd loss term 'total' became nan"):
        dhkd.training_step(batch)


def test_pre_processor_uses_backbone_statistics() -> None:
    efficientnet = Dhkd.configure_pre_processor(backbone="tf_efficientnet_lite0")
    resnet = Dhkd.configure_pre_processor(image_size=(128, 96), backbone="wide_resnet50_2")
    assert list(efficientnet.transform.transforms[1].mean) == [0.5, 0.5, 0.5]
    assert list(resnet.transform.transforms[1].mean) == pytest.approx([0.485, 0.456, 0.406])
    assert list(resnet.transform.transforms[0].size) == [128, 96]


def test_layers_default_to_the_backbones_strides_4_8_and_16() -> None:
    efficientnet = Dhkd(backbone="tf_efficientnet_lite0", pre_trained=False)
    assert list(efficientnet.model.encoder.layers) == ["blocks.1", "blocks.2", "blocks.4"]
    wide_resnet = Dhkd(pre_trained=False)  # wide_resnet50_2
    assert list(wide_resnet.model.encoder.layers) == ["layer1", "layer2", "layer3"]


@pytest.mark.slow
@pytest.mark.usefixtures("pretrained_weights")
def test_trained_model_scores_planted_defects_higher(texture_root: Path) -> None:
    """A few dozen steps on normal brick crops suffice to rank and localise synthetic defects."""
    from anomalib.data import MVTecAD

    torch.manual_seed(0)
    dhkd = Dhkd(**TINY_BACKBONE, pre_processor=Dhkd.configure_pre_processor((128, 128), "tf_efficientnet_lite0"))
    datamodule = MVTecAD(root=texture_root, category="brick", train_batch_size=8, eval_batch_size=16, num_workers=0)
    datamodule.setup()
    optimizer = dhkd.configure_optimizers()
    transform = dhkd.pre_processor.transform
    dhkd.model.train()
    for step in range(40):
        for batch in datamodule.train_dataloader():
            terms = dhkd.loss(*dhkd.model(transform(batch.image)), train_student=step >= 10)
            optimizer.zero_grad()
            terms.total.backward()
            optimizer.step()
    dhkd.model.eval()
    dhkd.model.fit_normal_statistics(lambda: (transform(batch.image) for batch in datamodule.train_dataloader()))
    scores, labels, inside, outside = [], [], [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            output = dhkd.model(transform(batch.image))
            scores.append(output.pred_score)
            labels.append(batch.gt_label)
            masks = torch.nn.functional.interpolate(batch.gt_mask[:, None].float(), size=(128, 128)) > 0.5
            inside.append(output.anomaly_map[masks])
            outside.append(output.anomaly_map[~masks])
    scores, labels = torch.cat(scores), torch.cat(labels).bool()
    assert scores[labels].mean() > scores[~labels].mean()
    assert torch.cat(inside).mean() > 1.5 * torch.cat(outside).mean()


def test_missing_pretrained_weights_offline_give_an_actionable_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(RuntimeError, match=r"offline\. Use backbone='tf_efficientnet_lite0'"):
        Dhkd(backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=True)


@pytest.mark.slow
def test_patch_memory_trains_reloads_and_exports_with_the_maps_of_torch(texture_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    scoring = ScoringConfig(**TINY_SCORING, memory_layers=["blocks.2", "blocks.4"], memory_size=500)
    model = tiny_dhkd(scoring=scoring, max_epochs=1, teacher_warmup_epochs=0)
    engine = Engine(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    data = MVTecAD(root=texture_root, category="brick", train_batch_size=8, eval_batch_size=8, num_workers=0)
    engine.fit(model=model, datamodule=data)
    memory_map = model.model.scorer.memory_map
    assert memory_map.memory.bank.shape == (500, 40 + 112)  # blocks.2 and blocks.4 channels
    assert memory_map.scale > 0
    engine.trainer.save_checkpoint(tmp_path / "model.ckpt")
    reloaded = Dhkd.load_from_checkpoint(tmp_path / "model.ckpt")  # weights_only=True, as anomalib loads
    images = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with torch.no_grad():
        expected = model.eval()(images)
        torch.testing.assert_close(reloaded.eval()(images).anomaly_map, expected.anomaly_map, rtol=0, atol=0)
    engine.export(model, ExportType.ONNX, export_root=tmp_path, input_size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))
    exported = load_exported(tmp_path / "weights" / "onnx" / "model.onnx")(images.numpy())
    np.testing.assert_allclose(exported["anomaly_map"], expected.anomaly_map.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(exported["pred_score"], expected.pred_score.numpy(), atol=1e-4, rtol=1e-4)
