"""DHKD presets: the offline EfficientNet-Lite0 configuration used by the demo and the benchmarks.

The settings were measured with the benchmark suite (model README, "Settings that matter" and "Ablation of the
choices kept").

Example:
    >>> from anomalib_dhkd.models import offline_dhkd
    >>> model = offline_dhkd(image_size=64, max_epochs=2)  # offline ImageNet weights needed  # doctest: +SKIP

"""

from typing import Any

from anomalib_dhkd.components.scoring import ScoringConfig
from anomalib_dhkd.components.students import DenoisingStudentConfig
from anomalib_dhkd.models.dhkd.lightning_model import Dhkd

OFFLINE_BACKBONE = "tf_efficientnet_lite0"
# timm exposes only blocks.0/1/2/4/6 of tf_efficientnet_lite0 as feature layers (strides 2, 4, 8, 16, 32).
OFFLINE_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
# With ImageNet weights the image score adds the stride-32 blocks.6 to the map's deepest layer (see Dhkd's
# score_layers).
OFFLINE_SCORE_LAYERS = ("blocks.4", "blocks.6")
# With either encoder each student has one dual-domain block, not the model default's two: a smaller student
# reproduces the teacher less well off the normal manifold (model README, "Ablation of the choices kept").
ONE_BLOCK_STUDENT = DenoisingStudentConfig(blocks=1)
# The map adds the discrepancy coherence of blocks.4 (7 x 7 cells) and of the score-only blocks.6 (3 x 3 cells, the
# same 112 px), weighted 0.15 and 0.25 (model README, "Ablation of the choices kept").
PRETRAINED_ENCODER_PRESET: dict[str, Any] = {
    "layers": OFFLINE_LAYERS,
    "student": ONE_BLOCK_STUDENT,
    "scoring": ScoringConfig(
        score_layers=OFFLINE_SCORE_LAYERS, coherence_layers=OFFLINE_SCORE_LAYERS, coherence_weight=(0.15, 0.25)
    ),
}
# Without ImageNet weights the same three pairs are trained, but the map leaves out the stride-4 blocks.1, whose
# random features respond to normal texture, and fuses raw discrepancies smoothed more; the image score keeps all
# three standardised layers and the default smoothing. The student's input noise is doubled (model README).
RANDOM_ENCODER_PRESET: dict[str, Any] = {
    "layers": ("blocks.2", "blocks.4"),
    "student": DenoisingStudentConfig(blocks=1, noise_level=1.0),
    "scoring": ScoringConfig(score_layers=OFFLINE_LAYERS, standardize_map=False, blur_sigma=12.0, score_blur_sigma=4.0),
}


def offline_preset(pre_trained: bool) -> dict[str, Any]:
    """Return the offline preset's layers, student and scoring settings, with or without ImageNet weights.

    Args:
        pre_trained: Whether the encoder has ImageNet weights.

    Returns:
        A copy of :data:`PRETRAINED_ENCODER_PRESET` or :data:`RANDOM_ENCODER_PRESET`, as :class:`Dhkd` arguments.

    Example:
        >>> offline_preset(False)["layers"]
        ('blocks.2', 'blocks.4')

    """
    return dict(PRETRAINED_ENCODER_PRESET if pre_trained else RANDOM_ENCODER_PRESET)


def offline_dhkd(image_size: int = 256, pre_trained: bool = True, **overrides: Any) -> Dhkd:
    """Build DHKD on ``tf_efficientnet_lite0``, the backbone with offline weights.

    With ImageNet weights the anomaly map comes from :data:`OFFLINE_LAYERS` and the image score from
    :data:`OFFLINE_SCORE_LAYERS` (:data:`PRETRAINED_ENCODER_PRESET`); without them the layers and scoring are
    :data:`RANDOM_ENCODER_PRESET`'s (:func:`offline_preset`). Either way each student has one dual-domain block.

    The ImageNet weights come from the local Hugging Face cache (``python -m anomalib_dhkd.weights install``).

    Args:
        image_size: Side of the square model input in pixels.
        pre_trained: Load the ImageNet weights into the encoder.
        **overrides: Further :class:`Dhkd` arguments, e.g. ``max_epochs``; they win over the preset's.

    Returns:
        The model, with a pre-processor that resizes to ``image_size`` and normalises with the backbone's statistics.

    Example:
        >>> model = offline_dhkd(image_size=64, pre_trained=False, max_epochs=2)
        >>> model.hparams.layers, model.teacher_warmup_epochs
        (('blocks.2', 'blocks.4'), 1)

    """
    arguments = {
        "backbone": OFFLINE_BACKBONE,
        "pre_trained": pre_trained,
        **offline_preset(pre_trained),
        "pre_processor": Dhkd.configure_pre_processor((image_size, image_size), OFFLINE_BACKBONE),
    }
    return Dhkd(**{**arguments, **overrides})
