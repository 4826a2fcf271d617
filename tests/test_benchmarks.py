"""The benchmark suite (``python -m benchmarks.run --quick``) end to end, and the ``anomalib benchmark`` configs."""

import dataclasses
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from anomalib_dhkd import Dhkd
from anomalib_dhkd.components.scoring import ScoringConfig
from anomalib_dhkd.components.students import DenoisingStudentConfig
from anomalib_dhkd.components.teachers import FlowTeacherConfig
from anomalib_dhkd.models import OFFLINE_LAYERS, OFFLINE_SCORE_LAYERS
from anomalib_dhkd.models.dhkd.config import resolve
from anomalib_dhkd.models.dhkd.loss import DhkdLossWeights
from anomalib_dhkd.models.dhkd.presets import PRETRAINED_ENCODER_PRESET, RANDOM_ENCODER_PRESET
from anomalib_dhkd.models.dhkd.torch_model import DhkdModel
from benchmarks.suite.models import DHKD_WARMUP_EPOCHS, SUITE_MODELS
from benchmarks.suite.settings import (
    MEASUREMENTS,
    METRICS,
    MODELS,
    SHARED_DATA,
    run_settings,
)
from tests.conftest import shared_category

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "benchmarks" / "configs").rglob("*.yaml"))
RECORD_FIELDS = {"model", "dataset", "track", "settings", "status", "error", "environment", *MEASUREMENTS}
SETTINGS_FIELDS = {"epochs", "image_size", "seed", "backbone", "layers", "pre_trained", "options"}
SETTINGS_FIELDS |= {"batch_size", "eval_batch_size"}
CHARTS = [f"chart_{key}.png" for key in (*METRICS, "train_seconds", "images_per_second_batch1", "peak_rss_mb")]
GALLERY = "gallery_hazelnut_toy-hazelnut_pretrained.png"


def run_suite(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m benchmarks.run ARGS`` from the repository root; fail the test on a non-zero exit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "benchmarks.run", *args]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def read_records(out: Path) -> dict[str, dict]:
    """Records of ``results.jsonl`` by model."""
    lines = (out / "results.jsonl").read_text().splitlines()
    return {record["model"]: record for record in map(json.loads, lines)}


