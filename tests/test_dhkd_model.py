"""DHKD's torch model, loss and training behaviour."""

import collections
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
import yaml
from anomalib.data import ImageBatch, InferenceBatch

from anomalib_dhkd import Dhkd
from anomalib_dhkd.components import channel_statistics
from anomalib_dhkd.models import offline_dhkd
from anomalib_dhkd.models.dhkd import torch_model
from anomalib_dhkd.models.dhkd.anomaly_map import (
    AnomalyMapGenerator,
    discrepancy_coherence,
    squared_discrepancy,
    top_fraction_mean,
)
from anomalib_dhkd.models.dhkd.loss import DhkdLoss
from anomalib_dhkd.models.dhkd.presets import offline_preset
from anomalib_dhkd.models.dhkd.torch_model import (
    DhkdModel,
    DhkdTrainingOutput,
    coherence_windows,
    flow_condition_channels,
)

from .conftest import TINY_BACKBONE

TINY_MODEL = {
    "backbone": TINY_BACKBONE["backbone"],
    "layers": list(TINY_BACKBONE["layers"]),
    "pre_trained": False,
    "flow_blocks": 2,
    "condition_channels": 8,
}


@pytest.fixture(scope="module")
def model() -> DhkdModel:
    torch.manual_seed(0)
    return DhkdModel(**TINY_MODEL)


def test_training_outputs_have_feature_shapes(model: DhkdModel) -> None:
    output = model.train()(torch.rand(2, 3, 64, 64))
    assert isinstance(output, DhkdTrainingOutput)
    expected_channels = list(model.encoder.out_dims)
    assert [t.shape[1] for t in output.teacher_latents] == expected_channels
    assert [t.shape[-1] for t in output.teacher_latents] == [16, 8, 4]  # strides 4, 8, 16
    for teacher, log_det, student, target in zip(*output, strict=True):
        assert student.shape == target.shape == teacher.shape
        assert student.dtype == teacher.dtype == torch.float32
        assert log_det.shape == (2,)
        assert torch.isfinite(log_det).all()


@pytest.mark.parametrize("teacher_noise_level", [0.0, 0.3])
def test_teacher_fits_noisy_features_while_student_targets_are_clean_latents(teacher_noise_level: float) -> None:
    torch.manual_seed(0)
    model = DhkdModel(**TINY_MODEL, teacher_noise_level=teacher_noise_level).train()
    images = torch.rand(2, 3, 64, 64)
    output = model(images)
    with torch.no_grad():
        features = model.extract_features(images)
        clean_latents = [teacher(f)[0] for teacher, f in zip(model.teachers, features, strict=True)]
    for latent, target, clean in zip(output.teacher_latents, output.teacher_targets, clean_latents, strict=True):
        torch.testing.assert_close(target, clean)
        assert not target.requires_grad
        assert latent.requires_grad
        assert torch.equal(latent.detach(), clean) == (teacher_noise_level == 0)


def test_student_noise_is_correlated_and_teacher_noise_independent(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def record(features: torch.Tensor, level: float, correlation: float = 0.0) -> torch.Tensor:
        calls.append((level, correlation))
        return features

    monkeypatch.setattr(torch_model, "add_feature_noise", record)
    model = DhkdModel(**TINY_MODEL, noise_level=0.5, noise_correlation=1.5, teacher_noise_level=0.3).train()
    model(torch.rand(2, 3, 64, 64))
    assert calls == [(0.3, 0.0)] * 3 + [(0.5, 1.5)] * 3  # three scales: teacher dequantisation, then students


@pytest.mark.parametrize("setting", ["noise_level", "noise_correlation", "teacher_noise_level"])
def test_negative_noise_settings_are_rejected_at_construction(setting: str) -> None:
    with pytest.raises(ValueError, match=f"non-negative, got {{'{setting}': -0.5}}"):
        DhkdModel(**TINY_MODEL, **{setting: -0.5})


def test_inference_returns_map_and_score_at_input_size(model: DhkdModel) -> None:
    with torch.no_grad():
        output = model.eval()(torch.rand(3, 3, 96, 64))
    assert isinstance(output, InferenceBatch)
    assert output.anomaly_map.shape == (3, 1, 96, 64)
    assert output.pred_score.shape == (3,)
    assert (output.pred_score >= 0).all()
    assert (output.anomaly_map >= 0).all()


def test_convolutions_run_channels_last(model: DhkdModel) -> None:
    """Weights are channels-last (faster on CPU and GPU), so the activations after them are too."""
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convolutions)
    output = model.train()(torch.rand(2, 3, 64, 64))
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in output.student_latents)


