"""EMAN teacher: running statistics follow the training images by the momentum rule, without gradients."""

import io

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from anomalib_dhkd.components.encoders import build_encoder
from anomalib_dhkd.components.teachers import EmaNormalizedEncoder


def small_encoder() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5))


def test_statistics_move_by_exactly_the_momentum_rule() -> None:
    encoder = small_encoder()
    teacher = EmaNormalizedEncoder(encoder, momentum=0.9).train()
    norm = encoder[1]
    before_mean, before_var = norm.running_mean.clone(), norm.running_var.clone()
    images = torch.rand(3, 3, 10, 10)
    with torch.no_grad():
        activations = encoder[0](images)
    teacher(images)
    batch_mean = activations.mean(dim=(0, 2, 3))
    batch_var = activations.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(norm.running_mean, 0.9 * before_mean + 0.1 * batch_mean)
    torch.testing.assert_close(norm.running_var, 0.9 * before_var + 0.1 * batch_var)


def test_the_teacher_normalises_with_running_statistics_and_has_no_gradients() -> None:
    encoder = small_encoder()
    teacher = EmaNormalizedEncoder(encoder, momentum=1.0).train()  # momentum 1: statistics fixed
    images = torch.rand(2, 3, 10, 10, requires_grad=True)
    output = teacher(images)
    assert not output.requires_grad
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(not m.training for m in encoder.modules())
    torch.testing.assert_close(output, encoder.eval()(images).detach())  # BN with running statistics only
    alone = teacher(images[:1])
    torch.testing.assert_close(alone, output[:1])  # an image's features do not depend on the batch


def test_evaluation_leaves_the_statistics_alone_and_reloads_identically() -> None:
    teacher = EmaNormalizedEncoder(small_encoder(), momentum=0.5).train()
    teacher(torch.rand(4, 3, 10, 10))
    teacher.eval()
    state = {name: value.clone() for name, value in teacher.state_dict().items()}
    images = torch.rand(2, 3, 10, 10)
    expected = teacher(images)
    assert all(torch.equal(value, teacher.state_dict()[name]) for name, value in state.items())
    reloaded = EmaNormalizedEncoder(small_encoder(), momentum=0.5)
    reloaded.load_state_dict(state)
    torch.testing.assert_close(reloaded.eval()(images), expected, rtol=0, atol=0)


def test_timm_batch_norm_act_layers_become_eman_layers() -> None:
    encoder = build_encoder("tf_efficientnet_lite0", ["blocks.1"], pre_trained=False, fold_norms=False)
    teacher = EmaNormalizedEncoder(encoder, momentum=0.5).train()
    stem_norm = encoder.feature_extractor.bn1  # timm's BatchNormAct2d
    before = stem_norm.running_mean.clone()
    teacher(torch.rand(2, 3, 32, 32))
    assert not torch.equal(stem_norm.running_mean, before)


def test_inference_runs_a_folded_copy_that_follows_the_statistics() -> None:
    encoder = build_encoder("tf_efficientnet_lite0", ["blocks.1", "blocks.2"], pre_trained=False, fold_norms=False)
    teacher = EmaNormalizedEncoder(encoder, momentum=0.5)
    images = torch.rand(2, 3, 64, 64)
    folded_copies = []
    for _ in range(2):
        teacher.train()(torch.rand(4, 3, 64, 64))  # the statistics move: the copy must follow
        teacher.eval()
        folded_copies.append(teacher.folded_encoder())
        assert not any(isinstance(module, _BatchNorm) for module in folded_copies[-1].modules())
        unfolded = encoder(images)  # the encoder itself, BatchNorms with the running statistics
        for name, features in teacher(images).items():
            torch.testing.assert_close(features, unfolded[name], rtol=1e-4, atol=1e-5)
    assert folded_copies[0] is not folded_copies[1]
    assert teacher.state_dict().keys() == {f"encoder.{name}" for name in encoder.state_dict()}


def test_loading_statistics_or_pickling_rebuilds_the_folded_copy() -> None:
    teacher = EmaNormalizedEncoder(small_encoder(), momentum=0.5).eval()
    images = torch.rand(2, 3, 10, 10)
    trained = EmaNormalizedEncoder(small_encoder(), momentum=0.5).train()
    trained(torch.rand(4, 3, 10, 10))
    stale = teacher(images)
    teacher.load_state_dict(trained.state_dict())
    expected = trained.eval()(images)
    assert not torch.allclose(stale, expected)
    torch.testing.assert_close(teacher(images), expected, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(teacher, buffer)  # anomalib's torch export pickles the whole model
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    assert reloaded._inference_cache == {}
    torch.testing.assert_close(reloaded(images), expected, rtol=0, atol=0)


def test_momentum_and_batch_norm_are_checked() -> None:
    with pytest.raises(ValueError, match="momentum"):
        EmaNormalizedEncoder(small_encoder(), momentum=1.5)
    with pytest.raises(ValueError, match="no BatchNorm"):
        EmaNormalizedEncoder(nn.Conv2d(3, 4, 3))
