"""The benchmark suite (``python -m benchmarks.run --quick``) end to end, and the ``anomalib benchmark`` configs."""

import dataclasses
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
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
from benchmarks import rescore, rescore_dmdd, retime, retrain_dmdd_head
from benchmarks.run import failure_message, stream_worker
from benchmarks.suite.hardest import defect_type_metrics, hardest_indices, outranked_by
from benchmarks.suite.models import DHKD_WARMUP_EPOCHS, SUITE_MODELS
from benchmarks.suite.records import base_record, load_records, save_record
from benchmarks.suite.settings import (
    MEASUREMENTS,
    METRICS,
    MODELS,
    SHARED_DATA,
    dataset_name,
    discover_datasets,
    run_settings,
)
from tests.conftest import TINY_IMAGE_SIZE, shared_category, tiny_dhkd, tiny_dmdd

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "benchmarks" / "configs").rglob("*.yaml"))
RECORD_FIELDS = {"model", "dataset", "track", "settings", "status", "error", "environment", "hardest_images"}
RECORD_FIELDS |= {"wall_seconds", "defect_types"}
RECORD_FIELDS |= set(MEASUREMENTS)
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
    """Records of the quick suite's records folder by model configuration (one dataset, track and seed)."""
    return {record["model"]: record for record in load_records(out / "records")}


def assert_image(path: Path, min_side: int = 200) -> None:
    """``path`` is an image of some size that is not a flat colour."""
    image = Image.open(path).convert("L")
    assert min(image.size) >= min_side
    assert np.asarray(image).std() > 5