def test_unknown_layer_is_an_error_not_a_warning() -> None:
    with pytest.raises(ValueError, match=r"no feature layer\(s\) \['blocks.3'\].*blocks.4"):
        DhkdModel(backbone="tf_efficientnet_lite0", layers=["blocks.1", "blocks.3"], pre_trained=False)


def test_loss_skips_student_terms_during_teacher_warmup(model: DhkdModel) -> None:
    output = model.train()(torch.rand(2, 3, 64, 64))
    loss = DhkdLoss()
    warmup, joint = loss(*output, train_student=False), loss(*output, train_student=True)
    assert warmup.distillation > 0
    assert warmup.affinity >= 0
    torch.testing.assert_close(joint.total, warmup.total + joint.distillation + joint.affinity)
    model.zero_grad()
    warmup.total.backward()
    assert all(p.grad is None for p in model.students.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.teachers.parameters())


@pytest.mark.parametrize(
    ("train_teacher", "train_student", "teacher_passes"), [(True, False, 1), (True, True, 2), (False, True, 1)]
)
def test_teacher_and_student_passes_per_training_step(
    train_teacher: bool, train_student: bool, teacher_passes: int
) -> None:
    """With teacher noise a joint step runs each teacher twice (noisy likelihood, clean target); a warm-up step and a
    frozen-teacher step once."""
    model = DhkdModel(**{**TINY_MODEL, "teacher_noise_level": 0.3}).train()
    runs = collections.Counter()
    for role, modules in (("teacher", model.teachers), ("student", model.students)):
        for module in modules:
            module.register_forward_pre_hook(lambda *_, role=role: runs.update([role]))
    output = model(torch.rand(2, 3, 64, 64), train_teacher=train_teacher, train_student=train_student)
    assert runs["teacher"] == len(model.teachers) * teacher_passes
    assert runs["student"] == len(model.students) * train_student
    assert (output.student_latents is None) == (not train_student)
    assert (output.teacher_targets is None) == (not train_student)


def test_loss_has_no_student_terms_without_students(model: DhkdModel) -> None:
    output = model.train()(torch.rand(2, 3, 64, 64), train_student=False)
    terms = DhkdLoss()(*output, train_student=False)
    assert terms.distillation is None
    assert terms.affinity is None
    torch.testing.assert_close(terms.total, terms.nll + 0.01 * terms.jacobian)
    with pytest.raises(ValueError, match="train_student=True"):
        DhkdLoss()(*output, train_student=True)
    with pytest.raises(ValueError, match="teacher and student"):
        model(torch.rand(2, 3, 64, 64), train_teacher=False, train_student=False)


def test_frozen_teacher_gets_no_gradient_and_sets_clean_targets(model: DhkdModel) -> None:
    """With the teacher frozen, one gradient-free teacher pass gives the targets, and only the students learn."""
    images = torch.rand(2, 3, 64, 64)
    output = model.train()(images, train_teacher=False)
    features = model.extract_features(images)
    outputs = zip(output.teacher_latents, output.teacher_targets, model.teachers, features, strict=True)
    for latent, target, teacher, f in outputs:
        assert target is latent
        torch.testing.assert_close(latent, teacher(f)[0])
    terms = DhkdLoss()(*output, train_teacher=False)
    torch.testing.assert_close(terms.total, terms.distillation + terms.affinity)
    assert terms.nll.isfinite()
    model.zero_grad()
    terms.total.backward()
    assert all(p.grad is None for p in model.teachers.parameters())
    assert all(p.grad is not None for p in model.students.parameters())
    with pytest.raises(ValueError, match="teacher and student"):
        DhkdLoss()(*output, train_teacher=False, train_student=False)


