"""Dmdd runs its frozen teacher once per training pair, on the normal images and the painted copies only."""

import torch

from tests.conftest import TINY_IMAGE_SIZE, tiny_dmdd


def test_paired_teacher_features_equal_the_teacher_on_each_batch() -> None:
    torch.manual_seed(0)
    network = tiny_dmdd().model
    images = torch.randn(3, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    masks = torch.zeros(3, 1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    masks[1, :, 4:12, 4:12] = 1
    augmented = images.clone()
    augmented[1] += masks[1] * torch.randn_like(images[1])
    with torch.no_grad():
        normal, paired = network.paired_teacher_features(images, augmented, masks)
        expected_normal, expected_augmented = network.teacher_features(images), network.teacher_features(augmented)
    for actual, expected in zip([*normal, *paired], [*expected_normal, *expected_augmented], strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(paired[0][1], normal[0][1])  # the painted copy has its own features


def test_head_only_epochs_leave_the_student_untouched_and_read_it_in_evaluation_mode() -> None:
    torch.manual_seed(0)
    network = tiny_dmdd().model.train()
    images = torch.randn(4, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    augmented = images + 0.5 * torch.randn_like(images)
    masks = torch.ones(4, 1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    statistics = {name: buffer.clone() for name, buffer in network.student.named_buffers()}
    outputs = network(images, augmented=augmented, masks=masks, train_student=False)
    assert network.student.training  # back in training mode
    assert network.decouplers.training
    for name, buffer in network.student.named_buffers():
        torch.testing.assert_close(buffer, statistics[name])  # no running statistics updated
    assert not any(features.requires_grad for features in outputs.normality_augmented)
    with torch.no_grad():
        test_time = network.eval().head_maps(augmented)[1]
        network.head.train()
        torch.testing.assert_close(outputs.logits, network.head(test_time))
    joint = network.train()(images, augmented=augmented, masks=masks)
    assert all(features.requires_grad for features in joint.normality_augmented)  # the default trains the student