@pytest.fixture(scope="module")
def quick_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the quick suite keeps its trained models, for the tests that re-score them."""
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory: pytest.TempPathFactory, quick_checkpoints: Path) -> tuple[Path, str]:
    """Output folder and stdout of one quick run of every model configuration (a few minutes on 2 cores)."""
    shared_category("hazelnut_toy", "hazelnut")
    out = tmp_path_factory.mktemp("bench")
    return out, run_suite("--quick", "--out", str(out), "--keep-checkpoints", str(quick_checkpoints)).stdout


@pytest.mark.slow
def test_quick_suite_records_every_model(quick_suite: tuple[Path, str]) -> None:
    out, stdout = quick_suite
    records = read_records(out)
    assert list(records) == sorted(MODELS)
    for model, record in records.items():
        assert set(record) == RECORD_FIELDS, model
        assert set(record["settings"]) == SETTINGS_FIELDS
        assert (record["status"], record["error"]) == ("ok", None), (model, record["error"])
        assert (record["dataset"], record["track"]) == ("hazelnut_toy/hazelnut", "pretrained")
        assert all(0.0 <= record[key] <= 1.0 for key in METRICS), record
        assert record["images_per_second_batch1"] > 0
        assert record["images_per_second_batch16"] > 0
        assert record["train_seconds"] > 0
        assert record["wall_seconds"] > record["train_seconds"]  # training, test and speed, in all
        assert list(record["defect_types"]) == ["colour"]  # the toy set's one defect folder
        assert all(0.0 <= value <= 1.0 for value in record["defect_types"]["colour"].values())
        assert record["peak_rss_mb"] > 100
        assert record["params_total"] >= record["params_trainable"] >= 0
        assert record["settings"]["image_size"] == max(64, SUITE_MODELS[model].min_image_size)
        assert record["settings"]["epochs"] == 1
        assert record["environment"]["anomalib"].startswith("2.7")
        path = out / "records" / "pretrained" / "hazelnut_toy-hazelnut" / f"{model}__s0.json"
        assert json.loads(path.read_text()) == record
    assert records["padim"]["params_trainable"] == 0  # fits statistics, no optimiser
    assert records["dhkd"]["params_trainable"] > 0
    assert records["reverse_distillation"]["settings"]["pre_trained"] is False
    assert records["padim_b3"]["settings"]["layers"] == ["blocks.1", "blocks.2", "blocks.3"]  # the real blocks.3
    assert f"[{len(MODELS)}/{len(MODELS)}] " in stdout


@pytest.mark.slow
def test_quick_suite_writes_table_charts_and_gallery(quick_suite: tuple[Path, str]) -> None:
    out, _ = quick_suite
    table = (out / "RESULTS.md").read_text()
    for model in MODELS:
        rows = [line for line in table.splitlines() if line.split(" | ")[0] in {f"| {model}", f"| {model}†"}]
        assert len(rows) == 3, model  # the summary, the dataset table and the defect-type table
    assert "| reverse_distillation† |" in table
    assert "s0: " in table  # per-seed values
    conditions = {line.split(": ")[0]: line for line in table.splitlines() if line.startswith("- ") and " px, " in line}
    assert "dhkd on hazelnut_toy/hazelnut (seed 0)" in conditions["- 64 px, batch 8 (test batch 32)"]
    smallest = conditions["- 128 px, batch 8 (test batch 32)"]  # SuperSimpleNet's smallest size, flagged
    assert smallest.endswith(": supersimplenet on hazelnut_toy/hazelnut (seed 0)")
    assert "CPUs (torch" in table
    hardest = [line for line in table.splitlines() if line.startswith("- ") and "(seed 0): `" in line]
    assert len(hardest) == len(MODELS)  # every configuration's hardest images are listed
    by_type = table[table.index("By defect type") :]
    assert "| model | colour |" in by_type
    for model, record in read_records(out).items():
        colour = record["defect_types"]["colour"]
        assert f"| {model} | {colour['image_AUROC']:.3f} / {colour['pixel_AUROC']:.3f} |" in by_type
    for chart in CHARTS:
        assert_image(out / "figures" / chart)
    assert_image(out / "figures" / GALLERY, min_side=400)
    assert len(list((out / "maps").glob("*.pt"))) == len(MODELS)
    for record in read_records(out).values():
        hardest = record["hardest_images"]
        assert [image["defect"] for image in hardest] == [True, True, True, False]  # 3 lowest defects, 1 top normal


def test_defect_type_metrics_rank_each_type_against_the_normal_images() -> None:
    normal = torch.zeros(4, 4, dtype=torch.bool)
    blob = torch.zeros(4, 4, dtype=torch.bool)
    blob[:2, :2] = True
    paths = ["t/good/0.png", "t/good/1.png", "t/crack/0.png", "t/crack/1.png", "t/hole/0.png"]
    scores = [10.0, 40.0, 50.0, 30.0, 90.0]  # crack 30 is below normal 40: 3 of 4 pairs right
    found, missed = blob.float(), torch.zeros(4, 4)
    maps = [torch.full((4, 4), 0.2), torch.full((4, 4), 0.2), found, missed, (~blob).float()]  # hole: wrong place
    maps = [1e4 * anomaly_map for anomaly_map in maps]  # raw scores, far outside [0, 1]
    masks = [normal, normal, blob, blob, blob]
    metrics = defect_type_metrics(paths, scores, maps, masks)
    assert list(metrics) == ["crack", "hole"]
    assert metrics["crack"]["image_AUROC"] == 0.75
    assert metrics["hole"]["image_AUROC"] == 1.0
    # crack: 4 found pixels beat all 56 normal pixels, 4 missed ones tie with the 24 zeros: 272 of 8 * 56 pairs
    assert metrics["crack"]["pixel_AUROC"] == pytest.approx(272 / 448, abs=1e-4)
    assert metrics["hole"]["pixel_AUROC"] == 0.0
    assert defect_type_metrics(paths[2:], scores[2:], maps[2:], masks[2:]) == {}  # no normal images to rank against


def test_hardest_images_are_the_lowest_defects_and_the_highest_normal() -> None:
    scores = [0.9, 0.2, 0.7, 0.1, 0.5, 0.3]
    labels = [True, True, False, False, True, False]
    assert hardest_indices(scores, labels, count=3) == [1, 4, 2]
    assert hardest_indices(scores, labels, count=1) == [2]  # only the worst false alarm
    assert outranked_by(scores, labels, 1) == 2  # defect 0.2 is below normals 0.7 and 0.3
    assert outranked_by(scores, labels, 2) == 2  # normal 0.7 is above defects 0.2 and 0.5
    assert outranked_by(scores, labels, 0) == 0


@pytest.mark.slow
def test_failed_run_is_recorded_and_the_suite_goes_on(quick_suite: tuple[Path, str], tmp_path: Path) -> None:
    out = tmp_path / "bench"
    shutil.copytree(quick_suite[0], out)
    stdout = run_suite(
        "--quick", "--out", str(out), "--models", "patchcore", "padim", "--layers", "patchcore=blocks.2,blocks.3"
    ).stdout
    records = read_records(out)
    assert list(records) == sorted(MODELS)  # a run replaces its own record only
    failed = records["patchcore"]
    assert failed["status"] == "failed"
    assert "blocks.3" in failed["error"]  # timm exposes no blocks.3: the layer check names it
    assert failed["image_AUROC"] is None
    assert failed["settings"]["layers"] == ["blocks.2", "blocks.3"]
    assert "[1/2] patchcore hazelnut_toy/hazelnut pretrained seed 0 FAILED" in stdout
    assert "[2/2] padim hazelnut_toy/hazelnut pretrained seed 0: already done, skipped" in stdout
    assert "- patchcore on hazelnut_toy/hazelnut, seed 0: `" in (out / "RESULTS.md").read_text()
    assert not (out / "maps" / "patchcore__hazelnut_toy-hazelnut__pretrained__s0.pt").exists()


def test_a_killed_worker_is_recorded_with_its_last_progress_and_the_likely_cause() -> None:
    kill_itself = "import os, signal, sys; sys.stderr.write('coreset 3/7\\rcoreset 4/7'); sys.stderr.flush(); "
    kill_itself += "os.kill(os.getpid(), signal.SIGKILL)"
    status, tail = stream_worker([sys.executable, "-c", kill_itself])
    assert status == -signal.SIGKILL
    assert failure_message(status, tail) == (
        "coreset 4/7 (killed by signal 9: on Linux most often the out-of-memory killer, see dmesg)"
    )
    assert failure_message(-signal.SIGTERM, "") == "worker exited with status -15 (killed by signal 15)"
    assert failure_message(1, "Traceback\nValueError: bad layer\n") == "ValueError: bad layer"


def rescored_kept_checkpoint(
    quick_suite: tuple[Path, str],
    checkpoints: Path,
    lines: Path,
    model: str,
    rescore_main: Callable[[list[str]], None],
    variants: list[str],
) -> tuple[dict[str, dict], dict, Callable[[list[str]], int]]:
    """Re-score the quick suite's kept ``model`` with ``variants`` into the JSON lines file ``lines``.

    Returns:
        The re-scored lines by variant, the suite's record, and a function that re-scores again with other variants
        and returns the number of lines written in all.

    """
    assert (checkpoints / "pretrained" / "hazelnut_toy-hazelnut" / f"{model}__s0.ckpt").is_file()

    def rescore_again(chosen: list[str]) -> int:
        rescore_main([str(checkpoints), "--variants", *chosen, "--out", str(lines)])
        return len(lines.read_text().splitlines())

    rescore_again(variants)
    rescored = {line["variant"]: line for line in map(json.loads, lines.read_text().splitlines())}
    return rescored, read_records(quick_suite[0])[model], rescore_again


def test_every_rescore_variant_builds_its_scorer() -> None:
    model = tiny_dhkd()
    scorers = {name: rescore.variant_scorer(model, variant) for name, variant in rescore.VARIANTS.items()}
    assert scorers["default"].memory_map is None
    assert scorers["patch_memory"].memory_map.memory.size == 4096  # the suite ablation's memory
    assert scorers["patch_memory_16384_weight_2"].memory_map.weight == 2.0
    assert scorers["no_stride_4_pair"].map_indices == scorers["default"].map_indices[1:]


@pytest.mark.slow
def test_rescoring_a_kept_checkpoint_reproduces_its_record_and_changes_with_the_variant(
    quick_suite: tuple[Path, str], quick_checkpoints: Path, tmp_path: Path
) -> None:
    rescored, record, rescore_again = rescored_kept_checkpoint(
        quick_suite,
        quick_checkpoints,
        tmp_path / "rescore.jsonl",
        "dhkd",
        rescore.main,
        ["default", "scale_map_layers"],
    )
    default = rescored["default"]
    assert default["image_AUROC"] == pytest.approx(record["image_AUROC"], abs=1e-3)
    # The suite's maps pass anomalib's post-processor, which clips normalised values to [0, 1]; the raw maps do not.
    assert default["pixel_AUROC"] == pytest.approx(record["pixel_AUROC"], abs=5e-3)
    assert default["pixel_AUPRO"] == pytest.approx(record["pixel_AUPRO"], abs=5e-3)
    assert list(default["pixel_AUROC_by_type"]) == ["colour"]
    assert rescored["scale_map_layers"]["pixel_AUROC"] != default["pixel_AUROC"]  # other layer weights in the map
    assert rescore_again(["default"]) == 2  # already scored: skipped


@pytest.mark.slow
def test_rescoring_a_kept_dmdd_checkpoint_reproduces_its_pixel_metrics_and_reads_other_maps(
    quick_suite: tuple[Path, str], quick_checkpoints: Path, tmp_path: Path
) -> None:
    rescored, record, rescore_again = rescored_kept_checkpoint(
        quick_suite, quick_checkpoints, tmp_path / "rescore.jsonl", "dmdd", rescore_dmdd.main, ["default", "normality"]
    )
    default = rescored["default"]
    # Image scores are compared in the unit test of the default variant: anomalib's post-processor clips the
    # normalised scores to [0, 1], and the ties it makes among a one-epoch model's scores move the record's AUROC.
    assert default["pixel_AUROC"] == pytest.approx(record["pixel_AUROC"], abs=5e-3)
    assert default["pixel_AUPRO"] == pytest.approx(record["pixel_AUPRO"], abs=5e-3)
    assert rescored["normality"]["pixel_AUROC"] != default["pixel_AUROC"]  # another map of the same network
    assert rescore_again(["normality"]) == 2  # already scored: skipped


@pytest.mark.slow
def test_new_heads_on_a_kept_dmdd_checkpoint_train_and_its_own_head_reproduces_its_record(
    quick_suite: tuple[Path, str], quick_checkpoints: Path, tmp_path: Path
) -> None:
    rescored, record, rescore_again = rescored_kept_checkpoint(
        quick_suite,
        quick_checkpoints,
        tmp_path / "rescore.jsonl",
        "dmdd",
        retrain_dmdd_head.main,
        ["own", "multi_perception_log", "pixelwise_batch_statistics"],
    )
    own, retrained = rescored["own"], rescored["multi_perception_log"]
    # The batch-statistics head trains on a copy of the student in training mode: the evaluated network keeps the
    # running statistics it was saved with, so its own head still reproduces the record.
    assert own["pixel_AUROC"] == pytest.approx(record["pixel_AUROC"], abs=5e-3)
    assert own["pixel_AUPRO"] == pytest.approx(record["pixel_AUPRO"], abs=5e-3)
    assert 0.0 <= retrained["pixel_AUROC"] <= 1.0
    assert retrained["pixel_AUROC"] != own["pixel_AUROC"]  # a head of another kind, trained from scratch
    assert 0.0 <= rescored["pixelwise_batch_statistics"]["pixel_AUROC"] <= 1.0
    assert rescore_again(["own"]) == 3  # already scored: skipped


def test_heads_to_retrain_keep_the_resolution_and_the_local_head_has_no_dilated_context() -> None:
    maps = torch.rand(2, 6, 9, 7)
    for name, make_head in retrain_dmdd_head.HEADS.items():
        assert make_head(6).eval()(maps).shape == (2, 1, 9, 7), name
    assert isinstance(retrain_dmdd_head.local_head(6).context, torch.nn.Identity)
    head = retrain_dmdd_head.log_input(torch.nn.Identity())
    torch.testing.assert_close(head(maps + 1e-3), (maps + 1e-3).log())


def test_dmdd_default_rescoring_variant_is_the_models_own_map_and_score() -> None:
    torch.manual_seed(0)
    network = tiny_dmdd().model.eval()
    images = torch.rand(3, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with torch.no_grad():
        output = network(images)
        maps = rescore_dmdd.DmddMaps(*network.head_maps(images))
        anomaly_map, score = network.map_fusion([rescore_dmdd.VARIANTS["default"](maps, maps)], None, images.shape[-2:])
    torch.testing.assert_close(anomaly_map, output.anomaly_map)
    torch.testing.assert_close(score, output.pred_score)


@pytest.mark.slow
def test_finished_runs_are_skipped_and_other_seeds_or_settings_run(
    quick_suite: tuple[Path, str], tmp_path: Path
) -> None:
    out = tmp_path / "bench"
    shutil.copytree(quick_suite[0], out)
    before = read_records(out)
    stdout = run_suite("--quick", "--out", str(out), "--models", "dhkd", "padim").stdout
    assert stdout.count("already done, skipped") == 2
    assert read_records(out) == before
    stdout = run_suite("--quick", "--out", str(out), "--models", "padim", "--seeds", "1", "--budget-minutes", "30")
    assert "already done" not in stdout.stdout
    seeds = {record["settings"]["seed"] for record in load_records(out / "records") if record["model"] == "padim"}
    assert seeds == {0, 1}
    assert "padim | " in (out / "RESULTS.md").read_text()
    assert " ± " in (out / "RESULTS.md").read_text()  # two seeds of padim: mean ± std


def test_retiming_replaces_only_the_throughput_of_the_chosen_models_records(
    quick_suite: tuple[Path, str], tmp_path: Path
) -> None:
    records = tmp_path / "records"
    shutil.copytree(quick_suite[0] / "records", records)
    before = {record["model"]: record for record in load_records(records)}
    assert retime.retime(records, ["asymmetric_ts"], seconds=0.1) == 1
    after = {record["model"]: record for record in load_records(records)}
    throughput_fields = {name for name in MEASUREMENTS if "images_per_second" in name}
    assert len(throughput_fields) == 4
    retimed = after.pop("asymmetric_ts")
    kept = {name: value for name, value in before.pop("asymmetric_ts").items() if name not in throughput_fields}
    assert {name: retimed[name] for name in kept} == kept  # metrics, settings, environment of the run unchanged
    assert all(retimed[name] > 0 for name in throughput_fields)
    assert "date" in retimed["throughput_environment"]
    assert after == before
    with pytest.raises(SystemExit, match="no ok record"):
        retime.main(["--models", "asymmetric_ts", "--records", str(tmp_path / "empty")])


def test_a_record_without_a_newer_option_stays_current_but_another_value_does_not(tmp_path: Path) -> None:
    from benchmarks.suite.records import finished_run

    current = synthetic_record("bikd", "toy/cat", 0, 0.9)
    older = json.loads(json.dumps(current))
    del older["settings"]["options"]["directions"]  # measured before the argument existed
    save_record(tmp_path, older)
    defaults = current["settings"]["options"]
    assert finished_run(tmp_path, current, defaults) is not None
    assert finished_run(tmp_path, current) is None  # without the defaults every option must match
    other = json.loads(json.dumps(current))
    other["settings"]["options"]["directions"] = ["forward"]  # the older record measured both directions
    assert finished_run(tmp_path, other, defaults) is None
    changed = json.loads(json.dumps(current))
    changed["settings"]["options"]["exchange_weight"] = 0.25
    assert finished_run(tmp_path, changed, defaults) is None


def test_a_setting_added_to_a_group_at_its_default_keeps_older_records_current(tmp_path: Path) -> None:
    from benchmarks.suite.records import finished_run

    current = synthetic_record("dhkd", "toy/cat", 0, 0.9)
    current["settings"]["options"]["scoring"] = {"blur_sigma": 4.0, "scale_map_layers": False}
    older = json.loads(json.dumps(current))
    del older["settings"]["options"]["scoring"]["scale_map_layers"]  # measured before the setting existed
    save_record(tmp_path, older)
    defaults = current["settings"]["options"]
    assert finished_run(tmp_path, current, defaults) is not None
    switched_on = json.loads(json.dumps(current))
    switched_on["settings"]["options"]["scoring"]["scale_map_layers"] = True
    assert finished_run(tmp_path, switched_on, defaults) is None


def test_a_record_without_an_option_that_changed_the_model_is_not_current(tmp_path: Path) -> None:
    from benchmarks.run import current_records
    from benchmarks.suite.records import finished_run

    current = synthetic_record("asymmetric_ts", "toy/cat", 0, 0.9)
    defaults = current["settings"]["options"]
    assert defaults["student"]["linear_output"] is True
    older = json.loads(json.dumps(current))
    del older["settings"]["options"]["student"]["linear_output"]  # measured with the first version's ReLU output
    save_record(tmp_path, older)
    assert finished_run(tmp_path, current, defaults) is None
    assert current_records([older], quick=True) == []
    assert current_records([current], quick=True) == [current]


def test_the_report_leaves_out_records_measured_with_older_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.run import current_records

    today = synthetic_record("bikd", "toy/cat", 0, 0.9)
    before_a_switch = json.loads(json.dumps(today))
    del before_a_switch["settings"]["options"]["directions"]  # the model was the same: kept
    older_model = json.loads(json.dumps(today))
    older_model["settings"]["options"]["exchange_weight"] = 0.25  # another model: left out
    gone = {**json.loads(json.dumps(today)), "model": "bikd+no_such_variant"}
    variant = {**json.loads(json.dumps(today)), "model": "bikd+no_exchange"}  # full settings, not the variant's
    kept = current_records([today, before_a_switch, older_model, gone, variant], quick=True)
    assert kept == [today, before_a_switch]
    assert "3 record(s) measured with other settings than today's left out" in capsys.readouterr().out


def test_budget_stops_before_a_new_run(tmp_path: Path) -> None:
    from benchmarks import run

    shared_category("hazelnut_toy", "hazelnut")
    with pytest.raises(SystemExit, match="no records"):
        run.main(["--quick", "--out", str(tmp_path), "--models", "padim", "--budget-minutes", "0"])
    assert not list(tmp_path.rglob("*.json"))


def test_plan_covers_datasets_tracks_and_seeds_and_skips_tracks_a_model_does_not_run_in() -> None:
    from benchmarks import run

    args = run.parse_args(["--models", "dhkd", "cflow", "--datasets", "bottle", "--seeds", "0", "1"])
    if not args.specs:
        pytest.skip("shared data not found")
    runs = run.plan(args)
    assert {(run_.model, run_.track) for run_ in runs} == {
        ("dhkd", "pretrained"),
        ("dhkd", "none"),
        ("cflow", "pretrained"),  # CFlow runs with ImageNet weights only
    }
    assert len(runs) == 3 * 2
    assert {run_.spec.rpartition(":")[2] for run_ in runs} == {"bottle"}
    assert all(run_.configuration == run_.model for run_ in runs)
    with_draem = run.parse_args(["--models", "padim", "draem", "--datasets", "bottle", "--seeds", "0"])
    assert {run_.model for run_ in run.plan(with_draem)} == {"padim"}  # DRAEM needs a GPU in the full suite
    with_draem.accelerator = "gpu"
    assert {run_.model for run_ in run.plan(with_draem)} == {"padim", "draem"}


def test_ablation_plan_runs_each_variant_where_it_changes_the_configuration() -> None:
    from benchmarks import run
    from benchmarks.suite.ablations import ABLATIONS

    models = ["dhkd", "bikd", "dmdd", "padim"]
    args = run.parse_args(["--ablations", "--models", *models, "--datasets", "bottle", "--seeds", "0"])
    if not args.specs:
        pytest.skip("shared data not found")
    runs = run.plan(args)
    assert {run_.model for run_ in runs} == {"dhkd", "bikd", "dmdd"}  # PaDiM has no ablations
    assert ("dhkd+no_global_score", "pretrained") in {(run_.configuration, run_.track) for run_ in runs}
    # without ImageNet weights DHKD has no global score to leave out
    assert ("dhkd+no_global_score", "none") not in {(run_.configuration, run_.track) for run_ in runs}
    for run_ in runs:
        suite = run_settings(run_.model, run_.track, 256, 0, quick=False)
        assert run_.settings != suite
        # only the options and, for a variant that says so, the layers or the epochs change
        unchanged = dataclasses.replace(run_.settings, options=suite.options, layers=suite.layers, epochs=suite.epochs)
        assert unchanged == suite
    layers = {run_.configuration: run_.settings.layers for run_ in runs if run_.track == "pretrained"}
    assert layers["dhkd+no_stride_4_pair"] == ("blocks.2", "blocks.4")
    assert layers["dhkd+no_coherence"] == ("blocks.1", "blocks.2", "blocks.4")
    epochs = {run_.configuration: run_.settings.epochs for run_ in runs if run_.track == "pretrained"}
    assert epochs["dmdd+half_epochs"] == epochs["dmdd+no_aim"] // 2
    suite_dmdd = run_settings("dmdd", "pretrained", 256, 0, quick=False)
    joint = next(
        run_.settings for run_ in runs if (run_.configuration, run_.track) == ("dmdd+joint_only", "pretrained")
    )
    # joint training only: the suite's schedule without its head-only epochs
    assert joint.options["head_epochs"] == 0 < suite_dmdd.options["head_epochs"]
    assert joint.epochs == suite_dmdd.epochs - suite_dmdd.options["head_epochs"]
    bikd = {run_.configuration for run_ in runs if run_.model == "bikd" and run_.track == "pretrained"}
    assert bikd == {f"bikd+{name}" for name in ABLATIONS["bikd"]}
    only = run.parse_args(["--ablations", "--models", "bikd", "--variants", "no_exchange", "--datasets", "bottle"])
    assert {run_.configuration for run_ in run.plan(only)} == {"bikd+no_exchange"}


def test_every_ablation_builds_its_model() -> None:
    from benchmarks.suite.ablations import ABLATIONS, ablation_settings

    for model, variants in ABLATIONS.items():
        for variant in variants:
            for track in ("pretrained", "none"):
                settings = ablation_settings(model, variant, track, 64, 0)
                if settings is None:
                    continue
                built = SUITE_MODELS[model].build(
                    settings.layers, pre_trained=False, epochs=settings.epochs, image_size=64, options=settings.options
                )
                assert built.hparams  # the constructor took every option


def test_ablation_report_puts_each_variant_beside_the_full_model(tmp_path: Path) -> None:
    from benchmarks.suite.ablations import write_ablation_report

    suite = [synthetic_record("bikd", "toy/cat", seed, auroc) for seed, auroc in enumerate([0.9, 0.8])]
    variant = []
    for seed, auroc in enumerate([0.7, 0.6]):
        record = synthetic_record("bikd", "toy/cat", seed, auroc)
        variant.append({**record, "model": "bikd+no_exchange"})
    report = write_ablation_report(variant, suite, tmp_path / "ABLATIONS.md").read_text()
    assert "### bikd, track pretrained" in report
    assert "| full model | 0.850 ± 0.071 / 1.000 ± 0.000 / 1.000 ± 0.000 | - |" in report
    change = "| -20.0 / +0.0 / +0.0 | no exchange of either kind, with the synthetic anomalies |"
    assert "| no_exchange | 0.650 ± 0.071 / 1.000 ± 0.000 / 1.000 ± 0.000 " + change in report
    assert "track none" not in report  # no variant ran there
    suite.append(synthetic_record("bikd", "toy/cat", 2, 0.1))  # a seed the variant lacks does not enter the change
    report = write_ablation_report(variant, suite, tmp_path / "ABLATIONS.md").read_text()
    assert "| -20.0 / +0.0 / +0.0 |" in report


def test_datasets_are_discovered_from_the_mvtec_layout(tmp_path: Path) -> None:
    for name in ("set_a/cat_1", "set_a/cat_2", "set_b/only"):
        (tmp_path / name / "train" / "good").mkdir(parents=True)
    (tmp_path / "set_b" / "not_a_category" / "test").mkdir(parents=True)
    specs = discover_datasets(tmp_path)
    assert [dataset_name(spec) for spec in specs] == ["set_a/cat_1", "set_a/cat_2", "set_b/only"]
    assert specs[0] == f"{tmp_path / 'set_a'}:cat_1"
    assert discover_datasets(tmp_path / "missing") == []


def synthetic_record(model: str, dataset: str, seed: int, auroc: float, track: str = "pretrained") -> dict:
    """An ok record of ``model`` with every measurement 1.0 but image AUROC ``auroc``."""
    settings = run_settings(model, track, image_size=64, seed=seed, quick=True)
    record = base_record(model, dataset, track, settings)
    record.update(dict.fromkeys(MEASUREMENTS, 1.0), image_AUROC=auroc, status="ok")
    return record


def test_gallery_takes_each_model_from_its_lowest_seed_that_kept_maps(tmp_path: Path) -> None:
    from benchmarks.suite.records import maps_path
    from benchmarks.suite.report import gallery_maps, grouped

    records = [synthetic_record("padim", "toy/cat", seed, 0.9) for seed in (0, 1, 2)]
    for seed in (1, 2):  # seed 0 ran on another machine: its maps are not here
        path = maps_path(tmp_path, records[seed])
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"image_paths": [], "map_range": torch.tensor([0.0, float(seed)])}, path)
    maps = gallery_maps(grouped(records), "toy/cat", "pretrained", tmp_path)
    assert maps["padim"]["map_range"].tolist() == [0.0, 1.0]
    assert gallery_maps(grouped(records), "toy/dog", "pretrained", tmp_path) == {}


def test_report_gives_mean_and_std_over_seeds_and_bolds_a_clear_lead_only(tmp_path: Path) -> None:
    from benchmarks.suite.report import write_report

    records = tmp_path / "records"
    runs = {"dhkd": [0.95, 0.97, 0.96], "padim": [0.90, 0.91, 0.89], "cflow": [0.80, 0.99, 0.60]}
    for model, aurocs in runs.items():
        for seed, auroc in enumerate(aurocs):
            save_record(records, synthetic_record(model, "toy/cat", seed, auroc))
            save_record(records, synthetic_record(model, "toy/dog", seed, 1.0 - auroc))
            save_record(records, synthetic_record(model, "toy/fox", seed, auroc))
    assert len(list(records.rglob("*.json"))) == 27
    written = write_report(load_records(records), tmp_path, maps_dir=tmp_path)
    assert written[0] == tmp_path / "RESULTS.md"
    table = written[0].read_text()
    cat = table[table.index("### toy/cat") : table.index("### toy/dog")]
    assert "| dhkd | **0.960 ± 0.010** |" in cat  # leads padim by 0.06, more than their pooled std 0.01
    assert "s0: 0.950 / 1.000 / 1.000; s1: 0.970 / 1.000 / 1.000; s2: 0.960 / 1.000 / 1.000" in cat
    dog = table[table.index("### toy/dog") : table.index("### toy/fox")]
    assert "| cflow | 0.203 ± 0.195 |" in dog  # leads padim by 0.10, within their pooled std 0.14: not bold
    # image AUROC ranks on cat, dog, fox: dhkd 1, 3, 1; padim 2, 2, 2; cflow 3, 1, 3 (pixel metrics all tied)
    assert "| dhkd | 0.653 | 1.000 | 1.000 | 1.67 / 2.00 / 2.00 | 3 |" in table
    assert "| padim | 0.633 | 1.000 | 1.000 | 2.00 / 2.00 / 2.00 | 3 |" in table
    assert "| cflow | 0.599 | 1.000 | 1.000 | 2.33 / 2.00 / 2.00 | 3 |" in table
    for chart in CHARTS:
        assert_image(tmp_path / "figures" / chart)


def test_summary_averages_only_the_datasets_every_configuration_has(tmp_path: Path) -> None:
    from benchmarks.suite.report import write_report

    records = [synthetic_record("dhkd", "toy/cat", 0, 0.9), synthetic_record("dhkd", "toy/dog", 0, 0.5)]
    records.append(synthetic_record("padim", "toy/cat", 0, 0.8))
    table = write_report(records, tmp_path, maps_dir=tmp_path)[0].read_text()
    assert "| dhkd | 0.900 | 1.000 | 1.000 | 1.00 / 1.50 / 1.50 | 2 |" in table  # toy/dog left out of the mean
    assert "| padim | 0.800 | 1.000 | 1.000 | 2.00 / 1.50 / 1.50 | 1 |" in table
    assert "all configurations have results on: toy/cat." in table
    assert "Measured for some configurations only (see their tables): toy/dog." in table


def test_readme_summary_is_replaced_between_its_markers_only(tmp_path: Path) -> None:
    from benchmarks.suite.report import README_END, README_START, update_readme

    records = [synthetic_record("padim", "toy/cat", seed, auroc) for seed, auroc in enumerate([0.9, 0.8])]
    readme = tmp_path / "README.md"
    readme.write_text("intro\n")
    assert update_readme(readme, records) is None  # no markers: untouched
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\noutro\n")
    assert update_readme(readme, records) == readme
    text = readme.read_text()
    assert text.startswith("intro\n")
    assert text.endswith(f"{README_END}\noutro\n")
    assert "old table" not in text
    assert "| padim | 0.850 | 1.000 | 1.000 | 1.00 / 1.00 / 1.00 | 1 |" in text
    assert "benchmarks/RESULTS.md" in text


def test_report_only_without_records_fails(tmp_path: Path) -> None:
    from benchmarks import run

    with pytest.raises(SystemExit, match="no records"):
        run.main(["--report-only", "--quick", "--out", str(tmp_path)])


@pytest.mark.usefixtures("pretrained_weights")
def test_fx_backbone_reaches_blocks_3_and_matches_the_timm_layers_bit_for_bit() -> None:
    from anomalib.models.components import TimmFeatureExtractor

    from benchmarks.suite.backbones import fx_backbone

    timm_path = TimmFeatureExtractor("tf_efficientnet_lite0", layers=["blocks.1", "blocks.4"], pre_trained=True)
    module = fx_backbone("tf_efficientnet_lite0", pre_trained=True, image_size=96)
    fx_path = TimmFeatureExtractor(module, layers=["blocks.1", "blocks.3", "blocks.4"], requires_grad=False)
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        expected, actual = timm_path.eval()(images), fx_path.eval()(images)
    for layer in ("blocks.1", "blocks.4"):
        assert torch.equal(actual[layer], expected[layer]), layer
    assert actual["blocks.3"].shape == (2, 80, 6, 6)  # 80 channels at stride 16


@pytest.mark.parametrize("track", ["pretrained", "none"])
def test_stfpm_on_the_fx_backbone_trains_a_student_of_its_own(track: str) -> None:
    settings = run_settings("stfpm_b3", track, image_size=64, seed=0, quick=True)
    model = SUITE_MODELS["stfpm_b3"].build(settings.layers, settings.pre_trained, 1, 64, settings.options)
    teacher, student = model.model.teacher_model, model.model.student_model
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in student.parameters()}
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        features = student(images)
    assert features["blocks.3"].shape == (2, 80, 4, 4)  # the real blocks.3


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


def test_profile_times_every_sub_module_and_lists_operations(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from benchmarks.profile import main as profile_main

    arguments = ["--models", "bikd", "--image-size", "64", "--rounds", "2", "--track", "none", "--out", str(tmp_path)]
    profile_main([*arguments, "--variants", "reverse_only", "no_head"])
    result = json.loads((tmp_path / "profile_bikd_b1.json").read_text())
    assert {"teacher", "forward_student", "bottleneck", "decoder", "scorer"} <= set(result["modules_ms"])
    assert result["forward_ms"] > 0
    assert result["encoder_ms"] > 0
    assert 0 < sum(result["operations_share"].values()) <= 1
    variant = json.loads((tmp_path / "profile_bikd+reverse_only_b1.json").read_text())
    assert "forward_student" not in variant["modules_ms"]  # the variant's own model, without the forward branch
    assert not (tmp_path / "profile_bikd+no_head_b1.json").exists()  # Dmdd's variant, not Bikd's
    out = capsys.readouterr().out
    assert "bikd: forward" in out
    assert "bikd+reverse_only: forward" in out
