"""DHKD presets: the offline EfficientNet-Lite0 configuration used by the demo and the benchmarks.

Example:
    >>> from anomalib_dhkd.models import offline_dhkd
    >>> model = offline_dhkd(image_size=64, max_epochs=2, teacher_warmup_epochs=1)  # doctest: +SKIP

"""

from typing import Any

from anomalib_dhkd.models.dhkd.lightning_model import Dhkd

OFFLINE_BACKBONE = "tf_efficientnet_lite0"
# timm exposes only blocks.0/1/2/4/6 of tf_efficientnet_lite0 as feature layers (strides 2, 4, 8, 16, 32).
OFFLINE_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
# With ImageNet weights the image score adds the stride-32 blocks.6 to the map's deepest layer (see Dhkd's
# score_layers); without them the model's default, all of OFFLINE_LAYERS, scores better.
OFFLINE_SCORE_LAYERS = ("blocks.4", "blocks.6")


def offline_dhkd(image_size: int = 256, pre_trained: bool = True, **overrides: Any) -> Dhkd:
    """Build DHKD on ``tf_efficientnet_lite0``, the backbone with offline weights.

    The anomaly map comes from :data:`OFFLINE_LAYERS`; with ImageNet weights the image score from
    :data:`OFFLINE_SCORE_LAYERS`, without them from the model's default.

    The ImageNet weights come from the local Hugging Face cache (``python -m anomalib_dhkd.weights install``).

    Args:
        image_size: Side of the square model input in pixels.
        pre_trained: Load the ImageNet weights into the encoder.
        **overrides: Further :class:`Dhkd` arguments, e.g. ``max_epochs``; they win over the preset's (``layers``,
            ``score_layers``).

    Returns:
        The model, with a pre-processor that resizes to ``image_size`` and normalises with the backbone's statistics.

    """
    arguments = {
        "backbone": OFFLINE_BACKBONE,
        "layers": OFFLINE_LAYERS,
        "pre_trained": pre_trained,
        "score_layers": offline_score_layers(pre_trained),
        "pre_processor": Dhkd.configure_pre_processor((image_size, image_size), OFFLINE_BACKBONE),
    }
    return Dhkd(**{**arguments, **overrides})


def offline_score_layers(pre_trained: bool) -> tuple[str, ...] | None:
    """Return the preset's ``score_layers``: :data:`OFFLINE_SCORE_LAYERS` with ImageNet weights, else ``None``."""
    return OFFLINE_SCORE_LAYERS if pre_trained else None
