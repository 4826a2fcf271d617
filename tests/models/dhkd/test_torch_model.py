"""DHKD's torch model and loss: training outputs, noise, flows, defaults by encoder and legacy checkpoints."""

import collections
import re
from collections.abc import Sequence

import pytest
import torch
from anomalib.data import InferenceBatch

from anomalib_dhkd.components.encoders import build_encoder
from anomalib_dhkd.components.scoring import ScoringConfig
from anomalib_dhkd.components.students import DenoisingStudentConfig
from anomalib_dhkd.components.teachers import FlowTeacherConfig
from anomalib_dhkd.models.dhkd import config, torch_model
from anomalib_dhkd.models.dhkd.loss import DhkdLoss
from anomalib_dhkd.models.dhkd.torch_model import DhkdModel, DhkdTrainingOutput, flow_condition_channels
from tests.conftest import TINY_BACKBONE, TINY_TEACHER

TINY_LAYERS = list(TINY_BACKBONE["layers"])


def tiny_model(
    teacher: FlowTeacherConfig | None = None,
    student: DenoisingStudentConfig | None = None,
    scoring: ScoringConfig | None = None,
    layers: Sequence[str] = TINY_LAYERS,
) -> DhkdModel:
    """A DHKD model on the tiny random encoder, 2 flow blocks, its settings resolved as ``Dhkd`` resolves them."""
    teacher, scoring = config.resolve(
        False, layers, teacher or FlowTeacherConfig(**TINY_TEACHER), scoring or ScoringConfig()
    )
    return DhkdModel(
        TINY_BACKBONE["backbone"], list(layers), False, teacher, student or DenoisingStudentConfig(), scoring
    )


def with_teacher_noise(level: float) -> FlowTeacherConfig:
    return FlowTeacherConfig(**TINY_TEACHER, noise_level=level)


@pytest.fixture(scope="module")
def model() -> DhkdModel:
    torch.manual_seed(0)
    return tiny_model()


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
    model = tiny_model(teacher=with_teacher_noise(teacher_noise_level)).train()
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
    student = DenoisingStudentConfig(noise_level=0.5, noise_correlation=1.5)
    model = tiny_model(teacher=with_teacher_noise(0.3), student=student).train()
    model(torch.rand(2, 3, 64, 64))
    assert calls == [(0.3, 0.0)] * 3 + [(0.5, 1.5)] * 3  # three scales: teacher dequantisation, then students


@pytest.mark.parametrize(
    ("teacher", "student", "setting"),
    [
        (with_teacher_noise(0.0), DenoisingStudentConfig(noise_level=-0.5), "student.noise_level"),
        (with_teacher_noise(0.0), DenoisingStudentConfig(noise_correlation=-0.5), "student.noise_correlation"),
        (with_teacher_noise(-0.5), DenoisingStudentConfig(), "teacher.noise_level"),
    ],
)
def test_negative_noise_settings_are_rejected_at_construction(
    teacher: FlowTeacherConfig, student: DenoisingStudentConfig, setting: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(f"non-negative numbers, got {{'{setting}': -0.5}}")):
        tiny_model(teacher=teacher, student=student)


def test_inference_returns_map_and_score_at_input_size(model: DhkdModel) -> None:
    with torch.no_grad():
        output = model.eval()(torch.rand(3, 3, 96, 64))
    assert isinstance(output, InferenceBatch)
    assert output.anomaly_map.shape == (3, 1, 96, 64)
    assert output.pred_score.shape == (3,)
    assert (output.pred_score >= 0).all()
    assert (output.anomaly_map >= 0).all()


def test_inference_is_the_scorer_of_the_scoring_input(model: DhkdModel) -> None:
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        inputs = model.eval().scoring_input(images)
        features = model.extract_features(images)
        output, expected = model(images), model.scorer(inputs)
    assert tuple(inputs.image_size) == (64, 64)
    for latent, prediction, teacher, student, f in zip(
        inputs.teacher, inputs.student, model.teachers, model.students, features, strict=True
    ):
        torch.testing.assert_close(latent, teacher(f)[0])
        torch.testing.assert_close(prediction, student(f))
    torch.testing.assert_close(output.anomaly_map, expected.anomaly_map)
    torch.testing.assert_close(output.pred_score, expected.pred_score)


