"""DHKD's offline presets and the offline CLI config that names them."""

from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
import yaml

from anomalib_dhkd.components.teachers import FlowTeacherConfig
from anomalib_dhkd.models import offline_dhkd
from anomalib_dhkd.models.dhkd.presets import offline_preset

CONFIG = Path(__file__).parents[3] / "configs" / "dhkd_offline.yaml"


def plain(value: object) -> object:
    """``value`` as YAML writes it: settings dataclasses as mappings, tuples as lists."""
    if is_dataclass(value):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {name: plain(item) for name, item in value.items()}
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    return value


def test_offline_config_trains_the_pretrained_preset() -> None:
    """``configs/dhkd_offline.yaml`` names every setting of ``offline_dhkd``'s preset with ImageNet weights."""
    init_args = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    preset = offline_preset(pre_trained=True)
    assert init_args["pre_trained"] is True
    assert set(preset) <= set(init_args)
    # A mapping in the YAML becomes the settings dataclass, its unnamed fields at their defaults, as the CLI builds it.
    configured = {
        name: type(value)(**init_args[name]) if is_dataclass(value) else init_args[name]
        for name, value in preset.items()
    }
    assert plain(configured) == plain(preset)


def test_offline_preset_without_imagenet_weights_maps_two_raw_scales_and_scores_three() -> None:
    model = offline_dhkd(image_size=64, pre_trained=False, teacher=FlowTeacherConfig(condition_channels=8)).model
    scorer = model.scorer
    assert list(model.encoder.layers) == ["blocks.1", "blocks.2", "blocks.4"]
    assert (scorer.map_indices, scorer.score_indices, scorer.standardize_map) == ([1, 2], [0, 1, 2], False)
    assert model.noise_level == 1.0  # the preset's, twice the model default
    assert model.noise_correlation == 1.0  # the model default: correlated over one feature cell
    assert {len(student.blocks) for student in model.students} == {1}  # the model default has 2
    fusion = scorer.map_fusion
    kernel_sizes = (fusion.blur.kernel.shape[-1], fusion.score_blur.kernel.shape[-1])
    assert kernel_sizes == (97, 33)  # +-4 sigma at sigma 12 and 4
    with torch.no_grad():
        model.eval().fit_normal_statistics(lambda: [torch.rand(2, 3, 64, 64)])
        output = model(torch.rand(2, 3, 64, 64))
    assert output.anomaly_map.shape == (2, 1, 64, 64)
    assert torch.isfinite(output.pred_score).all()
