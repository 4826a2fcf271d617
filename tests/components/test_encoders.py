"""Encoders: feature layers defaulted from the backbone, unknown layers rejected, BatchNorms folded."""

import pytest
import torch
from torch import nn

from anomalib_dhkd.components.encoders import (
    build_encoder,
    default_layers,
    encoder_layer_names,
    feature_layers,
    fold_batch_norms,
)
from anomalib_dhkd.components.encoders.folding import convolution_norm_pairs


@pytest.mark.parametrize(
    ("backbone", "layers"),
    [
        ("tf_efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"]),
        ("resnet18", ["layer1", "layer2", "layer3"]),
        ("wide_resnet50_2", ["layer1", "layer2", "layer3"]),
    ],
)
def test_default_layers_are_the_deepest_at_strides_4_8_and_16(backbone: str, layers: list[str]) -> None:
    assert default_layers(backbone) == layers
    strides = dict(feature_layers(backbone))
    assert [strides[name] for name in layers] == [4, 8, 16]


def test_feature_layers_of_efficientnet_lite0_are_shallowest_first_with_their_strides() -> None:
    assert feature_layers("tf_efficientnet_lite0") == [
        ("blocks.0", 2),
        ("blocks.1", 4),
        ("blocks.2", 8),
        ("blocks.4", 16),
        ("blocks.6", 32),
    ]
    assert default_layers("tf_efficientnet_lite0", strides=(8, 32)) == ["blocks.2", "blocks.6"]


def test_default_layers_of_a_backbone_without_a_stride_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"'resnet18' has no feature layer at stride\(s\) \[64\]"):
        default_layers("resnet18", strides=(4, 64))


def test_encoder_layer_names_append_extra_layers_once() -> None:
    assert encoder_layer_names(["blocks.1", "blocks.4"], ["blocks.6", "blocks.4"]) == [
        "blocks.1",
        "blocks.4",
        "blocks.6",
    ]


def test_build_encoder_rejects_an_unknown_layer_naming_the_valid_ones() -> None:
    valid = r"\['blocks.0', 'blocks.1', 'blocks.2', 'blocks.4', 'blocks.6'\]"
    with pytest.raises(ValueError, match=rf"no feature layer\(s\) \['blocks.3'\]\. Choose from {valid}"):
        build_encoder("tf_efficientnet_lite0", ["blocks.1", "blocks.3"], pre_trained=False)


def test_build_encoder_orders_layers_by_depth() -> None:
    encoder = build_encoder("tf_efficientnet_lite0", ["blocks.4", "blocks.1"], pre_trained=False)
    assert list(encoder.layers) == ["blocks.1", "blocks.4"]
    assert list(encoder.out_dims) == [24, 112]


def test_unused_blocks_are_dropped_with_the_same_features_and_old_weights_still_load() -> None:
    from anomalib.models.components import TimmFeatureExtractor

    torch.manual_seed(0)
    full = TimmFeatureExtractor("tf_efficientnet_lite0", ["blocks.1", "blocks.4"], pre_trained=False).eval()
    encoder = build_encoder("tf_efficientnet_lite0", ["blocks.1", "blocks.4"], pre_trained=False, fold_norms=False)
    assert len(encoder.feature_extractor.blocks) == 5  # blocks.5 and blocks.6 would only cost time
    assert sum(p.numel() for p in encoder.parameters()) < sum(p.numel() for p in full.parameters())
    encoder.load_state_dict(full.state_dict())  # a checkpoint with every block loads; the extra weights are skipped
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = full(images), encoder(images)
    assert list(actual) == list(expected)
    for name in expected:
        assert torch.equal(actual[name], expected[name])
    deepest = build_encoder("tf_efficientnet_lite0", ["blocks.6"], pre_trained=False)
    assert len(deepest.feature_extractor.blocks) == 7  # nothing to drop
    with pytest.raises(RuntimeError, match="Missing key"):  # a dropped block is skipped, a missing one is not
        encoder.load_state_dict({k: v for k, v in full.state_dict().items() if "blocks.4." not in k})


def with_random_norm_statistics(encoder: nn.Module) -> nn.Module:
    """Give every BatchNorm of ``encoder`` statistics and weights far from the identity (as after ImageNet)."""
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.3)
    return encoder


@pytest.mark.parametrize(
    ("backbone", "layers"),
    [("tf_efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"]), ("resnet18", ["layer1", "layer2", "layer3"])],
)
def test_folded_encoder_gives_the_same_features_and_loads_an_unfolded_checkpoint(
    backbone: str, layers: list[str]
) -> None:
    torch.manual_seed(0)
    unfolded = with_random_norm_statistics(build_encoder(backbone, layers, pre_trained=False, fold_norms=False))
    folded = build_encoder(backbone, layers, pre_trained=False)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert not any(parameter.requires_grad for parameter in folded.parameters())
    folded.load_state_dict(unfolded.state_dict())  # a checkpoint saved before the folding
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = unfolded(images), folded(images)
    for name in expected:  # float rounding, relative to the features' range
        assert (actual[name] - expected[name]).abs().max() <= 1e-5 * expected[name].abs().max()
    reloaded = build_encoder(backbone, layers, pre_trained=False)
    reloaded.load_state_dict(folded.state_dict())  # a checkpoint saved after it
    with torch.no_grad():
        assert all(torch.equal(reloaded(images)[name], actual[name]) for name in actual)


def test_timm_batch_norm_with_activation_keeps_its_activation_when_folded() -> None:
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNormAct2d(8, act_layer=nn.ReLU))
    encoder = with_random_norm_statistics(nn.ModuleDict({"feature_extractor": network})).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = network(images)
        fold_batch_norms(encoder)
        actual = encoder["feature_extractor"](images)
    assert (actual >= 0).all()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_only_a_norm_reading_a_convolution_output_nothing_else_reads_is_folded() -> None:
    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convolution = nn.Conv2d(3, 4, 1)
            self.norm = nn.BatchNorm2d(4)
            self.plain = nn.BatchNorm2d(3)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            features = self.convolution(images)
            return self.norm(features) + features + self.plain(images).mean()

    assert convolution_norm_pairs(Branching()) == []
    assert convolution_norm_pairs(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4))) == []
