"""Encoders: frozen (pretrained or random) feature extractors; the bottleneck and decoder of reverse distillation."""

from anomalib_dhkd.components.encoders.decoder import OneClassBottleneck, PyramidDecoder, stride_exponents
from anomalib_dhkd.components.encoders.feature_extractor import (
    backbone_pre_processor,
    build_encoder,
    default_layers,
    encoder_layer_names,
    feature_layers,
    without_unused_blocks,
)
from anomalib_dhkd.components.encoders.folding import fold_batch_norms, fold_network_batch_norms

__all__ = [
    "OneClassBottleneck",
    "PyramidDecoder",
    "backbone_pre_processor",
    "build_encoder",
    "default_layers",
    "encoder_layer_names",
    "feature_layers",
    "fold_batch_norms",
    "fold_network_batch_norms",
    "stride_exponents",
    "without_unused_blocks",
]