def test_flow_condition_is_capped_at_the_feature_channels() -> None:
    model = DhkdModel(backbone="tf_efficientnet_lite0", layers=["blocks.1", "blocks.4"], pre_trained=False)
    assert list(model.encoder.out_dims) == [24, 112]
    assert [t.condition_channels for t in model.teachers] == [24, 64]
    assert [flow_condition_channels(c, 64) for c in (3, 4, 30, 64, 320)] == [0, 4, 28, 64, 64]
    assert flow_condition_channels(320, 0) == 0


def test_anomaly_map_is_zero_where_student_equals_teacher() -> None:
    generator = AnomalyMapGenerator(sigma=0)
    teacher = [torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)]
    student = [t.clone() for t in teacher]
    maps = [squared_discrepancy(s, t) for s, t in zip(student, teacher, strict=True)]
    anomaly_map, score = generator(maps, maps[-1:], (32, 32))
    assert anomaly_map.abs().max() == 0
    assert score.abs().max() == 0
    student[0][..., 2, 3] += 5.0
    maps = [squared_discrepancy(s, t) for s, t in zip(student, teacher, strict=True)]
    anomaly_map, _ = generator(maps, maps[-1:], (32, 32))
    assert anomaly_map.shape == (1, 1, 32, 32)
    peak = torch.nonzero(anomaly_map[0, 0] == anomaly_map.max())[0]
    assert 8 <= peak[0] < 12
    assert 12 <= peak[1] < 16


def test_image_score_is_the_top_fraction_mean_of_the_score_map() -> None:
    generator = AnomalyMapGenerator(sigma=0, score_fraction=0.25)
    maps = [torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 4, 4)]
    maps[0][0] += 3.0  # shallow scale only: visible in the map, not in the score
    maps[1][1, :, 0, 0] += 2.0  # deepest scale: one cell of the 4 x 4 grid
    extra = torch.zeros(2, 1, 2, 2)
    extra[0] += 4.0  # a score-only scale: in the score, not in the map
    anomaly_map, score = generator(maps, [maps[-1], extra], (8, 8))
    assert anomaly_map[0].min() > 0
    torch.testing.assert_close(anomaly_map, generator.fuse(maps, (8, 8)))
    upsampled = [F.interpolate(m, size=(8, 8), mode="bilinear", align_corners=False) for m in (maps[-1], extra)]
    torch.testing.assert_close(score, top_fraction_mean((upsampled[0] + upsampled[1]) / 2, 0.25))
    assert score[0] == 2.0
    assert score[1] > 0
    _, map_score = generator(maps, None, (8, 8))  # no score scales: the score is taken from the map itself
    torch.testing.assert_close(map_score, top_fraction_mean(anomaly_map, 0.25))
    assert not torch.allclose(map_score, score)


@pytest.mark.parametrize("standardize_map", [False, True])
def test_scores_are_standardised_per_position_once_statistics_are_fitted(standardize_map: bool) -> None:
    """The score, and with ``standardize_map`` the map, use discrepancies standardised by normal images' statistics."""
    torch.manual_seed(0)
    model = DhkdModel(**TINY_MODEL, score_layers=["blocks.4"], standardize_map=standardize_map).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model(images)
        model.fit_normal_statistics(lambda: [torch.rand(4, 3, 64, 64), torch.rand(3, 3, 64, 64)])
        after = model(images)
        raw = model.latents_and_discrepancies(model.extract_features(images))[1]
    statistics = model.position_statistics[-1]
    assert statistics.mean.shape == (1, *raw[-1].shape[1:]) == (1, 1, 4, 4)
    assert not model.training  # fitting left the mode as it was
    generator = model.anomaly_map_generator
    deepest = F.interpolate(statistics(raw[-1]), size=(64, 64), mode="bilinear", align_corners=False)
    expected_score = top_fraction_mean(generator.blur(deepest), 0.01)
    torch.testing.assert_close(after.pred_score, expected_score)
    assert not torch.allclose(after.pred_score, before.pred_score)
    assert torch.equal(after.anomaly_map, before.anomaly_map) != standardize_map
    with pytest.raises(ValueError, match="empty"):
        model.fit_normal_statistics(list)


