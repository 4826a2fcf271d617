"""Distillation losses: the teacher-student affinity loss."""

import pytest
import torch

from anomalib_dhkd.components.losses import AffinityLoss, affinity_matrix


def test_affinity_loss_zero_for_identical_positive_otherwise() -> None:
    teacher = [torch.randn(2, 5, 8, 8), torch.randn(2, 7, 20, 24)]
    loss = AffinityLoss(max_size=16)
    assert loss(teacher, [t.clone() for t in teacher]).item() == pytest.approx(0.0, abs=1e-7)
    assert loss(teacher, [torch.randn_like(t) for t in teacher]).item() > 1e-3
    matrix = affinity_matrix(teacher[0])
    assert matrix.shape == (2, 64, 64)
    torch.testing.assert_close(torch.diagonal(matrix, dim1=1, dim2=2), torch.ones(2, 64))
