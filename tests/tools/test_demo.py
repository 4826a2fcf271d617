"""The main job (``bash run.sh demo``), shrunk to a tiny budget."""

import json
from pathlib import Path

import pytest
from PIL import Image

from anomalib_dhkd.tools import demo


@pytest.mark.slow
@pytest.mark.usefixtures("pretrained_weights")
def test_demo_trains_reports_metrics_and_writes_heat_maps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    summary = demo.main(["--out", str(tmp_path), "--epochs", "2", "--image-size", "64", "--num-figures", "4"])
    for name in ("image AUROC", "pixel AUROC", "PRO"):
        assert 0.0 <= summary[name] <= 1.0
    assert summary["training seconds"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == summary
    figure = Image.open(tmp_path / "heat_maps.png")
    assert figure.height > figure.width  # one row of three panels per sample, four rows
    output = capsys.readouterr().out
    assert "pixel AUROC" in output
    assert "PRO" in output
    assert (tmp_path / "dataset" / "brick" / "ground_truth").is_dir()


def test_demo_rejects_a_folder_that_is_not_mvtec_layout(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="ROOT:CATEGORY"):
        demo.resolve_dataset(f"{tmp_path}:nothing", tmp_path, seed=0)
