"""Feature noise for denoising students: level, spatial correlation and memory layout."""

import pytest
import torch

from anomalib_dhkd.components.noise import add_feature_noise


def test_feature_noise_is_relative_to_channel_scale() -> None:
    torch.manual_seed(0)
    features = torch.randn(8, 2, 16, 16) * torch.tensor([1.0, 100.0]).view(1, 2, 1, 1)
    noise = add_feature_noise(features, 0.5) - features
    ratio = noise.std(dim=(0, 2, 3)) / features.std(dim=(0, 2, 3))
    torch.testing.assert_close(ratio, torch.tensor([0.5, 0.5]), atol=0.03, rtol=0)
    assert torch.equal(add_feature_noise(features, 0.0), features)
    with pytest.raises(ValueError, match="non-negative"):
        add_feature_noise(features, -1.0)
    with pytest.raises(ValueError, match="non-negative"):
        add_feature_noise(features, 0.5, correlation=-1.0)


@pytest.mark.parametrize("correlation", [0.0, 1.0, 2.0])
def test_correlated_feature_noise_keeps_its_level_and_correlates_neighbours(correlation: float) -> None:
    torch.manual_seed(0)
    features = torch.randn(16, 2, 48, 48) * torch.tensor([1.0, 100.0]).view(1, 2, 1, 1)
    noise = (add_feature_noise(features, 0.5, correlation) - features) / features.std(dim=(0, 2, 3), keepdim=True)
    torch.testing.assert_close(noise.std(dim=(0, 2, 3)), torch.tensor([0.5, 0.5]), atol=0.03, rtol=0)
    # Gaussian-smoothed white noise correlates by exp(-d^2 / (4 sigma^2)) at a distance of d cells.
    for shift in (1, 2):
        neighbours = (noise[..., shift:] * noise[..., :-shift]).mean() / noise.pow(2).mean()
        expected = torch.exp(torch.tensor(-(shift**2) / (4 * correlation**2))) if correlation else torch.tensor(0.0)
        torch.testing.assert_close(neighbours, expected, atol=0.03, rtol=0)


def test_correlated_feature_noise_reaches_maps_smaller_than_its_kernel() -> None:
    torch.manual_seed(0)
    features = torch.randn(64, 3, 2, 3)
    noise = add_feature_noise(features, 1.0, correlation=2.0) - features
    assert noise.shape == features.shape
    assert noise.abs().min() > 0  # every position perturbed, up to the border


def test_feature_noise_of_a_seed_does_not_depend_on_memory_layout() -> None:
    features = torch.randn(2, 3, 4, 5)
    torch.manual_seed(1)
    contiguous = add_feature_noise(features, 0.5)
    torch.manual_seed(1)
    channels_last = add_feature_noise(features.contiguous(memory_format=torch.channels_last), 0.5)
    torch.testing.assert_close(channels_last, contiguous)
    torch.manual_seed(1)
    correlated = add_feature_noise(features, 0.5, correlation=1.0)
    torch.manual_seed(1)
    correlated_channels_last = add_feature_noise(features.contiguous(memory_format=torch.channels_last), 0.5, 1.0)
    torch.testing.assert_close(correlated_channels_last, correlated)
