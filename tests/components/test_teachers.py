"""Normalizing-flow teachers: invertibility, soft clamping, likelihood and settings."""

import pytest
import torch

from anomalib_dhkd.components.teachers import ConvFlow, flow_negative_log_likelihood


@pytest.mark.parametrize("condition_channels", [0, 8])
def test_flow_is_invertible_with_finite_log_det(condition_channels: int) -> None:
    torch.manual_seed(0)
    flow = ConvFlow(6, num_blocks=3, condition_channels=condition_channels)
    for parameter in flow.parameters():  # leave the identity initialisation so the test is not trivial
        if parameter.requires_grad:  # the fixed permutation matrices are parameters without gradient
            torch.nn.init.normal_(parameter, std=0.1)
    features = torch.randn(2, 6, 5, 7)
    latent, log_det = flow(features)
    assert latent.shape == features.shape
    assert log_det.shape == (2,)
    assert torch.isfinite(log_det).all()
    assert not torch.allclose(latent, features)
    torch.testing.assert_close(flow.inverse(latent), features, atol=1e-4, rtol=1e-4)


def test_flow_log_det_is_bounded_by_soft_clamping() -> None:
    flow = ConvFlow(4, num_blocks=2, clamp=1.0)
    for parameter in flow.parameters():
        if parameter.requires_grad:
            torch.nn.init.constant_(parameter, 50.0)  # would overflow exp() without clamping
    latent, log_det = flow(torch.randn(1, 4, 3, 3))
    assert torch.isfinite(latent).all()
    assert torch.isfinite(log_det).all()


def test_flow_nll_is_lower_for_in_distribution_latents() -> None:
    log_det = torch.zeros(4)
    assert flow_negative_log_likelihood(torch.zeros(4, 2, 3, 3), log_det) == 0
    assert flow_negative_log_likelihood(torch.full((4, 2, 3, 3), 3.0), log_det) == pytest.approx(4.5)


def test_flow_rejects_bad_condition_channels() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        ConvFlow(4, condition_channels=6)
