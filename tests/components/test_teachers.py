"""Normalizing-flow teachers: invertibility, soft clamping, likelihood and settings."""

import copy

import pytest
import torch

from anomalib_dhkd.components.students import DenoisingStudentConfig
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


def test_pointwise_output_couplings_see_only_their_first_convolution_window() -> None:
    # One coupling: its active half depends on the passive half through the sub-network, which sees 1 cell each way
    # with a 1x1 output and 2 with a 3x3 one (the fixed permutation only reorders the output channels).
    for output_kernel_size, reach in ((1, 1), (3, 2)):
        flow = _randomised_flow(4, 0, output_kernel_size=output_kernel_size, num_blocks=1)
        features = torch.zeros(1, 4, 15, 15, requires_grad=True)
        flow(features)[0][0, :, 7, 7].sum().backward()
        seen = features.grad.abs().sum(dim=(0, 1)).nonzero()
        assert (seen - 7).abs().max().item() == reach


@pytest.mark.parametrize(("hidden_ratio", "hidden_channels"), [(1.0, 20), (2.0, 40), (0.7, 14), (0.1, 8)])
def test_coupling_width_follows_hidden_ratio_as_the_students_does(hidden_ratio: float, hidden_channels: int) -> None:
    # A coupling's sub-network sees half of the 40 channels; its width is the same rule as the student's blocks.
    subnet = ConvFlow(40, num_blocks=1, hidden_ratio=hidden_ratio).flow.module_list[0].subnet
    assert (
        subnet[0].out_channels
        == hidden_channels
        == DenoisingStudentConfig(hidden_ratio=hidden_ratio).hidden_channels(20)
    )


def test_flow_nll_is_lower_for_in_distribution_latents() -> None:
    log_det = torch.zeros(4)
    assert flow_negative_log_likelihood(torch.zeros(4, 2, 3, 3), log_det) == 0
    assert flow_negative_log_likelihood(torch.full((4, 2, 3, 3), 3.0), log_det) == pytest.approx(4.5)


def test_flow_rejects_bad_condition_channels_and_output_kernel() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        ConvFlow(4, condition_channels=6)
    with pytest.raises(ValueError, match="output_kernel_size must be 1 or 3, got 5"):
        ConvFlow(4, output_kernel_size=5)


def _randomised_flow(
    channels: int, condition_channels: int, seed: int = 0, output_kernel_size: int = 3, num_blocks: int = 3
) -> ConvFlow:
    torch.manual_seed(seed)
    flow = ConvFlow(
        channels, num_blocks=num_blocks, condition_channels=condition_channels, output_kernel_size=output_kernel_size
    )
    for parameter in flow.parameters():
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.1)
    return flow.eval()


@pytest.mark.parametrize(
    ("channels", "condition_channels", "output_kernel_size"), [(6, 0, 3), (7, 8, 3), (24, 24, 3), (7, 8, 1)]
)
def test_flow_inference_path_matches_freia(channels: int, condition_channels: int, output_kernel_size: int) -> None:
    flow = _randomised_flow(channels, condition_channels, output_kernel_size=output_kernel_size)
    features = torch.randn(2, channels, 9, 6)
    reference = flow(features)  # gradients enabled: FrEIA's own forward
    with torch.no_grad():
        fast = flow(features)
    with torch.inference_mode():
        fast_again = flow(features)  # the cached constants
    for result in (fast, fast_again):
        torch.testing.assert_close(result[0], reference[0].detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result[1], reference[1].detach(), atol=1e-4, rtol=1e-5)


def test_flow_inference_constants_follow_weights_and_size() -> None:
    flow = _randomised_flow(6, 8)
    with torch.inference_mode():
        flow(torch.randn(1, 6, 5, 5))  # constants for 5 x 5 and the first weights
    with torch.no_grad():
        flow.flow.module_list[0].subnet[0].weight.add_(0.5)  # an optimiser step changes them in place
    flow.load_state_dict(_randomised_flow(6, 8, seed=1).state_dict())  # and so does loading a checkpoint
    features = torch.randn(2, 6, 4, 7)  # another size
    reference = flow(features)[0].detach()
    with torch.no_grad():
        torch.testing.assert_close(flow(features)[0], reference, atol=1e-5, rtol=1e-5)
        copied = copy.deepcopy(flow)  # pickled without the constants, which it rebuilds
        torch.testing.assert_close(copied(features)[0], reference, atol=1e-5, rtol=1e-5)


def test_flow_inference_constants_follow_an_in_place_step_of_the_output_convolutions() -> None:
    flow = _randomised_flow(6, 8)
    features = torch.randn(1, 6, 5, 5)
    with torch.inference_mode():
        before = flow(features)[0]  # constants built, 0.1 x the output weights among them
    with torch.no_grad():
        flow.flow.module_list[1].subnet[2].weight.mul_(3.0)  # an optimiser step on the output convolution alone
        after = flow(features)[0]
    reference = flow(features)[0].detach()  # FrEIA's forward with the new weights
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, reference, atol=1e-5, rtol=1e-5)
