"""Dmdd's ablation switches change what they name and nothing else."""

from pathlib import Path

import pytest
import torch

from anomalib_dhkd.components.scoring import MapFusion
from anomalib_dhkd.components.scoring.segmentation import MultiPerceptionHead, PixelwiseHead
from anomalib_dhkd.models.dmdd.loss import DmddLoss, cosine_distance
from tests.conftest import TINY_IMAGE_SIZE, tiny_dmdd


def test_map_without_the_head_is_the_fused_normality_discrepancy() -> None:
    torch.manual_seed(0)
    network = tiny_dmdd(segmentation_head=False, blur_sigma=0.0).model.eval()
    images = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with torch.no_grad():
        output = network(images)
        normality, _ = network.decoupled_features(images)
        distances = [cosine_distance(n, t) for n, t in zip(normality, network.teacher_features(images), strict=True)]
        expected = MapFusion(sigma=0.0).fuse(distances, (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))
        head_map = tiny_dmdd(blur_sigma=0.0).model.eval()(images).anomaly_map
    torch.testing.assert_close(output.anomaly_map, expected)
    assert not torch.allclose(head_map, expected)  # the default map is the head's, not this one


def test_default_map_is_the_head_probability_times_the_normality_discrepancy() -> None:
    torch.manual_seed(0)
    network = tiny_dmdd(blur_sigma=0.0).model.eval()
    images = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with torch.no_grad():
        probabilities, discrepancies = network.head_maps(images)
        output = network(images)
        network.normality_in_map = False
        head_only = network(images)
    size = (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    normality = discrepancies[:, 0::2].mean(dim=1, keepdim=True)
    torch.testing.assert_close(output.anomaly_map, MapFusion(sigma=0.0).fuse([probabilities * normality], size))
    torch.testing.assert_close(head_only.anomaly_map, MapFusion(sigma=0.0).fuse([probabilities], size))


def test_multi_perception_switch_chooses_the_head() -> None:
    assert isinstance(tiny_dmdd().model.head, PixelwiseHead)
    assert isinstance(tiny_dmdd(multi_perception=True).model.head, MultiPerceptionHead)


def test_loss_weights_remove_their_term_only() -> None:
    torch.manual_seed(0)
    features = [torch.rand(2, 4, 4, 4)]
    other = [torch.rand(2, 4, 4, 4)]
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, :, 4:12, 4:12] = 1
    logits = torch.zeros_like(masks)
    arguments = (features, other, other, features, other, logits, masks)
    full, no_ngm, no_aim = DmddLoss()(*arguments), DmddLoss(0.0, 1.0)(*arguments), DmddLoss(1.0, 0.0)(*arguments)
    torch.testing.assert_close(full.total - no_ngm.total, full.normality)
    torch.testing.assert_close(full.total - no_aim.total, full.abnormality)
    assert float(full.normality) > 0
    assert float(full.abnormality) > 0


def test_negative_loss_weight_is_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        DmddLoss(normality_weight=-1.0)


def test_anomalies_anywhere_switch_reaches_the_synthesiser() -> None:
    assert tiny_dmdd().anomalies.on_foreground
    assert not tiny_dmdd(anomaly_on_foreground=False).anomalies.on_foreground


def test_checkpoint_from_before_the_head_switch_loads_its_multi_perception_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    old = tiny_dmdd(multi_perception=True).eval()
    hyper_parameters = {name: value for name, value in old.hparams.items() if name != "multi_perception"}
    path = tmp_path / "old.ckpt"
    torch.save(
        {"state_dict": old.state_dict(), "hyper_parameters": hyper_parameters, "pytorch-lightning_version": "2.6.0"},
        path,
    )
    reloaded = type(old).load_from_checkpoint(path).eval()
    assert isinstance(reloaded.model.head, MultiPerceptionHead)
    assert reloaded.hparams["multi_perception"] is True
    images = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(images).anomaly_map, old.model(images).anomaly_map, rtol=0, atol=0)


def test_head_epochs_end_the_students_training_and_must_leave_it_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_dmdd(max_epochs=4, head_epochs=1)
    training_student = {}
    for epoch in range(4):
        monkeypatch.setattr(type(model), "current_epoch", epoch)
        training_student[epoch] = model.training_student
    assert training_student == {0: True, 1: True, 2: True, 3: False}
    for head_epochs in (-1, 4):
        with pytest.raises(ValueError, match="head_epochs"):
            tiny_dmdd(max_epochs=4, head_epochs=head_epochs)


def test_default_head_epochs_are_a_fifth_of_the_budget_and_none_for_short_runs() -> None:
    assert tiny_dmdd(max_epochs=25).head_epochs == 5
    assert tiny_dmdd(max_epochs=12).head_epochs == 2
    # below five epochs the default trains student and head together in every epoch, so short runs still work
    assert tiny_dmdd(max_epochs=4).head_epochs == 0
