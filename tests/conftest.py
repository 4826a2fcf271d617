"""Shared fixtures: offline Hugging Face hub, the shared real data and a tiny synthetic dataset."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm or huggingface_hub are imported

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_BACKBONE = {"backbone": "tf_efficientnet_lite0", "layers": ("blocks.1", "blocks.2", "blocks.4")}


def shared_category(dataset: str, category: str) -> Path:
    """Return the root of a shared real dataset, or skip the test with the reason."""
    root = SHARED_DATA / dataset
    if not (root / category / "train" / "good").is_dir():
        pytest.skip(f"shared dataset {dataset}/{category} not found at {root} (it lives in ../shared/data)")
    return root


@pytest.fixture(scope="session")
def pretrained_weights() -> None:
    """Install the offline EfficientNet-Lite0 ImageNet weights into the Hugging Face cache (idempotent)."""
    from anomalib_dhkd.weights import install_efficientnet_lite0

    install_efficientnet_lite0()


@pytest.fixture(scope="session")
def texture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MVTec-layout dataset generated from scikit-image's brick photo, at 64 px."""
    from anomalib_dhkd.data import generate_texture_dataset

    root = tmp_path_factory.mktemp("textures")
    generate_texture_dataset(root, "brick", image_size=64, num_train=16, num_test_good=6, num_test_defect=8, seed=0)
    return root
