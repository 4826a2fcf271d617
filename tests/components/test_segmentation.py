"""Segmentation head and its losses; Dmdd's decoupled-distillation terms."""

import pytest
import torch

from anomalib_dhkd.components.losses import segmentation_loss, soft_dice_loss
from anomalib_dhkd.components.scoring.segmentation import MultiPerceptionHead, PixelwiseHead
from anomalib_dhkd.models.dmdd.loss import abnormality_inverse_mimicking, cosine_distance, normality_guided_mimicking


@pytest.mark.parametrize("head_type", [MultiPerceptionHead, PixelwiseHead])
def test_head_keeps_the_resolution_for_odd_sizes_and_trains(head_type: type[torch.nn.Module]) -> None:
    head = head_type(6)
    maps = torch.rand(2, 6, 17, 11)
    logits = head(maps)
    assert logits.shape == (2, 1, 17, 11)
    masks = torch.zeros(2, 1, 17, 11)
    masks[..., 4:8, 3:6] = 1
    segmentation_loss(logits, masks).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


def test_pixelwise_head_reads_each_position_alone_and_the_multi_perception_head_its_neighbours() -> None:
    torch.manual_seed(0)
    maps = torch.rand(1, 6, 9, 9)
    changed = maps.clone()
    changed[..., 4, 4] += 1.0
    for head_type, only_the_centre in ((PixelwiseHead, True), (MultiPerceptionHead, False)):
        head = head_type(6).eval()
        with torch.no_grad():
            moved = (head(changed) - head(maps)).abs()[0, 0] > 1e-6
        assert moved[4, 4]
        assert bool(moved.sum() == 1) is only_the_centre


def test_segmentation_loss_prefers_the_right_masks() -> None:
    masks = torch.zeros(1, 1, 16, 16)
    masks[..., 4:8, 4:8] = 1
    right, wrong = 8 * (2 * masks - 1), 8 * (1 - 2 * masks)
    assert segmentation_loss(right, masks) < 0.05 < segmentation_loss(wrong, masks)
    assert soft_dice_loss(right, masks) < 0.01
    assert soft_dice_loss(wrong, masks) > 0.9


def test_abnormality_loss_falls_as_features_inside_the_mask_turn_away_from_the_teacher() -> None:
    torch.manual_seed(0)
    teacher = [torch.rand(1, 8, 8, 8) + 0.1]
    masks = torch.zeros(1, 1, 32, 32)
    masks[..., :16, :] = 1  # the upper half of the image, the upper 4 rows of the 8 x 8 features
    losses = []
    for turn in (0.0, 0.5, 1.0):
        features = teacher[0].clone()
        features[..., :4, :] = (1 - 2 * turn) * teacher[0][..., :4, :]  # from the teacher's direction to its opposite
        losses.append(float(abnormality_inverse_mimicking([features], teacher, masks)))
    assert losses[0] > losses[1] > losses[2]
    assert losses[2] < 1e-6  # opposite inside, equal outside: nothing left to do


def test_normality_loss_is_zero_only_when_both_images_mimic_the_teacher() -> None:
    teacher = [torch.rand(2, 4, 4, 4)]
    assert float(normality_guided_mimicking(teacher, teacher, teacher)) < 1e-6
    assert float(normality_guided_mimicking(teacher, [-teacher[0]], teacher)) > 1.9
    assert torch.allclose(cosine_distance(teacher[0], 3 * teacher[0]), torch.zeros(2, 1, 4, 4), atol=1e-6)
