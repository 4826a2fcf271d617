"""Frozen timm feature extractors whose layers are checked, ordered and defaulted from the backbone itself.

anomalib's :class:`~anomalib.models.components.TimmFeatureExtractor` drops a layer name the backbone does not have
with only a warning; a model silently trained on fewer scales than configured is worse than an error. The layer
names, their channels and their strides come from timm's ``feature_info``, read on the ``meta`` device so that no
weights are allocated (0.08 s instead of 0.9 s for ``wide_resnet50_2``).

In DHKD ("Unsupervised Image Anomaly Detection with Denoised Heterogeneous Networks via Knowledge Distillation") the
frozen encoder's features are what the flow teacher models and the student denoises, one teacher-student pair per
layer (model README, "Architecture as built").
"""

from collections.abc import Sequence

import timm
import torch
from anomalib.models.components import TimmFeatureExtractor
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Compose, Normalize, Resize

from anomalib_dhkd.components.encoders.folding import fold_batch_norms

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Strides of the default feature layers: anomalib's ResNet default ``layer1``-``layer3`` (4, 8, 16) for any backbone.
DEFAULT_STRIDES = (4, 8, 16)


def feature_layers(backbone: str) -> list[tuple[str, int]]:
    """``(name, stride)`` of each feature layer timm exposes for ``backbone``, shallowest first.

    Args:
        backbone: timm model name.

    Returns:
        The layer names as :class:`~anomalib.models.components.TimmFeatureExtractor` takes them, with their strides.

    Example:
        >>> feature_layers("tf_efficientnet_lite0")
        [('blocks.0', 2), ('blocks.1', 4), ('blocks.2', 8), ('blocks.4', 16), ('blocks.6', 32)]

    """
    with torch.device("meta"):
        info = timm.create_model(backbone, features_only=True, pretrained=False).feature_info
    return list(zip(info.module_name(), info.reduction(), strict=True))


def default_layers(backbone: str, strides: Sequence[int] = DEFAULT_STRIDES) -> list[str]:
    """Return the deepest feature layer of ``backbone`` at each of ``strides`` (``layer1``-``layer3`` of a ResNet).

    Args:
        backbone: timm model name.
        strides: Strides to take a layer at. Defaults to ``(4, 8, 16)``.

    Returns:
        One layer name per stride, in the order of ``strides``.

    Raises:
        ValueError: If the backbone has no feature layer at one of the strides.

    Example:
        >>> default_layers("tf_efficientnet_lite0")
        ['blocks.1', 'blocks.2', 'blocks.4']
        >>> default_layers("resnet18")
        ['layer1', 'layer2', 'layer3']

    """
    deepest = {stride: name for name, stride in feature_layers(backbone)}
    missing = [stride for stride in strides if stride not in deepest]
    if missing:
        msg = f"Backbone {backbone!r} has no feature layer at stride(s) {missing}; give its layers explicitly."
        raise ValueError(msg)
    return [deepest[stride] for stride in strides]


def encoder_layer_names(layers: Sequence[str], extra_layers: Sequence[str]) -> list[str]:
    """Layers an encoder extracts: ``layers``, then the ``extra_layers`` not among them.

    Args:
        layers: The model's main layers (its anomaly map's).
        extra_layers: Further layers some part of the model needs (score-only layers).

    Returns:
        The union without duplicates, ``layers`` first.

    Example:
        >>> encoder_layer_names(["blocks.2", "blocks.4"], ["blocks.4", "blocks.6"])
        ['blocks.2', 'blocks.4', 'blocks.6']

    """
    return list(dict.fromkeys([*layers, *extra_layers]))


