"""Every model config in ``configs/`` builds its model, and every data config points at a shared dataset."""

from pathlib import Path

import pytest
import yaml

from anomalib_dhkd.models import MODELS

CONFIGS = Path(__file__).parents[1] / "configs"
MODEL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
DATA_CONFIGS = sorted((CONFIGS / "data").glob("*.yaml"))


def test_every_model_has_a_config() -> None:
    classes = {yaml.safe_load(path.read_text())["model"]["class_path"] for path in MODEL_CONFIGS}
    assert classes == {model.__name__ for model in MODELS}


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda path: path.name)
def test_model_config_builds_its_model(path: Path) -> None:
    """The config's arguments build the model (without ImageNet weights, which may not be installed)."""
    model_config = yaml.safe_load(path.read_text())["model"]
    model_class = {model.__name__: model for model in MODELS}[model_config["class_path"]]
    model = model_class(**{**model_config["init_args"], "pre_trained": False})
    for name, value in model_config["init_args"].items():
        saved = model.hparams[name]
        if isinstance(value, dict):
            assert {key: saved[key] for key in value} == value, name  # nested settings as written
        elif name != "pre_trained":
            assert (list(saved) if isinstance(saved, tuple) else saved) == value, name


@pytest.mark.parametrize("path", DATA_CONFIGS, ids=lambda path: path.name)
def test_data_config_points_at_a_shared_dataset(path: Path) -> None:
    arguments = yaml.safe_load(path.read_text())["init_args"]
    category = Path(__file__).parents[1] / arguments["root"] / arguments["category"]
    if not category.parent.parent.is_dir():
        pytest.skip(f"shared data not found at {category.parent.parent}")
    assert (category / "train" / "good").is_dir()