def assert_image(path: Path, min_side: int = 200) -> None:
    """``path`` is an image of some size that is not a flat colour."""
    image = Image.open(path).convert("L")
    assert min(image.size) >= min_side
    assert np.asarray(image).std() > 5


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Output folder and stdout of one quick run of all five models (about 3 minutes on 2 cores)."""
    shared_category("hazelnut_toy", "hazelnut")
    out = tmp_path_factory.mktemp("bench")
    return out, run_suite("--quick", "--out", str(out)).stdout


@pytest.mark.slow
def test_quick_suite_records_every_model(quick_suite: tuple[Path, str]) -> None:
    out, stdout = quick_suite
    records = read_records(out)
    assert list(records) == list(MODELS)
    for model, record in records.items():
        assert set(record) == RECORD_FIELDS, model
        assert set(record["settings"]) == SETTINGS_FIELDS
        assert (record["status"], record["error"]) == ("ok", None)
        assert (record["dataset"], record["track"]) == ("hazelnut_toy/hazelnut", "pretrained")
        assert all(0.0 <= record[key] <= 1.0 for key in METRICS), record
        assert record["images_per_second_batch1"] > 0
        assert record["images_per_second_batch16"] > 0
        assert record["train_seconds"] > 0
        assert record["peak_rss_mb"] > 100
        assert record["params_total"] >= record["params_trainable"] >= 0
        assert record["settings"]["image_size"] == 64
        assert record["settings"]["epochs"] == 1
    assert records["padim"]["params_trainable"] == 0  # fits statistics, no optimiser
    assert records["dhkd"]["params_trainable"] > 0
    assert records["reverse_distillation"]["settings"]["pre_trained"] is False
    assert records["cflow"]["settings"]["layers"] == ["blocks.1", "blocks.2", "blocks.4"]
    assert "[5/5] reverse_distillation hazelnut_toy/hazelnut pretrained" in stdout


@pytest.mark.slow
def test_quick_suite_writes_table_charts_and_gallery(quick_suite: tuple[Path, str]) -> None:
    out, _ = quick_suite
    table = (out / "results.md").read_text()
    for model in ("dhkd", "padim", "patchcore", "cflow", "reverse_distillation†"):
        assert sum(line.startswith(f"| {model} |") for line in table.splitlines()) == 2, model  # summary + detail
    assert "pre_trained=False" in table
    assert "CPUs, torch" in table
    for chart in CHARTS:
        assert_image(out / chart)
    assert_image(out / GALLERY, min_side=400)
    assert len(list((out / "maps").glob("*.pt"))) == len(MODELS)


@pytest.mark.slow
def test_failed_run_is_recorded_and_the_suite_goes_on(quick_suite: tuple[Path, str], tmp_path: Path) -> None:
    out = tmp_path / "bench"
    shutil.copytree(quick_suite[0], out)
    stdout = run_suite(
        "--quick", "--out", str(out), "--models", "patchcore", "padim", "--layers", "patchcore=blocks.2,blocks.3"
    ).stdout
    records = read_records(out)
    assert list(records) == list(MODELS)  # re-runs replace their records in place
    failed = records["patchcore"]
    assert failed["status"] == "failed"
    assert "blocks.3" in failed["error"]
    assert failed["image_AUROC"] is None
    assert failed["settings"]["layers"] == ["blocks.2", "blocks.3"]
    assert records["padim"]["status"] == "ok"
    assert records["padim"]["environment"]["date"] >= records["dhkd"]["environment"]["date"]
    assert "[1/2] patchcore hazelnut_toy/hazelnut pretrained FAILED" in stdout
    assert "patchcore on hazelnut_toy/hazelnut failed" in (out / "results.md").read_text()
    assert not (out / "maps" / "patchcore__hazelnut_toy-hazelnut__pretrained.pt").exists()


@pytest.mark.slow
def test_resume_skips_finished_runs_and_reruns_changed_settings(quick_suite: tuple[Path, str], tmp_path: Path) -> None:
    out = tmp_path / "bench"
    shutil.copytree(quick_suite[0], out)
    before = read_records(out)
    stdout = run_suite("--quick", "--resume", "--out", str(out), "--models", "dhkd", "padim").stdout
    assert stdout.count("already done, skipped (--resume)") == 2
    assert read_records(out) == before
    stdout = run_suite("--quick", "--resume", "--out", str(out), "--models", "padim", "--seed", "1").stdout
    assert "skipped" not in stdout
    after = read_records(out)
    assert (after["padim"]["status"], after["padim"]["settings"]["seed"]) == ("ok", 1)
    assert after["dhkd"] == before["dhkd"]


@pytest.mark.slow
def test_identical_settings_in_both_tracks_train_once(tmp_path: Path) -> None:
    """Reverse Distillation trains without weights in both tracks: one training, its record and maps filed twice."""
    shared_category("hazelnut_toy", "hazelnut")
    out = tmp_path / "bench"
    args = ("--quick", "--out", str(out), "--models", "reverse_distillation", "--tracks", "pretrained", "none")
    stdout = run_suite(*args).stdout
    assert stdout.count("(1 epochs, 64 px) ...") == 1
    assert "[2/2] reverse_distillation hazelnut_toy/hazelnut none: the same settings as its pretrained run" in stdout
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["track"] for r in records] == ["pretrained", "none"]
    assert records[0]["status"] == "ok"
    assert {**records[0], "track": "none"} == records[1]
    maps = [
        torch.load(out / "maps" / f"reverse_distillation__hazelnut_toy-hazelnut__{t}.pt")
        for t in ("pretrained", "none")
    ]
    assert maps[0]["image_paths"] == maps[1]["image_paths"]
    assert all(torch.equal(a, b) for a, b in zip(maps[0]["anomaly_maps"], maps[1]["anomaly_maps"], strict=True))
    assert "gallery_hazelnut_toy-hazelnut_none.png" in {path.name for path in out.iterdir()}
    stdout = run_suite(*args, "--resume").stdout
    assert stdout.count("already done, skipped (--resume)") == 2


def test_dhkd_records_state_the_model_defaults() -> None:
    """A DHKD record names every default, settings dataclasses as JSON objects, so --resume re-runs changed ones."""
    options = run_settings("dhkd", "none", image_size=64, seed=0, quick=True).options
    json.dumps(options)  # JSON-ready
    assert options["teacher"] == dataclasses.asdict(FlowTeacherConfig())
    assert options["loss"] == dataclasses.asdict(DhkdLossWeights())
    assert options["learning_rate"] == inspect.signature(Dhkd).parameters["learning_rate"].default
    preset_student, preset_scoring = RANDOM_ENCODER_PRESET["student"], RANDOM_ENCODER_PRESET["scoring"]
    assert options["student"] == dataclasses.asdict(preset_student) != dataclasses.asdict(DenoisingStudentConfig())
    assert options["scoring"]["blur_sigma"] == preset_scoring.blur_sigma != ScoringConfig().blur_sigma
    assert options["scoring"]["score_layers"] == list(OFFLINE_LAYERS)  # the preset without ImageNet weights
    assert options["scoring"]["global_score"] is None  # decided by the model for the encoder
    assert options["teacher_warmup_epochs"] == 0  # the suite's own quick budget wins over the model default
    assert options["freeze_teacher"] is False  # no warm-up: teacher and student train together
    full = run_settings("dhkd", "pretrained", image_size=256, seed=0, quick=False)
    assert full.options["teacher_warmup_epochs"] == DHKD_WARMUP_EPOCHS < full.epochs
    assert full.options["freeze_teacher"] is True
    assert full.options["scoring"]["coherence_layers"] == list(OFFLINE_SCORE_LAYERS)  # JSON-ready lists
    assert full.options["scoring"]["coherence_weight"] == [0.15, 0.25]
    assert not {"max_epochs", "pre_trained", "pre_processor", "post_processor", "evaluator", "visualizer"} & set(
        options
    )
    none = run_settings("dhkd", "none", image_size=64, seed=0, quick=True)
    assert none.layers == RANDOM_ENCODER_PRESET["layers"]
    assert none.encoder_layers == ("blocks.2", "blocks.4", "blocks.1")
    pretrained = run_settings("dhkd", "pretrained", image_size=64, seed=0, quick=True)
    assert pretrained.layers == OFFLINE_LAYERS
    assert pretrained.options["student"]["blocks"] == PRETRAINED_ENCODER_PRESET["student"].blocks == 1
    assert pretrained.encoder_layers == ("blocks.1", "blocks.2", "blocks.4", "blocks.6")


def test_suite_builds_each_model_from_its_record_options() -> None:
    """A record's JSON options rebuild the same model: dataclass settings come back as dataclasses."""
    from benchmarks.suite.worker import build_model

    settings = run_settings("dhkd", "none", image_size=64, seed=0, quick=True)
    model = build_model("dhkd", settings)
    assert isinstance(model, Dhkd)
    assert model.hparams["student"] == dataclasses.asdict(RANDOM_ENCODER_PRESET["student"])
    assert model.hparams["scoring"] == settings.options["scoring"]
    assert model.trainer_arguments["max_epochs"] == settings.epochs
    padim = build_model("padim", run_settings("padim", "none", image_size=64, seed=0, quick=True))
    assert type(padim).__name__ == "Padim"
    normalise = padim.pre_processor.transform.transforms[-1]
    assert list(normalise.mean) == [0.5, 0.5, 0.5]  # tf_efficientnet_lite0's own statistics, not ImageNet's


