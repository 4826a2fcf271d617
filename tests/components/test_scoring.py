"""Scoring: per-position and global statistics, smoothing, map fusion, coherence and the discrepancy scorer."""

import copy

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d

from anomalib_dhkd.components.scoring import (
    DiscrepancyScorer,
    GaussianBlur,
    GaussianDistance,
    MapFusion,
    PositionStandardizer,
    ScoringConfig,
    ScoringInput,
    channel_statistics,
    coherence_windows,
    discrepancy_coherence,
    map_moments,
    squared_discrepancy,
    top_fraction_mean,
    vector_moments,
)

# The layers, channels and strides of tf_efficientnet_lite0 the tiny DHKD extracts; blocks.6 only as a score layer.
LAYERS = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")
CHANNELS = (24, 40, 112, 320)
STRIDES = (4, 8, 16, 32)
MAP_LAYERS = list(LAYERS[:3])
# What DHKD decides without ImageNet weights: every map layer scored, a standardised map, no global score or coherence.
RANDOM_ENCODER_SCORING = {
    "score_layers": MAP_LAYERS,
    "standardize_map": True,
    "global_score": False,
    "coherence_weight": 0.0,
}


def tiny_scorer(num_layers: int = 3, **settings: object) -> DiscrepancyScorer:
    """A scorer of the first ``num_layers`` tiny layers that maps the first three; ``settings`` override defaults."""
    config = ScoringConfig(**{**RANDOM_ENCODER_SCORING, **settings})
    return DiscrepancyScorer(LAYERS[:num_layers], CHANNELS[:num_layers], STRIDES[:num_layers], MAP_LAYERS, config)


