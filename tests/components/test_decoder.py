"""The one-class bottleneck and pyramid decoder that mirror an encoder's feature pyramid."""

import pytest
import torch

from anomalib_dhkd.components.encoders import OneClassBottleneck, PyramidDecoder, build_encoder, stride_exponents


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "resnet18"])
def test_decoder_reconstructs_every_scale_of_a_real_encoder(backbone: str) -> None:
    encoder = build_encoder(
        backbone,
        ["blocks.1", "blocks.2", "blocks.4"] if "lite" in backbone else ["layer1", "layer2", "layer3"],
        pre_trained=False,
    )
    channels, strides = list(encoder.out_dims), encoder.feature_extractor.feature_info.reduction()
    features = list(encoder(torch.rand(2, 3, 64, 64)).values())
    bottleneck, decoder = OneClassBottleneck(channels, strides), PyramidDecoder(channels, strides)
    embedding = bottleneck(features)
    assert embedding.shape == (2, channels[-1], *features[-1].shape[-2:])
    reconstructed = decoder(embedding)
    assert [r.shape for r in reconstructed] == [f.shape for f in features]
    sum(r.square().mean() for r in reconstructed).backward()
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in [*bottleneck.parameters(), *decoder.parameters()]
    )


def test_image_sides_that_are_not_multiples_of_the_deepest_stride() -> None:
    """At 72 px the stride-8 and stride-16 scales are 9 x 9 and 5 x 5: the decoder returns exactly those sizes."""
    encoder = build_encoder("resnet18", ["layer2", "layer3"], pre_trained=False)
    features = list(encoder(torch.rand(1, 3, 72, 72)).values())
    sizes = [tuple(f.shape[-2:]) for f in features]
    assert sizes == [(9, 9), (5, 5)]
    decoder = PyramidDecoder(list(encoder.out_dims), strides=[8, 16])
    assert [tuple(r.shape[-2:]) for r in decoder(torch.rand(1, 256, 5, 5), sizes=sizes)] == sizes
    assert [tuple(r.shape[-2:]) for r in decoder(torch.rand(1, 256, 5, 5))] == [(10, 10), (5, 5)]  # as decoded


def test_strides_must_be_increasing_powers_of_two() -> None:
    assert stride_exponents([2, 4, 32]) == [1, 2, 5]
    for strides in ([4, 12], [8, 4], [1, 2]):
        with pytest.raises(ValueError, match="increasing powers of two"):
            stride_exponents(strides)