def test_layer_check_accepts_any_order_and_rejects_a_dropped_layer() -> None:
    """The worker's check that a model extracts the requested layers (anomalib drops unknown names silently)."""
    from benchmarks.suite.worker import check_layers

    layers = ["blocks.2", "blocks.4"]
    teacher, scoring = resolve(False, layers, FlowTeacherConfig(), ScoringConfig(score_layers=["blocks.1"]))
    # a score layer shallower than the map's: extracted first
    model = DhkdModel("tf_efficientnet_lite0", layers, False, teacher, DenoisingStudentConfig(), scoring)
    check_layers(model, ("blocks.2", "blocks.4", "blocks.1"))
    with pytest.raises(ValueError, match="extracts layers"):
        check_layers(model, ("blocks.2", "blocks.4"))
    with pytest.raises(ValueError, match="extracts layers"):
        check_layers(model, ("blocks.1", "blocks.2", "blocks.4", "blocks.6"))


@pytest.mark.slow
def test_report_only_regenerates_the_outputs(
    quick_suite: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from benchmarks import run

    out = tmp_path / "bench"
    shutil.copytree(quick_suite[0], out)
    records = (out / "results.jsonl").read_text()
    for path in [out / "results.md", out / GALLERY, *(out / chart for chart in CHARTS)]:
        path.unlink()
    run.main(["--report-only", "--out", str(out)])
    assert "[1/" not in capsys.readouterr().out  # nothing trained
    assert (out / "results.jsonl").read_text() == records
    assert "| dhkd |" in (out / "results.md").read_text()
    for chart in CHARTS:
        assert (out / chart).is_file()
    assert_image(out / GALLERY, min_side=400)


def write_suite_output(out: Path, runs: dict[str, float], image: Path, seed: int = 0) -> None:
    """A suite output folder with one ok record per ``{model: image AUROC}`` and gallery maps of ``image``."""
    from benchmarks.run import base_record, save_record
    from benchmarks.suite.report import maps_path

    (out / "maps").mkdir(parents=True)
    for model, auroc in runs.items():
        settings = run_settings(model, "pretrained", image_size=64, seed=seed, quick=True)
        record = base_record(model, "toy/cat", "pretrained", settings)
        record.update(dict.fromkeys(MEASUREMENTS, 1.0), image_AUROC=auroc, status="ok")
        save_record(out / "results.jsonl", record)
        maps = {"image_paths": [str(image)], "anomaly_maps": [torch.rand(64, 64)], "masks": [torch.rand(64, 64) > 0.9]}
        torch.save(maps, maps_path(out, model, "toy/cat", "pretrained"))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A 64 x 64 noise image for synthetic gallery maps."""
    path = tmp_path / "defect.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_merge_imports_records_and_maps_later_folders_winning(tmp_path: Path, image: Path) -> None:
    """``--merge A B --report-only`` builds one report from two earlier outputs; B's record of a model replaces A's."""
    from benchmarks import run

    first, second, merged = tmp_path / "first", tmp_path / "second", tmp_path / "merged"
    write_suite_output(first, {"dhkd": 0.9, "padim": 0.8}, image)
    write_suite_output(second, {"padim": 0.7, "cflow": 0.6}, image)
    (second / "maps" / "cflow__toy-cat__pretrained.pt").unlink()  # a record whose maps are gone
    write_suite_output(merged, {"cflow": 0.5}, image)  # stale maps of the record the merge replaces

    run.main(["--report-only", "--out", str(merged), "--merge", str(first), str(second)])

    records = read_records(merged)
    assert {model: record["image_AUROC"] for model, record in records.items()} == {
        "cflow": 0.6,
        "dhkd": 0.9,
        "padim": 0.7,
    }
    padim_maps = torch.load(merged / "maps" / "padim__toy-cat__pretrained.pt", weights_only=True)
    expected = torch.load(second / "maps" / "padim__toy-cat__pretrained.pt", weights_only=True)
    assert torch.equal(padim_maps["anomaly_maps"][0], expected["anomaly_maps"][0])
    assert not (merged / "maps" / "cflow__toy-cat__pretrained.pt").exists()
    assert "| cflow |" in (merged / "results.md").read_text()
    assert_image(merged / "gallery_toy-cat_pretrained.png", min_side=150)
    merged_records = (merged / "results.jsonl").read_text()
    with pytest.raises(SystemExit, match="no records"):  # checked before the first folder is imported again
        run.main(["--report-only", "--out", str(merged), "--merge", str(first), str(tmp_path / "missing")])
    assert (merged / "results.jsonl").read_text() == merged_records
    with pytest.raises(SystemExit, match="the --out folder itself"):
        run.main(["--report-only", "--out", str(merged), "--merge", str(merged)])


def test_report_warns_when_merged_runs_differ_in_seed(tmp_path: Path, image: Path) -> None:
    """A report of runs with different seeds must not claim one seed; it lists which run used which."""
    from benchmarks import run

    seed0, seed1, merged = tmp_path / "seed0", tmp_path / "seed1", tmp_path / "merged"
    write_suite_output(seed0, {"dhkd": 0.9, "padim": 0.8}, image)
    write_suite_output(seed1, {"padim": 0.7}, image, seed=1)

    run.main(["--report-only", "--out", str(merged), "--merge", str(seed0)])
    table = (merged / "results.md").read_text()
    assert "\n64 px, seed 0, batch 8 (test batch 32).\n" in table
    assert "Not like for like" not in table

    run.main(["--report-only", "--out", str(merged), "--merge", str(seed1)])
    table = (merged / "results.md").read_text()
    assert "**Not like for like: these runs differ in image size, seed or batch size.**" in table
    assert "- 64 px, seed 0, batch 8 (test batch 32): dhkd on toy/cat\n" in table
    assert "- 64 px, seed 1, batch 8 (test batch 32): padim on toy/cat\n" in table
    assert "64 px, seed 0, batch 8 (test batch 32)." not in table


def test_report_only_without_records_fails(tmp_path: Path) -> None:
    from benchmarks import run

    with pytest.raises(SystemExit, match="no records"):
        run.main(["--report-only", "--out", str(tmp_path)])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: str(path.relative_to(REPO_ROOT / "benchmarks")))
@pytest.mark.usefixtures("pretrained_weights")
def test_anomalib_benchmark_config_builds_its_models(config: Path) -> None:
    from anomalib.models import get_model
    from anomalib.pipelines.components.utils import get_iterator_from_grid_dict
    from anomalib.utils.config import flatten_dict

    from anomalib_dhkd.models import Dhkd

    content = yaml.safe_load(config.read_text())
    assert content["accelerator"] == "cpu"
    jobs = list(get_iterator_from_grid_dict(content["benchmark"]))
    assert len(jobs) == (1 if config.parent.name == "quick" else 2)
    # anomalib 2.7 gathers the results of a benchmark into one table keyed by its first job's settings.
    assert len({tuple(flatten_dict(job)) for job in jobs}) == 1
    model = get_model(jobs[0]["model"])
    if config.stem == "dhkd":
        assert type(model) is Dhkd
        epochs = 1 if config.parent.name == "quick" else SUITE_MODELS["dhkd"].epochs
        assert model.trainer_arguments["max_epochs"] == epochs
        assert model.freeze_teacher is (config.parent.name != "quick")
        assert list(model.model.encoder.layers) == [*OFFLINE_LAYERS, "blocks.6"]
        preset_scoring, scoring = PRETRAINED_ENCODER_PRESET["scoring"], model.hparams["scoring"]
        assert list(scoring["score_layers"]) == list(preset_scoring.score_layers)
        assert list(scoring["coherence_weight"]) == list(preset_scoring.coherence_weight)
        student_depths = {len(student.blocks) for student in model.model.students}
        assert student_depths == {PRETRAINED_ENCODER_PRESET["student"].blocks}
    else:
        assert type(model).__name__.lower() == config.stem.replace("_", "")
    for job in jobs:  # the shared data, relative to the repository root
        assert (REPO_ROOT / job["data"]["init_args"]["root"]).resolve().parent == SHARED_DATA.resolve()