def scoring_input(batch: int, num_layers: int = 3, image_size: int = 64) -> ScoringInput:
    """Random teacher features of a batch at ``image_size`` and students that miss them by noise."""
    sizes = [image_size // stride for stride in STRIDES[:num_layers]]
    teacher = [torch.randn(batch, c, size, size) for c, size in zip(CHANNELS, sizes, strict=False)]
    student = [t + 0.5 * torch.randn_like(t) for t in teacher]
    return ScoringInput(teacher, student, (image_size, image_size))


def concatenated(batches: list[ScoringInput]) -> ScoringInput:
    """The batches as one, layer by layer."""
    teacher = [torch.cat(layer) for layer in zip(*(batch.teacher for batch in batches), strict=True)]
    student = [torch.cat(layer) for layer in zip(*(batch.student for batch in batches), strict=True)]
    return ScoringInput(teacher, student, batches[0].image_size)


def raw_discrepancies(inputs: ScoringInput) -> list[torch.Tensor]:
    return [squared_discrepancy(s, t) for s, t in zip(inputs.student, inputs.teacher, strict=True)]


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_blur_by_matrix_products_equals_the_exported_convolutions(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    blur = GaussianBlur(4.0)
    for shape in [(3, 2, 37, 50), (1, 1, 256, 256)]:
        maps = torch.rand(shape, dtype=dtype)
        torch.testing.assert_close(blur(maps), blur.separable(maps))
    assert len(blur._matrices) == 2  # one pair per map size, reused
    blur(torch.rand(2, 1, 37, 50, dtype=dtype))
    assert len(blur._matrices) == 2


def test_gaussian_blur_matrices_built_in_inference_mode_serve_training_and_are_not_pickled() -> None:
    blur = GaussianBlur(2.0)
    with torch.inference_mode():
        blur(torch.rand(1, 1, 20, 24))
    maps = torch.rand(1, 1, 20, 24, requires_grad=True)
    blur(maps).sum().backward()  # would fail on matrices that are inference tensors
    torch.testing.assert_close(maps.grad.sum(), torch.tensor(20.0 * 24.0))  # each output is a weighted mean
    assert copy.deepcopy(blur)._matrices == {}


def test_gaussian_blur_saves_no_kernel_and_drops_a_saved_one() -> None:
    blur = GaussianBlur(4.0)
    assert blur.kernel.shape == (1, 33)
    assert not blur.state_dict()
    blur.load_state_dict({"kernel": torch.zeros(1, 1, 33, 33)}, strict=True)  # written by GaussianBlur2d
    assert blur.kernel.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sigma must be positive"):
        GaussianBlur(0.0)


def test_anomaly_map_is_zero_where_student_equals_teacher() -> None:
    fusion = MapFusion(sigma=0)
    teacher = [torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)]
    student = [t.clone() for t in teacher]
    maps = [squared_discrepancy(s, t) for s, t in zip(student, teacher, strict=True)]
    anomaly_map, score = fusion(maps, maps[-1:], (32, 32))
    assert anomaly_map.abs().max() == 0
    assert score.abs().max() == 0
    student[0][..., 2, 3] += 5.0
    maps = [squared_discrepancy(s, t) for s, t in zip(student, teacher, strict=True)]
    anomaly_map, _ = fusion(maps, maps[-1:], (32, 32))
    assert anomaly_map.shape == (1, 1, 32, 32)
    peak = torch.nonzero(anomaly_map[0, 0] == anomaly_map.max())[0]
    assert 8 <= peak[0] < 12
    assert 12 <= peak[1] < 16


def test_image_score_is_the_top_fraction_mean_of_the_score_map() -> None:
    fusion = MapFusion(sigma=0, score_fraction=0.25)
    maps = [torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 4, 4)]
    maps[0][0] += 3.0  # shallow scale only: visible in the map, not in the score
    maps[1][1, :, 0, 0] += 2.0  # deepest scale: one cell of the 4 x 4 grid
    extra = torch.zeros(2, 1, 2, 2)
    extra[0] += 4.0  # a score-only scale: in the score, not in the map
    anomaly_map, score = fusion(maps, [maps[-1], extra], (8, 8))
    assert anomaly_map[0].min() > 0
    torch.testing.assert_close(anomaly_map, fusion.fuse(maps, (8, 8)))
    upsampled = [F.interpolate(m, size=(8, 8), mode="bilinear", align_corners=False) for m in (maps[-1], extra)]
    torch.testing.assert_close(score, top_fraction_mean((upsampled[0] + upsampled[1]) / 2, 0.25))
    assert score[0] == 2.0
    assert score[1] > 0
    _, map_score = fusion(maps, None, (8, 8))  # no score scales: the score is taken from the map itself
    torch.testing.assert_close(map_score, top_fraction_mean(anomaly_map, 0.25))
    assert not torch.allclose(map_score, score)


def test_product_fusion_keeps_only_what_every_scale_sees() -> None:
    maps = [torch.full((1, 1, 8, 8), 0.5), torch.full((1, 1, 4, 4), 0.5)]
    maps[0][..., 0:2, 0:2] = 4.0  # a spot only the shallow scale sees
    maps[0][..., 4:8, 4:8] = 2.0  # a region both scales see
    maps[1][..., 2:4, 2:4] = 2.0
    mean_map, _ = MapFusion(sigma=0)(maps, None, (8, 8))
    product_map, product_score = MapFusion(sigma=0, layer_fusion="product")(maps, None, (8, 8))
    assert mean_map[..., 0, 0] > mean_map[..., 7, 7]  # the mean ranks the one-scale spot first
    assert product_map[..., 0, 0] < product_map[..., 7, 7]  # the product ranks the region both scales see first
    torch.testing.assert_close(product_map[..., 7, 7], torch.tensor([[4.0]]))
    torch.testing.assert_close(product_score, top_fraction_mean(product_map, 0.01))
    with pytest.raises(ValueError, match="map_fusion"):
        MapFusion(layer_fusion="max")


