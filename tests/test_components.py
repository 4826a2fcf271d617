"""Shared building blocks: Fourier transforms, dual-domain blocks, flow, affinity loss, noise, statistics, smoothing."""

import pytest
import torch
from anomalib.models.components import GaussianBlur2d

from anomalib_dhkd.components import (
    AffinityLoss,
    ConvFlow,
    DualDomainBlock,
    DualDomainStudent,
    FrequencyFilter,
    GaussianBlur,
    GaussianDistance,
    PositionStandardizer,
    add_feature_noise,
    affinity_matrix,
    channel_statistics,
    flow_negative_log_likelihood,
    irfft2,
    map_moments,
    rfft2,
    vector_moments,
)
from anomalib_dhkd.components.fourier import irfft2_matmul, rfft2_matmul


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (16, 5), (1, 4)])
def test_matmul_dft_equals_torch_fft(size: tuple[int, int]) -> None:
    features = torch.randn(2, 3, *size, dtype=torch.float64)
    spectrum = torch.fft.rfft2(features, norm="ortho")
    real, imag = rfft2_matmul(features)
    torch.testing.assert_close(real, spectrum.real)
    torch.testing.assert_close(imag, spectrum.imag)
    # A spectrum that is not Hermitian in its DC/Nyquist bins must be treated like torch does (imag dropped).
    noisy_real, noisy_imag = real + torch.randn_like(real), imag + torch.randn_like(imag)
    expected = torch.fft.irfft2(torch.complex(noisy_real, noisy_imag), s=size, norm="ortho")
    torch.testing.assert_close(irfft2_matmul(noisy_real, noisy_imag, size), expected)


