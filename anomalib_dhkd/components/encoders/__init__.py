"""Encoders: frozen pretrained (or random) feature extractors shared by the teachers of the family."""

from anomalib_dhkd.components.encoders.feature_extractor import (
    backbone_pre_processor,
    build_encoder,
    default_layers,
    encoder_layer_names,
    feature_layers,
)

__all__ = ["backbone_pre_processor", "build_encoder", "default_layers", "encoder_layer_names", "feature_layers"]