def test_top_fraction_mean_averages_the_highest_values() -> None:
    maps = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(top_fraction_mean(maps, 0.25), torch.tensor([13.5]))
    torch.testing.assert_close(top_fraction_mean(maps, 1e-6), torch.tensor([15.0]))
    torch.testing.assert_close(top_fraction_mean(maps, 1.0), torch.tensor([7.5]))
    with pytest.raises(ValueError, match="score_fraction"):
        MapFusion(score_fraction=0)


def test_score_map_is_smoothed_with_its_own_sigma() -> None:
    """``score_sigma`` smooths only the map the image score is taken from; an equal one adds no module."""
    torch.manual_seed(0)
    maps = [torch.rand(2, 1, 8, 8), torch.rand(2, 1, 4, 4)]
    fusion = MapFusion(sigma=0, score_fraction=0.1, score_sigma=2.0)
    anomaly_map, score = fusion(maps, None, (16, 16))
    fused = fusion.fuse(maps, (16, 16))
    torch.testing.assert_close(anomaly_map, fused)
    torch.testing.assert_close(score, top_fraction_mean(fusion.score_blur(fused), 0.1))
    assert (score < top_fraction_mean(fused, 0.1)).all()  # smoothing lowers the peaks
    same = MapFusion(sigma=4.0, score_sigma=4.0)
    assert same.score_blur is None
    assert not same.state_dict()  # kernels follow from sigma and are not saved
    older = {"blur.kernel": torch.ones(1, 1, 33, 33), "score_blur.kernel": torch.ones(1, 1, 97, 97)}
    MapFusion(sigma=4.0, score_sigma=12.0).load_state_dict(older, strict=True)  # saved by GaussianBlur2d


def test_discrepancy_coherence_is_one_for_alike_misses_and_small_for_a_single_one() -> None:
    """A residual alike over the neighbourhood is fully coherent; one strong miss among 49 cells is 1/49 coherent."""
    alike = torch.randn(2, 5, 1, 1).expand(2, 5, 12, 12)
    torch.testing.assert_close(discrepancy_coherence(alike, 7), torch.ones(2, 1, 12, 12))
    spike = torch.zeros(1, 5, 12, 12)
    spike[0, :, 6, 6] = torch.randn(5)
    coherence = discrepancy_coherence(spike, 7)
    torch.testing.assert_close(coherence[0, 0, 6, 6], torch.tensor(1 / 49))
    assert coherence.shape == (1, 1, 12, 12)
    noise = discrepancy_coherence(torch.randn(4, 8, 16, 16), 5)
    assert noise.ge(0).all()
    assert noise.le(1 + 1e-6).all()
    assert noise.mean() < 0.2


def test_coherence_windows_span_the_same_pixels_rounded_down_to_odd_cells() -> None:
    assert coherence_windows(7, [16, 32, 8, 4], reference_stride=16) == [7, 3, 13, 27]
    assert coherence_windows(1, [32], reference_stride=16) == [1]  # never less than one cell


def test_scorer_maps_and_scores_at_the_image_size_before_and_after_fitting() -> None:
    torch.manual_seed(0)
    scorer = tiny_scorer()
    inputs = scoring_input(3, image_size=96)
    for _ in range(2):
        output = scorer(inputs)
        assert output.anomaly_map.shape == (3, 1, 96, 96)
        assert output.pred_score.shape == (3,)
        assert torch.isfinite(output.pred_score).all()
        scorer.fit(lambda: [scoring_input(4, image_size=96)])


def test_scorer_rejects_undecided_settings_and_layers_it_is_not_given() -> None:
    with pytest.raises(ValueError, match=r"\['standardize_map'\] are undecided"):
        tiny_scorer(standardize_map=None)
    with pytest.raises(ValueError, match=r"score_layers \['blocks.6'\] have no teacher-student pair"):
        tiny_scorer(score_layers=["blocks.6"])