def test_fft_round_trip_float32() -> None:
    features = torch.randn(2, 4, 12, 10)
    torch.testing.assert_close(irfft2(*rfft2(features), (12, 10)), features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(irfft2_matmul(*rfft2_matmul(features), (12, 10)), features, atol=1e-5, rtol=1e-5)


def test_export_uses_matmul_dft_not_fft_ops() -> None:
    module = FrequencyFilter(4).eval()
    example = torch.randn(1, 4, 8, 6)
    exported = torch.export.export(module, (example,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert not [target for target in targets if "fft" in target], targets
    torch.testing.assert_close(exported.module()(example), module(example), atol=1e-5, rtol=1e-4)


def test_dual_domain_block_starts_as_identity_and_keeps_shape() -> None:
    block = DualDomainBlock(6)
    features = torch.randn(2, 6, 9, 7)
    torch.testing.assert_close(block(features), features)
    student = DualDomainStudent(6, num_blocks=2, hidden_channels=8)
    output = student(features)
    assert output.shape == features.shape
    assert output.dtype == torch.float32
    output.sum().backward()
    assert all(p.grad is not None for p in student.parameters())


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


def test_affinity_loss_zero_for_identical_positive_otherwise() -> None:
    teacher = [torch.randn(2, 5, 8, 8), torch.randn(2, 7, 20, 24)]
    loss = AffinityLoss(max_size=16)
    assert loss(teacher, [t.clone() for t in teacher]).item() == pytest.approx(0.0, abs=1e-7)
    assert loss(teacher, [torch.randn_like(t) for t in teacher]).item() > 1e-3
    matrix = affinity_matrix(teacher[0])
    assert matrix.shape == (2, 64, 64)
    torch.testing.assert_close(torch.diagonal(matrix, dim1=1, dim2=2), torch.ones(2, 64))


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


def test_position_standardizer_is_identity_until_fitted_then_standardises_each_position() -> None:
    torch.manual_seed(0)
    standardizer = PositionStandardizer()
    maps = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(standardizer(maps), maps)
    scale = torch.linspace(0.5, 4.0, 64).view(1, 1, 8, 8)  # each position its own mean and spread
    normal = 10 * scale + scale * torch.randn(200, 1, 8, 8)
    standardizer.fit(map_moments(normal[:120]) + map_moments(normal[120:]))  # batch moments add up
    standardized = standardizer(normal)
    torch.testing.assert_close(standardized.mean(dim=0), torch.zeros(1, 8, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardized.std(dim=0), torch.ones(1, 8, 8), atol=1e-5, rtol=0)
    assert standardizer(torch.rand(2, 1, 16, 4)).shape == (2, 1, 16, 4)  # statistics resized to other map sizes
    with pytest.raises(ValueError, match="at least two normal images"):
        standardizer.fit(map_moments(normal[:1]))


def test_position_standardizer_floors_the_std_and_loads_fitted_statistics() -> None:
    standardizer = PositionStandardizer(min_std_ratio=0.1)
    normal = torch.randn(50, 1, 4, 4)
    normal[:, :, 0, 0] = 2.0  # a position that never varies
    standardizer.fit(map_moments(normal))
    assert standardizer.std[0, 0, 0, 0] == pytest.approx(0.1 * standardizer.std.mean().item(), rel=0.2)
    assert torch.isfinite(standardizer(torch.full((1, 1, 4, 4), 3.0))).all()
    fresh = PositionStandardizer()
    fresh.load_state_dict(standardizer.state_dict())
    probe = torch.rand(3, 1, 4, 4)
    torch.testing.assert_close(fresh(probe), standardizer(probe))


def test_channel_statistics_are_per_image_channel_means_then_standard_deviations() -> None:
    features = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    statistics = channel_statistics(features)
    assert statistics.shape == (2, 6)
    torch.testing.assert_close(statistics[1, 2], features[1, 2].mean())
    torch.testing.assert_close(statistics[0, 4], features[0, 1].std())


def test_gaussian_distance_is_zero_until_fitted_then_the_shrunk_mahalanobis_distance() -> None:
    torch.manual_seed(0)
    mixing = torch.randn(6, 6)
    normal = torch.randn(300, 6) @ mixing + torch.arange(6.0)  # correlated, off-centre
    distance = GaussianDistance(dim=6, shrinkage=0.1)
    assert distance(normal[:4]).eq(0).all()
    distance.fit(vector_moments(normal[:100]) + vector_moments(normal[100:]))  # batch moments add up
    covariance = normal.double().T.cov()
    shrunk = 0.9 * covariance + 0.1 * covariance.diagonal().mean() * torch.eye(6, dtype=torch.float64)
    probe = torch.randn(5, 6)
    centred = (probe - normal.mean(dim=0)).double()
    expected = ((centred @ torch.linalg.inv(shrunk)) * centred).sum(dim=1)
    torch.testing.assert_close(distance(probe), expected.float(), rtol=1e-4, atol=1e-5)
    outlier = normal.mean(dim=0) + 3 * mixing[0]  # far along a direction normal vectors vary in, by their units
    assert distance(outlier[None]).item() > distance(normal).median().item()
    with pytest.raises(ValueError, match="at least two normal images"):
        distance.fit(vector_moments(normal[:1]))


def test_gaussian_distance_fits_fewer_vectors_than_dimensions() -> None:
    """The shrinkage keeps the covariance invertible when a small training set meets wide latent statistics."""
    torch.manual_seed(0)
    distance = GaussianDistance(dim=64)
    distance.fit(vector_moments(torch.randn(10, 64)))
    assert torch.isfinite(distance.precision).all()
    assert torch.isfinite(distance(torch.randn(3, 64))).all()
    with pytest.raises(ValueError, match="shrinkage"):
        GaussianDistance(dim=4, shrinkage=0.0)


@pytest.mark.parametrize("sigma", [1.5, 12.0])
def test_gaussian_blur_equals_anomalibs_2d_blur_and_preserves_mass(sigma: float) -> None:
    torch.manual_seed(0)
    maps = torch.rand(2, 3, 64, 80)
    blur = GaussianBlur(sigma)
    torch.testing.assert_close(blur(maps), GaussianBlur2d(sigma, channels=3)(maps))  # same +-4 sigma kernel size
    constant = torch.full((1, 1, 64, 80), 0.7)
    torch.testing.assert_close(blur(constant), constant)  # a normalised kernel with a reflected border
    assert blur(maps).std() < maps.std()


def test_gaussian_blur_saves_no_kernel_and_drops_a_saved_one() -> None:
    blur = GaussianBlur(4.0)
    assert blur.kernel.shape == (1, 33)
    assert not blur.state_dict()
    blur.load_state_dict({"kernel": torch.zeros(1, 1, 33, 33)}, strict=True)  # written by GaussianBlur2d
    assert blur.kernel.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sigma must be positive"):
        GaussianBlur(0.0)