def test_score_of_a_standardised_map_on_its_own_layers_is_taken_from_the_map() -> None:
    """Without ImageNet weights (the default there) the map and the score use the same standardised scales."""
    torch.manual_seed(0)
    model = DhkdModel(**TINY_MODEL, score_layers=TINY_MODEL["layers"], standardize_map=True).eval()
    with torch.no_grad():
        model.fit_normal_statistics(lambda: [torch.rand(3, 3, 64, 64)])
        output = model(torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(output.pred_score, top_fraction_mean(output.anomaly_map, 0.01))


def test_score_layers_get_their_own_pairs_and_only_enter_the_score() -> None:
    """A score layer deeper than the map's is extracted in depth order, trained, and scored, but not mapped."""
    torch.manual_seed(0)
    model = DhkdModel(**TINY_MODEL, score_layers=["blocks.6", "blocks.4"], standardize_map=False)
    assert list(model.encoder.layers) == ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert (model.map_indices, model.score_indices) == ([0, 1, 2], [3, 2])
    features = model.extract_features(torch.rand(2, 3, 64, 64))
    assert [f.shape[1] for f in features] == [24, 40, 112, 320]
    assert len(model.training_outputs(features).student_latents) == 4
    model.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        model.fit_normal_statistics(lambda: [torch.rand(3, 3, 64, 64)])
        output = model(images)
        raw = model.latents_and_discrepancies(model.extract_features(images))[1]
    generator = model.anomaly_map_generator
    torch.testing.assert_close(output.anomaly_map, generator.blur(generator.fuse(raw[:3], (64, 64))))
    score_map = generator.blur(generator.fuse([model.position_statistics[i](raw[i]) for i in (3, 2)], (64, 64)))
    torch.testing.assert_close(output.pred_score, top_fraction_mean(score_map, 0.01))


def local_score(model: DhkdModel, images: torch.Tensor) -> torch.Tensor:
    """Top 1 % of the smoothed mean of the score layers' standardised discrepancies (without ``standardize_map``)."""
    raw = model.latents_and_discrepancies(model.extract_features(images))[1]
    generator = model.anomaly_map_generator
    standardised = [model.position_statistics[i](raw[i]) for i in model.score_indices]
    return top_fraction_mean(generator.blur(generator.fuse(standardised, images.shape[-2:])), 0.01)


def test_global_score_adds_latent_distances_standardised_on_the_training_images() -> None:
    """The image score sums the local score and each score layer's latent distance, standardised by normal images."""
    torch.manual_seed(0)
    model = DhkdModel(**TINY_MODEL, score_layers=["blocks.1", "blocks.2"], standardize_map=False, global_score=True)
    model.eval()
    normal = [torch.rand(64, 3, 64, 64), torch.rand(60, 3, 64, 64)]  # more images than latent statistics
    images = torch.rand(2, 3, 64, 64)
    fusion = model.score_fusion
    assert [d.mean.shape[0] for d in fusion.distances] == [2 * 24, 2 * 40]  # channel means and stds per layer
    with torch.no_grad():
        torch.testing.assert_close(model(images).pred_score, local_score(model, images))  # unfitted: local only
        model.fit_normal_statistics(lambda: normal)
        output = model(images)

        def sources(batch: torch.Tensor) -> torch.Tensor:
            latents = model.latents_and_discrepancies(model.extract_features(batch))[0]
            distances = [d(channel_statistics(latents[i])) for d, i in zip(fusion.distances, (0, 1), strict=True)]
            return torch.stack([local_score(model, batch), *distances], dim=1)

        calibrated = (sources(torch.cat(normal)) - fusion.source_mean) / fusion.source_std
    torch.testing.assert_close(calibrated.mean(dim=0), torch.zeros(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(calibrated.std(dim=0), torch.ones(3), atol=1e-3, rtol=0)
    expected = ((sources(images) - fusion.source_mean) / fusion.source_std).sum(dim=1)
    torch.testing.assert_close(output.pred_score, expected)
    assert fusion.distances[1](channel_statistics(torch.randn(2, 40, 8, 8))).gt(0).all()


def test_checkpoints_without_the_global_score_still_load_and_score_locally() -> None:
    """A state dict saved before ``global_score`` existed loads strictly; its model scores as it was trained to."""
    torch.manual_seed(0)
    older = DhkdModel(**TINY_MODEL).eval()  # no global score without ImageNet weights
    with torch.no_grad():
        older.fit_normal_statistics(lambda: [torch.rand(3, 3, 64, 64)])
    assert older.score_fusion is None
    model = DhkdModel(**TINY_MODEL, global_score=True).eval()
    model.load_state_dict(older.state_dict(), strict=True)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images).pred_score, older(images).pred_score)
    assert model.score_fusion.source_std.eq(1).all()


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


def test_map_coherence_adds_each_layers_coherence_scaled_to_the_local_maps_spread_on_normal_images() -> None:
    """Unfitted, the map is the local map; fitted, it adds each layer's smoothed coherence at weight x std ratio."""
    torch.manual_seed(0)
    model = DhkdModel(
        **TINY_MODEL, coherence_layers=["blocks.2", "blocks.4"], coherence_weight=[0.5, 0.25], coherence_window=3
    ).eval()
    assert model.score_fusion is None  # the coherence alone also fits in the second pass
    assert model.map_coherence.windows == [5, 3]  # 3 cells of stride 16 span 48 px: 6 of stride 8, rounded to odd
    normal = [torch.rand(4, 3, 64, 64), torch.rand(3, 3, 64, 64)]
    images = torch.rand(2, 3, 64, 64)
    generator = model.anomaly_map_generator

    def local_and_coherence_maps(batch: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        _, discrepancies, coherence = model.latents_and_discrepancies(model.extract_features(batch))
        local = generator.smooth([model.position_statistics[i](discrepancies[i]) for i in model.map_indices], (64, 64))
        return local, [generator.smooth([layer_coherence], (64, 64)) for layer_coherence in coherence]

    with torch.no_grad():
        local_map, _ = local_and_coherence_maps(images)
        torch.testing.assert_close(model(images).anomaly_map, local_map)  # unfitted
        assert model.latents_and_discrepancies(model.extract_features(images), with_coherence=False).coherence is None
        model.fit_normal_statistics(lambda: normal)
        model.fit_normal_statistics(lambda: normal)  # a refit starts from the local map again
        local_map, coherence_maps = local_and_coherence_maps(images)
        normal_local, normal_coherence = local_and_coherence_maps(torch.cat(normal))
        output = model(images).anomaly_map
    expected_scale = [
        weight * normal_local.double().std() / layer_map.double().std()
        for weight, layer_map in zip([0.5, 0.25], normal_coherence, strict=True)
    ]
    torch.testing.assert_close(model.map_coherence.scale.double(), torch.stack(expected_scale), rtol=1e-4, atol=0)
    scaled = sum(scale * layer_map for scale, layer_map in zip(model.map_coherence.scale, coherence_maps, strict=True))
    torch.testing.assert_close(output, local_map + scaled, rtol=1e-4, atol=1e-5)
    assert all(layer_map.shape == local_map.shape == (2, 1, 64, 64) for layer_map in coherence_maps)


def test_coherence_windows_span_the_same_pixels_rounded_down_to_odd_cells() -> None:
    assert coherence_windows(7, [16, 32, 8, 4], reference_stride=16) == [7, 3, 13, 27]
    assert coherence_windows(1, [32], reference_stride=16) == [1]  # never less than one cell


def test_map_coherence_rejects_bad_settings_and_old_checkpoints_map_as_before() -> None:
    """Bad coherence settings fail; state dicts saved without the coherence or with one scalar scale still load."""
    with pytest.raises(ValueError, match="odd"):
        DhkdModel(**TINY_MODEL, coherence_weight=0.25, coherence_window=4)
    with pytest.raises(ValueError, match="positive"):
        DhkdModel(**TINY_MODEL, coherence_weight=-1.0)
    with pytest.raises(
        ValueError, match=r"no teacher-student pair; choose from \['blocks.1', 'blocks.2', 'blocks.4'\]"
    ):
        DhkdModel(**TINY_MODEL, coherence_layers=["blocks.6"], coherence_weight=0.25)
    with pytest.raises(ValueError, match="one coherence weight per coherence layer"):
        DhkdModel(**TINY_MODEL, coherence_layers=["blocks.2", "blocks.4"], coherence_weight=[0.25])
    torch.manual_seed(0)
    older = DhkdModel(**TINY_MODEL).eval()  # no coherence without ImageNet weights
    with torch.no_grad():
        older.fit_normal_statistics(lambda: [torch.rand(3, 3, 64, 64)])
    assert older.map_coherence is None
    model = DhkdModel(**TINY_MODEL, coherence_weight=0.25).eval()
    model.load_state_dict(older.state_dict(), strict=True)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(images).anomaly_map, older(images).anomaly_map)
    one_layer = {**model.state_dict(), "map_coherence.scale": torch.tensor(2.0)}  # saved before coherence_layers
    model.load_state_dict(one_layer, strict=True)
    torch.testing.assert_close(model.map_coherence.scale, torch.tensor([2.0]))


@pytest.mark.parametrize(
    ("pre_trained", "teacher_noise_level", "standardize_map"), [(True, 0.3, False), (False, 0.0, True)]
)
def test_defaults_depend_on_the_encoders_weights(
    pre_trained: bool, teacher_noise_level: float, standardize_map: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Teacher noise, the global score and the map coherence only with ImageNet weights, a standardised map only
    without (measured)."""
    from anomalib_dhkd.models.dhkd import torch_model

    random_encoder = torch_model.build_encoder(TINY_MODEL["backbone"], TINY_MODEL["layers"], pre_trained=False)
    monkeypatch.setattr(torch_model, "build_encoder", lambda *_: random_encoder)  # no weights needed either way
    model = DhkdModel(backbone=TINY_MODEL["backbone"], layers=TINY_MODEL["layers"], pre_trained=pre_trained)
    assert (model.teacher_noise_level, model.standardize_map) == (teacher_noise_level, standardize_map)
    assert (model.score_fusion is not None) is pre_trained
    assert (model.map_coherence is not None) is pre_trained
    assert model.score_layers == (TINY_MODEL["layers"][-1:] if pre_trained else TINY_MODEL["layers"])
    explicit = DhkdModel(**TINY_MODEL, teacher_noise_level=0.1, standardize_map=False, global_score=True)
    assert (explicit.teacher_noise_level, explicit.standardize_map) == (0.1, False)
    assert explicit.score_fusion is not None


def test_top_fraction_mean_averages_the_highest_values() -> None:
    maps = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(top_fraction_mean(maps, 0.25), torch.tensor([13.5]))
    torch.testing.assert_close(top_fraction_mean(maps, 1e-6), torch.tensor([15.0]))
    torch.testing.assert_close(top_fraction_mean(maps, 1.0), torch.tensor([7.5]))
    with pytest.raises(ValueError, match="score_fraction"):
        AnomalyMapGenerator(score_fraction=0)


def test_invalid_schedule_is_rejected() -> None:
    with pytest.raises(ValueError, match="teacher_warmup_epochs"):
        Dhkd(**TINY_BACKBONE, pre_trained=False, teacher_warmup_epochs=5, max_epochs=5)
    with pytest.raises(ValueError, match="freeze_teacher=True needs teacher_warmup_epochs >= 1"):
        Dhkd(**TINY_BACKBONE, pre_trained=False, teacher_warmup_epochs=0)
    joint = Dhkd(**TINY_BACKBONE, pre_trained=False, teacher_warmup_epochs=0, freeze_teacher=False)
    assert joint.training_teacher
    assert joint.training_student


def test_non_finite_loss_stops_training_with_a_clear_error() -> None:
    """A diverged teacher (a NaN weight) stops training at the step, naming the loss term."""
    dhkd = Dhkd(**TINY_BACKBONE, pre_trained=False)
    with torch.no_grad():
        next(dhkd.model.teachers.parameters()).fill_(float("nan"))
    batch = ImageBatch(image=torch.rand(2, 3, 64, 64))
    with pytest.raises(FloatingPointError, match="DHKD loss term 'total' became nan"):
        dhkd.training_step(batch)


def test_pre_processor_uses_backbone_statistics() -> None:
    efficientnet = Dhkd.configure_pre_processor(backbone="tf_efficientnet_lite0")
    resnet = Dhkd.configure_pre_processor(image_size=(128, 96), backbone="wide_resnet50_2")
    assert list(efficientnet.transform.transforms[1].mean) == [0.5, 0.5, 0.5]
    assert list(resnet.transform.transforms[1].mean) == pytest.approx([0.485, 0.456, 0.406])
    assert list(resnet.transform.transforms[0].size) == [128, 96]


@pytest.mark.slow
@pytest.mark.usefixtures("pretrained_weights")
def test_trained_model_scores_planted_defects_higher(texture_root) -> None:
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
        DhkdModel(backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=True)


def test_score_map_is_smoothed_with_its_own_sigma() -> None:
    """``score_sigma`` smooths only the map the image score is taken from; an equal one adds no module."""
    torch.manual_seed(0)
    maps = [torch.rand(2, 1, 8, 8), torch.rand(2, 1, 4, 4)]
    generator = AnomalyMapGenerator(sigma=0, score_fraction=0.1, score_sigma=2.0)
    anomaly_map, score = generator(maps, None, (16, 16))
    fused = generator.fuse(maps, (16, 16))
    torch.testing.assert_close(anomaly_map, fused)
    torch.testing.assert_close(score, top_fraction_mean(generator.score_blur(fused), 0.1))
    assert (score < top_fraction_mean(fused, 0.1)).all()  # smoothing lowers the peaks
    same = AnomalyMapGenerator(sigma=4.0, score_sigma=4.0)
    assert same.score_blur is None
    assert not same.state_dict()  # kernels follow from sigma and are not saved
    older = {"blur.kernel": torch.ones(1, 1, 33, 33), "score_blur.kernel": torch.ones(1, 1, 97, 97)}
    AnomalyMapGenerator(sigma=4.0, score_sigma=12.0).load_state_dict(older, strict=True)  # saved by GaussianBlur2d


def test_offline_config_trains_the_pretrained_preset() -> None:
    """``configs/dhkd_offline.yaml`` names every setting of ``offline_dhkd``'s preset with ImageNet weights."""
    config = Path(__file__).parents[1] / "configs" / "dhkd_offline.yaml"
    init_args = yaml.safe_load(config.read_text())["model"]["init_args"]
    preset = offline_preset(pre_trained=True)
    assert init_args["pre_trained"] is True
    assert {name: init_args.get(name) for name in preset} == {
        name: list(value) if isinstance(value, tuple) else value for name, value in preset.items()
    }


def test_offline_preset_without_imagenet_weights_maps_two_raw_scales_and_scores_three() -> None:
    model = offline_dhkd(image_size=64, pre_trained=False, condition_channels=8).model
    assert list(model.encoder.layers) == ["blocks.1", "blocks.2", "blocks.4"]
    assert (model.map_indices, model.score_indices, model.standardize_map) == ([1, 2], [0, 1, 2], False)
    assert model.noise_level == 1.0  # the preset's, twice the model default
    assert model.noise_correlation == 1.0  # the model default: correlated over one feature cell
    assert {len(student.blocks) for student in model.students} == {1}  # the model default has 2
    generator = model.anomaly_map_generator
    kernel_sizes = (generator.blur.kernel.shape[-1], generator.score_blur.kernel.shape[-1])
    assert kernel_sizes == (97, 33)  # +-4 sigma at sigma 12 and 4
    with torch.no_grad():
        model.eval().fit_normal_statistics(lambda: [torch.rand(2, 3, 64, 64)])
        output = model(torch.rand(2, 3, 64, 64))
    assert output.anomaly_map.shape == (2, 1, 64, 64)
    assert torch.isfinite(output.pred_score).all()