def test_convolutions_run_channels_last(model: DhkdModel) -> None:
    """Weights are channels-last (faster on CPU and GPU), so the activations after them are too."""
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convolutions)
    output = model.train()(torch.rand(2, 3, 64, 64))
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in output.student_latents)


def test_unknown_layer_is_an_error_not_a_warning() -> None:
    with pytest.raises(ValueError, match=r"no feature layer\(s\) \['blocks.3'\].*blocks.4"):
        tiny_model(layers=["blocks.1", "blocks.3"])


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
    model = tiny_model(teacher=with_teacher_noise(0.3)).train()
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
    model = tiny_model(teacher=FlowTeacherConfig(), layers=["blocks.1", "blocks.4"])
    assert list(model.encoder.out_dims) == [24, 112]
    assert [t.condition_channels for t in model.teachers] == [24, 64]
    assert [flow_condition_channels(c, 64) for c in (3, 4, 30, 64, 320)] == [0, 4, 28, 64, 64]
    assert flow_condition_channels(320, 0) == 0


def test_score_layers_get_their_own_pairs_in_depth_order() -> None:
    """A score layer deeper than the map's is extracted in depth order and trained; the scorer maps it out."""
    torch.manual_seed(0)
    model = tiny_model(scoring=ScoringConfig(score_layers=["blocks.6", "blocks.4"], standardize_map=False))
    assert list(model.encoder.layers) == ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert (model.scorer.map_indices, model.scorer.score_indices) == ([0, 1, 2], [3, 2])
    features = model.extract_features(torch.rand(2, 3, 64, 64))
    assert [f.shape[1] for f in features] == [24, 40, 112, 320]
    assert len(model.distillation_outputs(features).student_latents) == 4
    with torch.no_grad():
        inputs = model.eval().scoring_input(torch.rand(2, 3, 64, 64))
    assert [t.shape[1] for t in inputs.teacher] == [s.shape[1] for s in inputs.student] == [24, 40, 112, 320]


def test_fitting_normal_statistics_fits_the_scorer_and_keeps_the_mode() -> None:
    torch.manual_seed(0)
    model = tiny_model()
    for training in (False, True):
        model.train(training)
        model.fit_normal_statistics(lambda: [torch.rand(4, 3, 64, 64), torch.rand(3, 3, 64, 64)])
        assert model.training is training  # fitting left the mode as it was
        assert not model.scorer.position_statistics[-1].std.eq(1).all()
    with pytest.raises(ValueError, match="empty"):
        model.fit_normal_statistics(list)