@pytest.mark.parametrize("standardize_map", [False, True])
def test_scores_are_standardised_per_position_once_statistics_are_fitted(standardize_map: bool) -> None:
    """The score, and with ``standardize_map`` the map, use discrepancies standardised by normal images' statistics."""
    torch.manual_seed(0)
    scorer = tiny_scorer(score_layers=["blocks.4"], standardize_map=standardize_map)
    inputs = scoring_input(2)
    before = scorer(inputs)
    scorer.fit(lambda: [scoring_input(4), scoring_input(3)])
    after = scorer(inputs)
    raw = raw_discrepancies(inputs)
    statistics = scorer.position_statistics[-1]
    assert statistics.mean.shape == (1, *raw[-1].shape[1:]) == (1, 1, 4, 4)
    deepest = F.interpolate(statistics(raw[-1]), size=(64, 64), mode="bilinear", align_corners=False)
    expected_score = top_fraction_mean(scorer.map_fusion.blur(deepest), 0.01)
    torch.testing.assert_close(after.pred_score, expected_score)
    assert not torch.allclose(after.pred_score, before.pred_score)
    assert torch.equal(after.anomaly_map, before.anomaly_map) != standardize_map
    with pytest.raises(ValueError, match="empty"):
        scorer.fit(list)


def test_overall_std_is_the_spread_of_the_fitted_maps_over_positions_and_images() -> None:
    torch.manual_seed(0)
    scale = torch.linspace(0.5, 4.0, 16).view(1, 1, 4, 4)
    normal = 3 * scale + scale * torch.randn(400, 1, 4, 4)  # positions differ in mean and spread
    standardizer = PositionStandardizer()
    standardizer.fit(map_moments(normal))
    assert standardizer.overall_std().item() == pytest.approx(normal.std().item(), rel=0.01)


def with_layer_scaled(inputs: ScoringInput, layer: int, factor: float) -> ScoringInput:
    """The inputs with one layer's teacher and student features multiplied by ``factor`` (its ``d_k`` by its square)."""
    teacher, student = list(inputs.teacher), list(inputs.student)
    teacher[layer], student[layer] = factor * teacher[layer], factor * student[layer]
    return ScoringInput(teacher, student, inputs.image_size)


@pytest.mark.parametrize("scale_map_layers", [False, True])
def test_scaled_map_layers_weigh_each_layer_by_its_spread_on_normal_images(scale_map_layers: bool) -> None:
    """With ``scale_map_layers`` a layer's raw scale no longer decides its weight in the map; the score is unchanged."""
    torch.manual_seed(0)
    normal, probe = [scoring_input(4), scoring_input(3)], scoring_input(2)
    maps, scores = [], []
    for factor in (1.0, 10.0):
        scorer = tiny_scorer(standardize_map=False, score_layers=["blocks.4"], scale_map_layers=scale_map_layers)
        scorer.fit(lambda factor=factor: [with_layer_scaled(batch, 0, factor) for batch in normal])
        output = scorer(with_layer_scaled(probe, 0, factor))
        maps.append(output.anomaly_map)
        scores.append(output.pred_score)
    torch.testing.assert_close(scores[0], scores[1])  # the score layer is not scaled
    if scale_map_layers:
        torch.testing.assert_close(maps[1], maps[0], rtol=1e-4, atol=1e-6)
    else:
        assert not torch.allclose(maps[1], maps[0], rtol=1e-2)


def test_score_of_a_standardised_map_on_its_own_layers_is_taken_from_the_map() -> None:
    """Without ImageNet weights (the default there) the map and the score use the same standardised scales."""
    torch.manual_seed(0)
    scorer = tiny_scorer(score_layers=MAP_LAYERS, standardize_map=True)
    scorer.fit(lambda: [scoring_input(3)])
    output = scorer(scoring_input(2))
    torch.testing.assert_close(output.pred_score, top_fraction_mean(output.anomaly_map, 0.01))


