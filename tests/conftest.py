"""Shared fixtures: offline Hugging Face hub, the shared real data and a tiny synthetic dataset."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm or huggingface_hub are imported

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_BACKBONE = {"backbone": "tf_efficientnet_lite0", "layers": ("blocks.1", "blocks.2", "blocks.4")}
TINY_IMAGE_SIZE = 64


def shared_category(dataset: str, category: str) -> Path:
    """Return the root of a shared real dataset, or skip the test with the reason."""
    root = SHARED_DATA / dataset
    if not (root / category / "train" / "good").is_dir():
        pytest.skip(f"shared dataset {dataset}/{category} not found at {root} (it lives in ../shared/data)")
    return root


@pytest.fixture(scope="session")
def pretrained_weights() -> None:
    """Install the offline EfficientNet-Lite0 ImageNet weights into the Hugging Face cache (idempotent)."""
    from anomalib_dhkd.tools.weights import install_efficientnet_lite0

    install_efficientnet_lite0()


@pytest.fixture(scope="session")
def texture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MVTec-layout dataset generated from scikit-image's brick photo, at 64 px."""
    from anomalib_dhkd.tools.data import generate_texture_dataset

    root = tmp_path_factory.mktemp("textures")
    generate_texture_dataset(root, "brick", image_size=64, num_train=16, num_test_good=6, num_test_defect=8, seed=0)
    return root


TINY_TEACHER = {"blocks": 2, "condition_channels": 8}
# The ImageNet defaults' global score and two coherence layers, like the ImageNet preset: every Engine and export
# test runs the full image score and anomaly map.
TINY_SCORING = {"global_score": True, "coherence_layers": ["blocks.2", "blocks.4"], "coherence_weight": [0.15, 0.25]}


def tiny_dhkd(**overrides: object) -> "Dhkd":  # noqa: F821
    """A small DHKD (random encoder, 2 flow blocks, 2 epochs) that trains in seconds at 64 px."""
    from anomalib_dhkd import Dhkd
    from anomalib_dhkd.components.scoring import ScoringConfig
    from anomalib_dhkd.components.teachers import FlowTeacherConfig

    arguments = {
        **TINY_BACKBONE,
        "pre_trained": False,
        "teacher": FlowTeacherConfig(**TINY_TEACHER),
        "scoring": ScoringConfig(**TINY_SCORING),
        "max_epochs": 2,
        "teacher_warmup_epochs": 1,
        "pre_processor": Dhkd.configure_pre_processor((TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), TINY_BACKBONE["backbone"]),
    }
    return Dhkd(**{**arguments, **overrides})


def tiny_sibling(name: str, **overrides: object) -> "AnomalibModule":  # noqa: F821
    """A small sibling model of the family (random teacher, 2 epochs) that trains in seconds at 64 px."""
    import anomalib_dhkd

    model_class = getattr(anomalib_dhkd, name)
    arguments = {
        **TINY_BACKBONE,
        "pre_trained": False,
        "max_epochs": 2,
        "pre_processor": model_class.configure_pre_processor(
            (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), TINY_BACKBONE["backbone"]
        ),
    }
    return model_class(**{**arguments, **overrides})


def tiny_bikd(**overrides: object) -> "Bikd":  # noqa: F821
    """A small Bikd (:func:`tiny_sibling`)."""
    return tiny_sibling("Bikd", **overrides)


def tiny_dmdd(**overrides: object) -> "Dmdd":  # noqa: F821
    """A small Dmdd (:func:`tiny_sibling`) with 10 times the default learning rate.

    At 1e-3 the segmentation head still gives every image of the textures nearly the same score after one epoch (a
    range of 2e-4), and the post-processor's min-max normalisation over that range turns float rounding into score
    differences of 1e-4 between torch and the exported model.
    """
    return tiny_sibling("Dmdd", **{"learning_rate": 1e-2, **overrides})


def tiny_asymmetric_ts(**overrides: object) -> "AsymmetricTs":  # noqa: F821
    """A small AsymmetricTs (:func:`tiny_sibling`)."""
    return tiny_sibling("AsymmetricTs", **overrides)


@pytest.fixture(scope="session")
def trained_tiny(texture_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """``(engine, model, datamodule)``: a tiny DHKD fitted on the synthetic textures through anomalib's Engine."""
    import torch
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    torch.manual_seed(0)
    engine = Engine(default_root_dir=tmp_path_factory.mktemp("engine"), logger=False, enable_progress_bar=False)
    model = tiny_dhkd()
    data = MVTecAD(root=texture_root, category="brick", train_batch_size=8, eval_batch_size=8, num_workers=0)
    engine.fit(model=model, datamodule=data)
    return engine, model, data


def anomalib_cli() -> str:
    """Path of the `anomalib` command of this environment."""
    import sys

    return str(Path(sys.executable).with_name("anomalib"))


def write_tiny_config(path: Path, **init_args: object) -> Path:
    """Write an `anomalib` CLI config with a tiny DHKD (random encoder), ``init_args`` overriding its arguments."""
    arguments = {**TINY_BACKBONE, "pre_trained": False, "teacher": TINY_TEACHER}
    arguments |= {"max_epochs": 2, "teacher_warmup_epochs": 1, **init_args}
    lines = ["model:", "  class_path: Dhkd", "  init_args:"]
    lines += [f"    {name}: {_yaml_value(value)}" for name, value in arguments.items()]
    path.write_text("\n".join([*lines, "seed_everything: 0", ""]))
    return path


def _yaml_value(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{name}: {_yaml_value(item)}" for name, item in value.items()) + "}"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)