def build_encoder(
    backbone: str, layers: Sequence[str], pre_trained: bool, fold_norms: bool = True
) -> TimmFeatureExtractor:
    """Build a frozen timm feature extractor of ``layers``, shallowest first, and fail clearly on a bad layer name.

    timm returns features in depth order whatever the order of the names, so the layers are sorted by depth here.
    Pretrained weights that cannot be fetched (an offline machine) end in one line saying what to do instead.

    Args:
        backbone: timm model name.
        layers: Names of the feature layers to extract, in any order.
        pre_trained: Load the backbone's ImageNet weights (from the Hugging Face cache when offline).
        fold_norms: Fold the BatchNorm layers into the convolutions before them (:func:`~.folding.fold_batch_norms`),
            the same features faster; ``False`` for a teacher whose normalisation statistics still move (EMAN).
            Defaults to ``True``.

    Returns:
        The frozen extractor; called on images it returns a dictionary of feature maps keyed by layer name.

    Raises:
        ValueError: If the backbone has no feature layer of one of the names, listing the valid ones.
        RuntimeError: If the ImageNet weights cannot be loaded.

    Example:
        >>> import torch
        >>> encoder = build_encoder("resnet18", ["layer2", "layer1"], pre_trained=False)
        >>> {name: tuple(f.shape) for name, f in encoder(torch.rand(1, 3, 64, 64)).items()}
        {'layer1': (1, 64, 16, 16), 'layer2': (1, 128, 8, 8)}

    """
    available = [name for name, _ in feature_layers(backbone)]
    unknown = sorted(set(layers) - set(available))
    if unknown:
        msg = f"Backbone {backbone!r} has no feature layer(s) {unknown}. Choose from {available}."
        raise ValueError(msg)
    try:
        encoder = TimmFeatureExtractor(
            backbone=backbone, layers=sorted(layers, key=available.index), pre_trained=pre_trained, requires_grad=False
        )
    except OSError as error:  # huggingface_hub's LocalEntryNotFoundError and network errors are OSErrors
        msg = (
            f"Could not load ImageNet weights for backbone {backbone!r} ({type(error).__name__}); this machine may be "
            "offline. Use backbone='tf_efficientnet_lite0' after `python -m anomalib_dhkd.weights install`, or "
            "pre_trained=False."
        )
        raise RuntimeError(msg) from error
    # anomalib's requires_grad=False only runs the forward without gradients; the parameters are frozen here too, so
    # that an optimiser or a parameter count sees the encoder as the fixed part it is.
    encoder = without_unused_blocks(encoder).requires_grad_(False)
    return fold_batch_norms(encoder) if fold_norms else encoder


def without_unused_blocks(encoder: TimmFeatureExtractor) -> TimmFeatureExtractor:
    """Drop the blocks after the deepest extracted layer from a timm EfficientNet or MobileNet feature extractor.

    timm's ``EfficientNetFeatures`` (``features_only`` for EfficientNet, MobileNet and their kin) runs every block
    whatever layers are asked for, so features up to ``blocks.4`` of ``tf_efficientnet_lite0`` also pay for
    ``blocks.5`` and ``blocks.6``. Without them the features are the same, bit for bit. Checkpoints saved with the
    dropped blocks still load: their weights are skipped. Other extractors (timm's ``FeatureListNet`` for ResNets
    already stops at the deepest layer) are returned as they are.

    Args:
        encoder: anomalib's extractor.

    Returns:
        The same extractor, its unused blocks removed.

    Example:
        >>> encoder = TimmFeatureExtractor("tf_efficientnet_lite0", ["blocks.2"], pre_trained=False)
        >>> len(encoder.feature_extractor.blocks), len(without_unused_blocks(encoder).feature_extractor.blocks)
        (7, 3)

    """
    extractor = encoder.feature_extractor
    blocks = getattr(extractor, "blocks", None)
    stage_outputs = getattr(extractor, "_stage_out_idx", None)  # block i's output is stage i + 1
    if not isinstance(blocks, torch.nn.Sequential) or not stage_outputs or extractor.feature_hooks is not None:
        return encoder
    kept = max(stage_outputs)
    if kept >= len(blocks):
        return encoder
    extractor.blocks = blocks[:kept]
    encoder._register_load_state_dict_pre_hook(_skip_dropped_blocks, with_module=True)
    return encoder


def _skip_dropped_blocks(encoder: TimmFeatureExtractor, state_dict: dict, prefix: str, *_args: object) -> None:
    """Load-state-dict pre-hook of :func:`without_unused_blocks`: drop the weights of blocks the encoder no longer has.

    A module-level function, so that a model holding the hook still pickles (anomalib's torch export).
    """
    kept = len(encoder.feature_extractor.blocks)
    blocks = f"{prefix}feature_extractor.blocks."
    for key in [key for key in state_dict if key.startswith(blocks)]:
        if int(key[len(blocks) :].split(".", 1)[0]) >= kept:
            del state_dict[key]


def backbone_pre_processor(backbone: str, image_size: tuple[int, int] | None = None) -> PreProcessor:
    """Resize to ``image_size`` (default 256 x 256) and normalise with ``backbone``'s pretrained mean and std.

    ``tf_efficientnet_lite0`` was trained on inputs scaled to ``[-1, 1]`` (mean and std 0.5), not with ImageNet's
    statistics, which anomalib's default pre-processor uses for every backbone.

    Args:
        backbone: timm model name; a backbone without a pretrained configuration gets ImageNet's mean and std.
        image_size: ``(H, W)`` the images are resized to. Defaults to ``(256, 256)``.

    Returns:
        A pre-processor for the model's ``pre_processor`` argument.

    Example:
        >>> backbone_pre_processor("tf_efficientnet_lite0").transform.transforms[-1]
        Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], inplace=False)

    """
    config = timm.get_pretrained_cfg(backbone)
    mean, std = (config.mean, config.std) if config else IMAGENET_MEAN_STD
    return PreProcessor(transform=Compose([Resize(image_size or (256, 256), antialias=True), Normalize(mean, std)]))