def test_score_layers_only_enter_the_score() -> None:
    """A score layer deeper than the map's is scored, in the order given, but not mapped."""
    torch.manual_seed(0)
    scorer = tiny_scorer(num_layers=4, score_layers=["blocks.6", "blocks.4"], standardize_map=False)
    assert (scorer.map_indices, scorer.score_indices) == ([0, 1, 2], [3, 2])
    scorer.fit(lambda: [scoring_input(3, num_layers=4)])
    inputs = scoring_input(2, num_layers=4)
    output = scorer(inputs)
    raw = raw_discrepancies(inputs)
    fusion = scorer.map_fusion
    torch.testing.assert_close(output.anomaly_map, fusion.blur(fusion.fuse(raw[:3], (64, 64))))
    score_map = fusion.blur(fusion.fuse([scorer.position_statistics[i](raw[i]) for i in (3, 2)], (64, 64)))
    torch.testing.assert_close(output.pred_score, top_fraction_mean(score_map, 0.01))


def local_score(scorer: DiscrepancyScorer, inputs: ScoringInput) -> torch.Tensor:
    """Top 1 % of the smoothed mean of the score layers' standardised discrepancies (without ``standardize_map``)."""
    raw = raw_discrepancies(inputs)
    standardised = [scorer.position_statistics[i](raw[i]) for i in scorer.score_indices]
    return top_fraction_mean(scorer.map_fusion.smooth(standardised, inputs.image_size), 0.01)


