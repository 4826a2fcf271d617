"""Tests of the offline texture dataset with synthetic defects (:mod:`anomalib_dhkd.tools.data.synthetic`)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anomalib_dhkd.tools.data import generate_texture_dataset, synthetic
from anomalib_dhkd.tools.data.synthetic import DEFECT_TYPES, MANIFEST_NAME, TextureDatasetSpec

SMALL = {"image_size": 64, "num_train": 8, "num_test_good": 4, "num_test_defect": 8}


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _files(category_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(category_dir)): p.read_bytes() for p in sorted(category_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_texture_dataset(tmp_path_factory.mktemp("textures"), category="brick", **SMALL)


def test_layout_and_counts(dataset: Path) -> None:
    assert dataset.name == "brick"
    assert (dataset / MANIFEST_NAME).is_file()
    assert len(list((dataset / "train" / "good").glob("*.png"))) == 8
    assert len(list((dataset / "test" / "good").glob("*.png"))) == 4
    for defect_type in DEFECT_TYPES:
        images = sorted((dataset / "test" / defect_type).glob("*.png"))
        masks = sorted((dataset / "ground_truth" / defect_type).glob("*.png"))
        assert [p.name for p in images] == ["000.png", "001.png"]
        assert [p.name for p in masks] == ["000_mask.png", "001_mask.png"]
    # Only the category folder is left in the root: no temporary or stale build folders.
    assert [p.name for p in dataset.parent.iterdir()] == ["brick"]


def test_images_are_rgb_gray(dataset: Path) -> None:
    for path in dataset.glob("*/*/*.png"):
        if path.parts[-3] == "ground_truth":
            continue
        image = _read(path)
        assert image.shape == (64, 64, 3)
        assert image.dtype == np.uint8
        assert (image == image[..., :1]).all()


def test_masks_are_binary_and_bounded(dataset: Path) -> None:
    for defect_type in DEFECT_TYPES:
        for image_path in (dataset / "test" / defect_type).glob("*.png"):
            mask = _read(dataset / "ground_truth" / defect_type / f"{image_path.stem}_mask.png")
            assert mask.shape == _read(image_path).shape[:2]
            assert set(np.unique(mask)) == {0, 255}
            assert 0.005 <= (mask > 0).mean() <= 0.06


def test_written_files_match_generated_samples(dataset: Path) -> None:
    """The files on disk are the samples of ``iter_samples``, whose masks are exactly the changed pixels."""
    spec = TextureDatasetSpec(category="brick", **SMALL)
    samples = list(synthetic.iter_samples(spec))
    assert len(samples) == 8 + 4 + 8
    for sample in samples:
        image = _read(dataset / sample.split / sample.label / f"{sample.index:03d}.png")
        np.testing.assert_array_equal(image[..., 0], sample.image)
        if sample.mask is None:
            np.testing.assert_array_equal(sample.image, sample.clean)
            continue
        np.testing.assert_array_equal(sample.image != sample.clean, sample.mask)
        mask = _read(dataset / "ground_truth" / sample.label / f"{sample.index:03d}_mask.png")
        np.testing.assert_array_equal(mask > 0, sample.mask)


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
@pytest.mark.parametrize("fill", [None, 0, 255])
def test_apply_defect_changes_exactly_the_mask(defect_type: str, fill: int | None) -> None:
    rng = np.random.default_rng(1)
    photo = synthetic.load_texture("brick")
    clean = synthetic.jitter_brightness(synthetic.sample_crop(photo, rng, 96), rng)
    if fill is not None:
        clean = np.full_like(clean, fill)
    donor = synthetic.sample_crop(synthetic.load_texture("gravel"), rng, 96)
    for _ in range(5):
        image, mask = synthetic.apply_defect(clean, defect_type, rng, donor=donor)
        assert image.shape == clean.shape
        assert image.dtype == np.uint8
        assert mask.shape == clean.shape
        assert 0.005 <= mask.mean() <= 0.06
        np.testing.assert_array_equal(image != clean, mask)
        np.testing.assert_array_equal(image[~mask], clean[~mask])


def test_apply_defect_rejects_unknown_type() -> None:
    clean = np.zeros((64, 64), dtype=np.uint8)
    with pytest.raises(ValueError, match="Unknown defect type"):
        synthetic.apply_defect(clean, "dent", np.random.default_rng(0))
    with pytest.raises(ValueError, match="donor"):
        synthetic.apply_defect(clean, "patch", np.random.default_rng(0))


def test_test_images_are_not_train_copies(dataset: Path) -> None:
    train = [_read(p) for p in (dataset / "train" / "good").glob("*.png")]
    for path in (dataset / "test" / "good").glob("*.png"):
        test_image = _read(path)
        assert not any(np.array_equal(test_image, image) for image in train)


def test_deterministic_for_a_seed(dataset: Path, tmp_path: Path) -> None:
    same = generate_texture_dataset(tmp_path / "same", category="brick", **SMALL)
    assert _files(same) == _files(dataset)
    other = generate_texture_dataset(tmp_path / "other", category="brick", seed=1, **SMALL)
    other_files = _files(other)
    assert other_files.keys() == _files(dataset).keys()
    assert other_files != _files(dataset)


def test_reuses_complete_dataset(tmp_path: Path) -> None:
    category_dir = generate_texture_dataset(tmp_path, category="grass", **SMALL)
    marker = category_dir / "marker"
    marker.touch()
    mtimes = {p: p.stat().st_mtime_ns for p in category_dir.rglob("*.*")}
    assert generate_texture_dataset(tmp_path, category="grass", **SMALL) == category_dir
    assert marker.exists()
    assert {p: p.stat().st_mtime_ns for p in category_dir.rglob("*.*")} == mtimes


@pytest.mark.parametrize(
    "change",
    [{"image_size": 48}, {"num_test_defect": 5}, {"seed": 3}, {"overwrite": True}],
)
def test_regenerates_when_parameters_change(tmp_path: Path, change: dict) -> None:
    category_dir = generate_texture_dataset(tmp_path, category="gravel", **SMALL)
    (category_dir / "marker").touch()
    params = SMALL | change
    assert generate_texture_dataset(tmp_path, category="gravel", **params) == category_dir
    assert not (category_dir / "marker").exists()
    spec = TextureDatasetSpec("gravel", **{k: v for k, v in params.items() if k != "overwrite"})
    assert synthetic.is_complete(category_dir, spec)
    assert _read(category_dir / "train" / "good" / "000.png").shape[0] == spec.image_size
    assert [p.name for p in tmp_path.iterdir()] == ["gravel"]


def test_regenerates_incomplete_dataset(tmp_path: Path) -> None:
    category_dir = generate_texture_dataset(tmp_path, **SMALL)
    (category_dir / "test" / "stain" / "001.png").unlink()
    generate_texture_dataset(tmp_path, **SMALL)
    assert (category_dir / "test" / "stain" / "001.png").is_file()


def test_does_not_replace_foreign_folder(tmp_path: Path) -> None:
    foreign = tmp_path / "brick"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        generate_texture_dataset(tmp_path, **SMALL)
    assert (foreign / "keep.txt").is_file()
    generate_texture_dataset(tmp_path, overwrite=True, **SMALL)
    assert not (foreign / "keep.txt").exists()
    assert (foreign / MANIFEST_NAME).is_file()


def test_interrupted_generation_leaves_no_partial_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_write(*args: object) -> None:
        calls.append(args)
        if len(calls) > 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_sample", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_texture_dataset(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []

    # An interrupted regeneration keeps the previous complete dataset.
    monkeypatch.undo()
    category_dir = generate_texture_dataset(tmp_path, **SMALL)
    before = _files(category_dir)
    monkeypatch.setattr(synthetic, "_write_sample", failing_write)
    with pytest.raises(KeyboardInterrupt):
        generate_texture_dataset(tmp_path, overwrite=True, **SMALL)
    assert _files(category_dir) == before
    assert [p.name for p in tmp_path.iterdir()] == ["brick"]


def test_rejects_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="category"):
        generate_texture_dataset(tmp_path, category="marble")
    with pytest.raises(ValueError, match="image_size"):
        generate_texture_dataset(tmp_path, image_size=8)
    with pytest.raises(ValueError, match="negative"):
        generate_texture_dataset(tmp_path, num_train=-1)


def test_cli(tmp_path: Path) -> None:
    argv = ["--root", str(tmp_path), "--category", "gravel", "--image-size", "32"]
    argv += ["--num-train", "2", "--num-test-good", "1", "--num-test-defect", "4", "--seed", "5"]
    command = [sys.executable, "-m", "anomalib_dhkd.tools.data.synthetic", *argv]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    assert str(tmp_path / "gravel") in output
    assert "train/good: 2" in output
    assert "test/scratch: 1" in output
    # The API reuses what the CLI wrote.
    (tmp_path / "gravel" / "marker").touch()
    generate_texture_dataset(tmp_path, "gravel", image_size=32, num_train=2, num_test_good=1, num_test_defect=4, seed=5)
    assert (tmp_path / "gravel" / "marker").exists()


def test_package_import_does_not_import_torch() -> None:
    code = "import sys, anomalib_dhkd.tools.data as d; d.generate_texture_dataset; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_anomalib_mvtec_datamodule_loads_dataset(dataset: Path) -> None:
    from anomalib.data import MVTecAD
    from anomalib.data.utils import ValSplitMode

    datamodule = MVTecAD(
        root=dataset.parent,
        category="brick",
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )
    datamodule.setup()

    train = datamodule.train_data.samples
    assert len(train) == 8
    assert (train.label_index == 0).all()

    test = datamodule.test_data.samples
    if datamodule.val_split_mode == ValSplitMode.FROM_TEST:
        # Part of the test split went to validation: the two together hold all test images.
        test = pd.concat([test, datamodule.val_data.samples])
    assert len(test) == 4 + 8
    assert set(test.label_index) == {0, 1}
    assert set(test.label[test.label_index == 1]) == set(DEFECT_TYPES)
    abnormal = test[test.label_index == 1]
    for image_path, mask_path in zip(abnormal.image_path, abnormal.mask_path, strict=True):
        assert Path(mask_path).name == f"{Path(image_path).stem}_mask.png"
        assert Path(mask_path).parent.name == Path(image_path).parent.name

    labels, mask_areas = [], []
    for batch in datamodule.test_dataloader():
        assert batch.image.shape[1:] == (3, 64, 64)
        assert batch.gt_mask.shape[1:] == (64, 64)
        labels += batch.gt_label.tolist()
        mask_areas += batch.gt_mask.flatten(1).sum(1).tolist()
    assert len(labels) == len(datamodule.test_data)
    assert set(labels) == {0, 1}
    assert all((area > 0) == bool(label) for label, area in zip(labels, mask_areas, strict=True))
