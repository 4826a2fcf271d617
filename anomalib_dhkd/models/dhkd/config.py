"""DHKD's defaults that depend on the encoder, decided in one place.

With ImageNet weights the teacher is trained on dequantised features (noise 0.3), the image score adds the score
layers' global latent statistics, and the map adds the discrepancy coherence of its deepest layer (weight 0.25).
A random encoder's features behave otherwise: each of these hurt there, while standardising the map per position
helped (measurements in the model README). The score uses the deepest map layer with ImageNet weights (the most
semantic) and every map layer without.
"""

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from anomalib_dhkd.components.scoring import ScoringConfig
from anomalib_dhkd.components.teachers import FlowTeacherConfig

TEACHER_NOISE_LEVEL = {True: 0.3, False: 0.0}
COHERENCE_WEIGHT = {True: 0.25, False: 0.0}


def resolve(
    pre_trained: bool, layers: Sequence[str], teacher: FlowTeacherConfig, scoring: ScoringConfig
) -> tuple[FlowTeacherConfig, ScoringConfig]:
    """Replace the ``None`` settings of ``teacher`` and ``scoring`` by DHKD's defaults for the encoder.

    Args:
        pre_trained: Whether the encoder has ImageNet weights.
        layers: The map's layers, shallowest first.
        teacher: Flow teacher settings; ``noise_level`` ``None`` is decided.
        scoring: Scoring settings; ``score_layers``, ``standardize_map``, ``global_score`` and ``coherence_weight``
            ``None`` are decided.

    Returns:
        The teacher and scoring settings with every encoder-dependent default decided; set values are kept.

    Example:
        >>> teacher, scoring = resolve(True, ["layer1", "layer2", "layer3"], FlowTeacherConfig(), ScoringConfig())
        >>> teacher.noise_level, list(scoring.score_layers), scoring.global_score
        (0.3, ['layer3'], True)

    """
    if teacher.noise_level is None:
        teacher = replace(teacher, noise_level=TEACHER_NOISE_LEVEL[pre_trained])
    defaults = {
        "score_layers": list(layers[-1:]) if pre_trained else list(layers),
        "standardize_map": not pre_trained,
        "global_score": pre_trained,
        "coherence_weight": COHERENCE_WEIGHT[pre_trained],
    }
    decided = {name: value for name, value in defaults.items() if getattr(scoring, name) is None}
    return teacher, replace(scoring, **decided)


# Flat constructor arguments, by group and grouped name, so that checkpoints saved with ungrouped settings still load.
LEGACY_ARGUMENTS = {
    "teacher": {
        "flow_blocks": "blocks",
        "flow_hidden_ratio": "hidden_ratio",
        "flow_clamp": "clamp",
        "condition_channels": "condition_channels",
        "teacher_noise_level": "noise_level",
    },
    "student": {"student_blocks": "blocks", "noise_level": "noise_level", "noise_correlation": "noise_correlation"},
    "loss": {name: name for name in ("distillation_weight", "affinity_weight", "jacobian_weight")},
    "scoring": {
        name: name
        for name in (
            "score_layers",
            "blur_sigma",
            "score_blur_sigma",
            "score_fraction",
            "standardize_map",
            "global_score",
            "coherence_layers",
            "coherence_weight",
            "coherence_window",
        )
    },
}


def grouped_arguments(hyper_parameters: Mapping[str, Any]) -> dict[str, Any] | None:
    """Group a checkpoint's flat DHKD arguments (:data:`LEGACY_ARGUMENTS`); ``None`` if they are grouped already.

    Args:
        hyper_parameters: A checkpoint's ``hyper_parameters``.

    Returns:
        The arguments with the flat settings moved into ``teacher``, ``student``, ``loss`` and ``scoring``
        dictionaries, or ``None`` if there is no flat setting.

    Example:
        >>> grouped_arguments({"backbone": "resnet18", "flow_blocks": 2, "blur_sigma": 8.0})
        {'backbone': 'resnet18', 'teacher': {'blocks': 2}, 'scoring': {'blur_sigma': 8.0}}

    """
    flat = {old for names in LEGACY_ARGUMENTS.values() for old in names}
    if not flat & set(hyper_parameters):
        return None
    grouped = {name: value for name, value in hyper_parameters.items() if name not in flat}
    for group, names in LEGACY_ARGUMENTS.items():
        values = {new: hyper_parameters[old] for old, new in names.items() if old in hyper_parameters}
        if values:
            grouped[group] = values
    return grouped