@pytest.mark.parametrize(
    ("pre_trained", "teacher_noise_level", "standardize_map"), [(True, 0.3, False), (False, 0.0, True)]
)
def test_defaults_depend_on_the_encoders_weights(
    pre_trained: bool, teacher_noise_level: float, standardize_map: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Teacher noise, the global score and the map coherence only with ImageNet weights, a standardised map only
    without (measured)."""
    random_encoder = build_encoder(TINY_BACKBONE["backbone"], TINY_LAYERS, pre_trained=False)
    monkeypatch.setattr(torch_model, "build_encoder", lambda *_: random_encoder)  # no weights needed either way
    teacher, scoring = config.resolve(pre_trained, TINY_LAYERS, FlowTeacherConfig(), ScoringConfig())
    assert teacher.noise_level == config.TEACHER_NOISE_LEVEL[pre_trained] == teacher_noise_level
    assert scoring.coherence_weight == config.COHERENCE_WEIGHT[pre_trained]
    assert scoring.global_score is pre_trained
    assert scoring.score_layers == (TINY_LAYERS[-1:] if pre_trained else TINY_LAYERS)
    model = DhkdModel(TINY_BACKBONE["backbone"], TINY_LAYERS, pre_trained, teacher, DenoisingStudentConfig(), scoring)
    assert (model.teacher_noise_level, model.scorer.standardize_map) == (teacher_noise_level, standardize_map)
    assert (model.scorer.score_fusion is not None) is pre_trained
    assert (model.scorer.map_coherence is not None) is pre_trained
    assert model.scorer.score_indices == ([2] if pre_trained else [0, 1, 2])
    explicit = ScoringConfig(standardize_map=False, global_score=True)
    teacher, scoring = config.resolve(pre_trained, TINY_LAYERS, FlowTeacherConfig(noise_level=0.1), explicit)
    assert (teacher.noise_level, scoring.standardize_map, scoring.global_score) == (0.1, False, True)
    model = DhkdModel(TINY_BACKBONE["backbone"], TINY_LAYERS, pre_trained, teacher, DenoisingStudentConfig(), scoring)
    assert (model.teacher_noise_level, model.scorer.standardize_map) == (0.1, False)
    assert model.scorer.score_fusion is not None


def test_a_model_with_undecided_settings_is_rejected() -> None:
    student = DenoisingStudentConfig()
    teacher, resolved = config.resolve(False, TINY_LAYERS, FlowTeacherConfig(), ScoringConfig())
    with pytest.raises(ValueError, match=r"\['score_layers', 'standardize_map', 'global_score', 'coherence_weight'\]"):
        DhkdModel(TINY_BACKBONE["backbone"], TINY_LAYERS, False, teacher, student, ScoringConfig())
    scoring = ScoringConfig(score_layers=TINY_LAYERS)  # standardize_map, global_score, coherence_weight undecided
    with pytest.raises(ValueError, match=r"\['standardize_map', 'global_score', 'coherence_weight'\] are undecided"):
        DhkdModel(TINY_BACKBONE["backbone"], TINY_LAYERS, False, teacher, student, scoring)
    with pytest.raises(ValueError, match=re.escape("got {'teacher.noise_level': None}")):
        DhkdModel(TINY_BACKBONE["backbone"], TINY_LAYERS, False, FlowTeacherConfig(), student, resolved)


def test_checkpoints_with_the_scoring_modules_outside_the_scorer_load_into_it() -> None:
    """State dicts saved before the scorer existed (``position_statistics.0.mean``, ``score_fusion.source_mean``,
    ``map_coherence.scale``, GaussianBlur2d kernels of ``anomaly_map_generator``) load strictly into ``scorer.*``."""
    torch.manual_seed(0)
    scoring = ScoringConfig(global_score=True, coherence_weight=0.25)  # one coherence layer: the deepest map layer
    fitted = tiny_model(scoring=scoring).eval()
    fitted.fit_normal_statistics(lambda: [torch.rand(4, 3, 64, 64), torch.rand(3, 3, 64, 64)])
    legacy = {}
    for key, value in fitted.state_dict().items():
        legacy[key.replace("scorer.map_fusion.", "anomaly_map_generator.").replace("scorer.", "")] = value
    assert {"position_statistics.0.mean", "score_fusion.source_mean", "map_coherence.scale"} <= set(legacy)
    assert not [key for key in legacy if key.startswith("scorer.")]
    legacy["map_coherence.scale"] = legacy["map_coherence.scale"].reshape(())  # saved as a scalar before
    legacy["anomaly_map_generator.blur.kernel"] = torch.ones(1, 1, 33, 33)  # saved by GaussianBlur2d
    model = tiny_model(scoring=scoring).eval()
    model.load_state_dict(legacy, strict=True)
    scorer = model.scorer
    torch.testing.assert_close(scorer.position_statistics[0].mean, fitted.scorer.position_statistics[0].mean)
    torch.testing.assert_close(scorer.score_fusion.source_mean, fitted.scorer.score_fusion.source_mean)
    torch.testing.assert_close(scorer.map_coherence.scale, fitted.scorer.map_coherence.scale)
    assert scorer.map_coherence.scale.gt(0).all()
    assert not scorer.score_fusion.source_std.eq(1).all()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        output, expected = model(images), fitted(images)
    torch.testing.assert_close(output.anomaly_map, expected.anomaly_map)
    torch.testing.assert_close(output.pred_score, expected.pred_score)
    model.load_state_dict(fitted.state_dict(), strict=True)  # the new keys load as they are