def test_global_score_adds_latent_distances_standardised_on_the_training_images() -> None:
    """The image score sums the local score and each score layer's latent distance, standardised by normal images."""
    torch.manual_seed(0)
    scorer = tiny_scorer(score_layers=["blocks.1", "blocks.2"], standardize_map=False, global_score=True)
    normal = [scoring_input(64), scoring_input(60)]  # more images than latent statistics
    inputs = scoring_input(2)
    fusion = scorer.score_fusion
    assert [d.mean.shape[0] for d in fusion.distances] == [2 * 24, 2 * 40]  # channel means and stds per layer
    torch.testing.assert_close(scorer(inputs).pred_score, local_score(scorer, inputs))  # unfitted: local only
    scorer.fit(lambda: normal)
    output = scorer(inputs)

    def sources(batch: ScoringInput) -> torch.Tensor:
        distances = [d(channel_statistics(batch.teacher[i])) for d, i in zip(fusion.distances, (0, 1), strict=True)]
        return torch.stack([local_score(scorer, batch), *distances], dim=1)

    calibrated = (torch.cat([sources(batch) for batch in normal]) - fusion.source_mean) / fusion.source_std
    torch.testing.assert_close(calibrated.mean(dim=0), torch.zeros(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(calibrated.std(dim=0), torch.ones(3), atol=1e-3, rtol=0)
    expected = ((sources(inputs) - fusion.source_mean) / fusion.source_std).sum(dim=1)
    torch.testing.assert_close(output.pred_score, expected)
    assert fusion.distances[1](channel_statistics(torch.randn(2, 40, 8, 8))).gt(0).all()


def test_checkpoints_without_the_global_score_still_load_and_score_locally() -> None:
    """A state dict saved before ``global_score`` existed loads strictly; its scorer scores as it was fitted to."""
    torch.manual_seed(0)
    older = tiny_scorer()  # no global score without ImageNet weights
    older.fit(lambda: [scoring_input(3)])
    assert older.score_fusion is None
    scorer = tiny_scorer(global_score=True)
    scorer.load_state_dict(older.state_dict(), strict=True)
    inputs = scoring_input(2)
    torch.testing.assert_close(scorer(inputs).pred_score, older(inputs).pred_score)
    assert scorer.score_fusion.source_std.eq(1).all()


def test_map_coherence_adds_each_layers_coherence_scaled_to_the_local_maps_spread_on_normal_images() -> None:
    """Unfitted, the map is the local map; fitted, it adds each layer's smoothed coherence at weight x std ratio."""
    torch.manual_seed(0)
    scorer = tiny_scorer(coherence_layers=["blocks.2", "blocks.4"], coherence_weight=[0.5, 0.25], coherence_window=3)
    assert scorer.score_fusion is None  # the coherence alone also fits in the second pass
    assert scorer.map_coherence.windows == [5, 3]  # 3 cells of stride 16 span 48 px: 6 of stride 8, rounded to odd
    normal = [scoring_input(4), scoring_input(3)]
    inputs = scoring_input(2)
    fusion = scorer.map_fusion

    def local_and_coherence_maps(batch: ScoringInput) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raw = raw_discrepancies(batch)
        local = fusion.smooth([scorer.position_statistics[i](raw[i]) for i in scorer.map_indices], (64, 64))
        residuals = [batch.student[i] - batch.teacher[i] for i in scorer.coherence_indices]
        coherence = [discrepancy_coherence(r, w) for r, w in zip(residuals, scorer.map_coherence.windows, strict=True)]
        return local, [fusion.smooth([layer_coherence], (64, 64)) for layer_coherence in coherence]

    local_map, _ = local_and_coherence_maps(inputs)
    torch.testing.assert_close(scorer(inputs).anomaly_map, local_map)  # unfitted
    scorer.fit(lambda: normal)
    scorer.fit(lambda: normal)  # a refit starts from the local map again
    local_map, coherence_maps = local_and_coherence_maps(inputs)
    # The calibration pass maps without the coherence: the local map, also once fitted.
    torch.testing.assert_close(scorer._map_and_sources(inputs, add_coherence=False)[0], local_map)
    normal_local, normal_coherence = local_and_coherence_maps(concatenated(normal))
    output = scorer(inputs).anomaly_map
    expected_scale = [
        weight * normal_local.double().std() / layer_map.double().std()
        for weight, layer_map in zip([0.5, 0.25], normal_coherence, strict=True)
    ]
    torch.testing.assert_close(scorer.map_coherence.scale.double(), torch.stack(expected_scale), rtol=1e-4, atol=0)
    scaled = sum(scale * layer_map for scale, layer_map in zip(scorer.map_coherence.scale, coherence_maps, strict=True))
    torch.testing.assert_close(output, local_map + scaled, rtol=1e-4, atol=1e-5)
    assert all(layer_map.shape == local_map.shape == (2, 1, 64, 64) for layer_map in coherence_maps)


def test_map_coherence_rejects_bad_settings_and_old_checkpoints_map_as_before() -> None:
    """Bad coherence settings fail; state dicts saved without the coherence or with one scalar scale still load."""
    with pytest.raises(ValueError, match="odd"):
        tiny_scorer(coherence_weight=0.25, coherence_window=4)
    with pytest.raises(ValueError, match="positive"):
        tiny_scorer(coherence_weight=-1.0)
    with pytest.raises(
        ValueError, match=r"no teacher-student pair; choose from \['blocks.1', 'blocks.2', 'blocks.4'\]"
    ):
        tiny_scorer(coherence_layers=["blocks.6"], coherence_weight=0.25)
    with pytest.raises(ValueError, match="one coherence weight per coherence layer"):
        tiny_scorer(coherence_layers=["blocks.2", "blocks.4"], coherence_weight=[0.25])
    torch.manual_seed(0)
    older = tiny_scorer()  # no coherence without ImageNet weights
    older.fit(lambda: [scoring_input(3)])
    assert older.map_coherence is None
    scorer = tiny_scorer(coherence_weight=0.25)
    scorer.load_state_dict(older.state_dict(), strict=True)
    inputs = scoring_input(2)
    torch.testing.assert_close(scorer(inputs).anomaly_map, older(inputs).anomaly_map)
    one_layer = {**scorer.state_dict(), "map_coherence.scale": torch.tensor(2.0)}  # saved before coherence_layers
    scorer.load_state_dict(one_layer, strict=True)
    torch.testing.assert_close(scorer.map_coherence.scale, torch.tensor([2.0]))
