"""Tests of the dataset check (python -m anomalib_dhkd.check) and of the claims its messages make about anomalib."""

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalib_dhkd.constants import IMAGE_EXTENSIONS, MVTEC_EXTENSIONS
from anomalib_dhkd.tools.check import check_dataset, main

RNG = np.random.default_rng(0)


def noise(height: int = 64, width: int = 64, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


def mask(height: int = 64, width: int = 64) -> np.ndarray:
    array = np.zeros((height, width), np.uint8)
    array[10:20, 10:20] = 255
    return array


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A clean MVTec-layout dataset: category ``parts``, 4 train, 1 good and 2 defect test images with masks."""
    category = tmp_path / "data" / "parts"
    for i in range(4):
        save(category / "train" / "good" / f"{i:03d}.png", noise())
    save(category / "test" / "good" / "000.png", noise())
    for i in range(2):
        save(category / "test" / "crack" / f"{i:03d}.png", noise())
        save(category / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask())
    (category / "license.txt").write_text("not in an image folder: fine")
    return tmp_path / "data"


def test_clean_dataset_passes(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = check_dataset(dataset)
    assert report.ok, report.lines()
    assert report.layout == "mvtec"
    assert report.categories == ["parts"]
    assert dict(report.counts) == {"train": 4, "test": 3, "ground_truth": 2}
    assert main([str(dataset), "--category", "parts"]) == 0
    assert "Checked 9 images" in capsys.readouterr().out
    # the category folder itself works too
    assert check_dataset(dataset / "parts").ok
    assert check_dataset(dataset / "parts", category="parts").ok


def corrupt(category: Path) -> Path:
    path = category / "train" / "good" / "bad.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return path


def truncated(category: Path) -> Path:
    path = category / "test" / "good" / "000.png"
    path.write_bytes(path.read_bytes()[:-2000])
    return path


def zero_byte(category: Path) -> Path:
    path = category / "train" / "good" / "empty.png"
    path.touch()
    return path


def tiny(category: Path) -> Path:
    return save(category / "train" / "good" / "tiny.png", noise(20, 80))


def defect_without_mask(category: Path) -> Path:
    (category / "ground_truth" / "crack" / "001_mask.png").unlink()
    return category / "test" / "crack" / "001.png"


def mask_without_image(category: Path) -> Path:
    return save(category / "ground_truth" / "crack" / "007_mask.png", mask())


def empty_train(category: Path) -> Path:
    for path in (category / "train" / "good").iterdir():
        path.unlink()
    return category / "train" / "good"


def missing_train(category: Path) -> Path:
    shutil.rmtree(category / "train")
    return category / "train" / "good"


def black_train_image(category: Path) -> Path:
    return save(category / "train" / "good" / "black.png", np.zeros((64, 64, 3), np.uint8))


def stray_text_file(category: Path) -> Path:
    path = category / "train" / "good" / "notes.txt"
    path.write_text("camera settings")
    return path


def thumbs_db(category: Path) -> Path:
    path = category / "test" / "crack" / "Thumbs.db"
    path.write_bytes(b"\xd0\xcf\x11\xe0" + bytes(100))
    return path


def gif_file(category: Path) -> Path:
    return save(category / "train" / "good" / "frame.gif", noise(), mode="P")


def jpeg_in_mvtec(category: Path) -> Path:
    return save(category / "train" / "good" / "photo.jpg", noise())


def mask_size_mismatch(category: Path) -> Path:
    return save(category / "ground_truth" / "crack" / "000_mask.png", mask(32, 32))


def empty_mask(category: Path) -> Path:
    return save(category / "ground_truth" / "crack" / "001_mask.png", np.zeros((64, 64), np.uint8))


def defect_folder_in_train(category: Path) -> Path:
    save(category / "train" / "crack" / "000.png", noise())
    return category / "train" / "crack"


def sixteen_bit_gray(category: Path) -> Path:
    return save(category / "train" / "good" / "g16.png", (noise(channels=1).astype(np.uint16) * 257))


BAD_CASES: list[tuple[Callable[[Path], Path], str]] = [
    (corrupt, "corrupt"),
    (truncated, "corrupt"),
    (zero_byte, "0-byte"),
    (tiny, "stride 16"),
    (defect_without_mask, "without a mask"),
    (mask_without_image, "without a defect image"),
    (empty_train, "nothing to train on"),
    (missing_train, "nothing to train on"),
    (black_train_image, "constant image"),
    (stray_text_file, "not an image"),
    (thumbs_db, "not an image"),
    (gif_file, "does not read"),
    (jpeg_in_mvtec, "reads only .png"),
    (mask_size_mismatch, "stretched"),
    (defect_folder_in_train, "must hold only good"),
    (sixteen_bit_gray, "clips values above 255"),
]


@pytest.mark.parametrize(("make_bad", "words"), BAD_CASES, ids=[make.__name__ for make, _ in BAD_CASES])
def test_each_problem_is_reported_with_its_file(
    dataset: Path, make_bad: Callable[[Path], Path], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = make_bad(dataset / "parts")
    report = check_dataset(dataset, category="parts")
    assert [problem.path for problem in report.problems] == [bad], report.lines()
    problem = report.problems[0]
    assert words in problem.message
    assert problem.fix
    assert main([str(dataset)]) == 1
    assert f"PROBLEM {bad}: " in capsys.readouterr().out


def test_an_empty_mask_is_a_warning_that_does_not_fail_the_check(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = empty_mask(dataset / "parts")
    report = check_dataset(dataset, category="parts")
    assert [(problem.path, problem.blocking) for problem in report.problems] == [(bad, False)]
    assert "empty mask" in report.problems[0].message
    assert report.ok
    assert main([str(dataset)]) == 0
    out = capsys.readouterr().out
    assert f"WARNING {bad}: " in out
    assert "0 problem(s), 1 warning(s)." in out


def test_every_problem_is_listed_at_once(dataset: Path) -> None:
    category = dataset / "parts"
    bad = {make(category) for make in (corrupt, zero_byte, tiny, defect_without_mask, black_train_image, thumbs_db)}
    report = check_dataset(dataset)
    assert {problem.path for problem in report.problems} == bad
    assert len(report.problems) == len(bad)


def test_overlapping_names_are_not_paired(dataset: Path) -> None:
    """anomalib pairs 1.png with 11_mask.png (substring match); the check pairs exact names only."""
    from anomalib.data.datasets.image.mvtecad import make_mvtec_ad_dataset

    category = dataset / "parts"
    for name in ("000", "001"):
        (category / "test" / "crack" / f"{name}.png").rename(category / "test" / "crack" / f"{int(name) + 1}.png")
        (category / "ground_truth" / "crack" / f"{name}_mask.png").unlink()
    save(category / "ground_truth" / "crack" / "11_mask.png", mask())
    save(category / "ground_truth" / "crack" / "2_mask.png", mask())
    samples = make_mvtec_ad_dataset(category, split="test")
    pairs = {Path(row.image_path).name: Path(row.mask_path).name for row in samples.itertuples() if row.mask_path}
    assert pairs == {"1.png": "11_mask.png", "2.png": "2_mask.png"}  # silently wrong in anomalib
    report = check_dataset(dataset)
    assert {problem.path.name for problem in report.problems} == {"1.png", "11_mask.png"}


def test_anomalib_behaviour_named_in_the_messages(dataset: Path) -> None:
    """The errors anomalib's MVTecAD gives (or does not give) are what the check's messages say."""
    from anomalib.data.datasets.image.mvtecad import make_mvtec_ad_dataset
    from anomalib.data.errors import MisMatchError

    category = dataset / "parts"
    jpeg_in_mvtec(category)
    assert len(make_mvtec_ad_dataset(category, split="train")) == 4  # the JPEG is skipped without a word
    defect_without_mask(category)
    with pytest.raises(ValueError, match="Must have equal len keys and value"):
        make_mvtec_ad_dataset(category)
    mask_without_image(category)  # one mask missing and one left over: anomalib's generic mismatch error
    with pytest.raises(MisMatchError, match="Mismatch between anomalous images and ground truth masks"):
        make_mvtec_ad_dataset(category)


def test_anomalib_stretches_a_mask_of_another_size(dataset: Path) -> None:
    """A mask of another size passes anomalib's MVTecAD without a word: both are resized to the input size."""
    from anomalib.data.datasets.image.mvtecad import MVTecADDataset
    from torchvision.transforms.v2 import Resize

    mask_size_mismatch(dataset / "parts")
    samples = MVTecADDataset(root=dataset, category="parts", split="test", augmentations=Resize((48, 48)))
    item = next(samples[i] for i in range(len(samples)) if str(samples[i].mask_path).endswith("000_mask.png"))
    assert item.image.shape == (3, 48, 48)
    assert item.gt_mask.shape == (48, 48)


def test_extension_lists_match_anomalib() -> None:
    from anomalib.data.datasets.image import mvtecad
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert tuple(MVTEC_EXTENSIONS) == tuple(mvtecad.IMG_EXTENSIONS)
    assert tuple(IMAGE_EXTENSIONS) == tuple(IMG_EXTENSIONS)


def test_plain_folder(tmp_path: Path) -> None:
    root = tmp_path / "images"
    save(root / "a.jpg", noise())
    save(root / "line1" / "b.PNG", noise(48, 80))
    save(root / "line1" / "c.bmp", noise(), mode="L")
    report = check_dataset(root)
    assert report.ok, report.lines()
    assert report.layout == "folder"
    assert dict(report.counts) == {".": 1, "line1": 2}
    assert sum(report.notes.values()) >= 2  # grayscale and non-square are notes
    notes = root / "line1" / "notes.txt"
    notes.write_text("x")
    corrupt_jpeg = root / "d.jpg"
    corrupt_jpeg.write_bytes((root / "a.jpg").read_bytes()[:300])
    report = check_dataset(root)
    assert [problem.path for problem in report.problems] == [corrupt_jpeg, notes]


def test_empty_or_missing_root(tmp_path: Path) -> None:
    assert [p.path for p in check_dataset(tmp_path).problems] == [tmp_path]
    assert [p.path for p in check_dataset(tmp_path / "nope").problems] == [tmp_path / "nope"]
    assert main([str(tmp_path / "nope")]) == 1


def test_min_size_option(dataset: Path) -> None:
    save(dataset / "parts" / "train" / "good" / "small.png", noise(40, 40))
    assert check_dataset(dataset).ok
    assert [p.path.name for p in check_dataset(dataset, min_size=48).problems] == ["small.png"]


def test_cli_prints_problems_and_returns_1(dataset: Path) -> None:
    bad = {corrupt(dataset / "parts"), stray_text_file(dataset / "parts")}
    command = [sys.executable, "-m", "anomalib_dhkd.check", str(dataset), "--category", "parts", "--min-size", "16"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(line.split(": ")[0] for line in lines if line.startswith("PROBLEM")) == sorted(
        f"PROBLEM {path}" for path in bad
    )
    assert "2 problem(s)" in lines[-1]
    assert "train 5" in lines[-1]
    for path in bad:
        path.unlink()
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout


# --- what anomalib's read_image does with other image modes, and how the check reports them


def read(path: Path) -> np.ndarray:
    from anomalib.data.utils.image import read_image

    image = read_image(path, as_tensor=True)
    assert image.dtype.is_floating_point
    assert image.ndim == 3
    assert image.shape[0] == 3
    assert 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    return image.numpy()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK"])
def test_read_image_converts_8_bit_modes_correctly(tmp_path: Path, mode: str) -> None:
    rgb = noise(40, 72)
    if mode in {"L", "LA"}:
        rgb = np.repeat(noise(40, 72, channels=1)[..., None], 3, axis=2)
    if mode == "P":
        rgb = (rgb // 64 * 64).astype(np.uint8)  # 64 colours: an adaptive palette holds them exactly
    path = tmp_path / ("image.tif" if mode == "CMYK" else "image.png")
    image = Image.fromarray(rgb).quantize(256) if mode == "P" else Image.fromarray(rgb).convert(mode)
    if mode == "RGBA":
        image.putalpha(0)  # fully transparent: read_image drops alpha and keeps the stored colours
    image.save(path)
    assert Image.open(path).mode == mode
    array = read(path)
    assert array.shape == (3, 40, 72)  # non-square kept as is
    assert np.abs(array - rgb.transpose(2, 0, 1) / 255.0).max() < 1e-6
    report = check_dataset(tmp_path)
    assert report.ok, report.lines()
    assert report.notes  # a note, not a problem
    assert any("non-square" in note for note in report.notes)


def test_read_image_saturates_16_bit_grayscale(tmp_path: Path) -> None:
    """anomalib reads a 16-bit grayscale PNG (PIL mode I;16) through convert('RGB'): values above 255 clip to 1.0."""
    values = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    path = save(tmp_path / "g16.png", values)
    assert Image.open(path).mode == "I;16"
    array = read(path)
    assert array.shape == (3, 48, 64)
    assert (array == 1.0).mean() > 0.99  # the image is almost white: its content is lost
    twelve_bit = save(tmp_path / "g12.png", (values // 16).astype(np.uint16))  # a 12-bit camera's values
    assert (read(twelve_bit) == 1.0).mean() > 0.9
    report = check_dataset(tmp_path)
    assert sorted(problem.path.name for problem in report.problems) == ["g12.png", "g16.png"]
    assert all("convert it to 8 bits" in problem.fix for problem in report.problems)


def test_16_bit_grayscale_within_8_bit_range_is_a_note(tmp_path: Path) -> None:
    values = noise(channels=1).astype(np.uint16)
    path = save(tmp_path / "g16.png", values)
    assert Image.open(path).mode == "I;16"
    assert np.allclose(read(path), values / 255.0, atol=1e-6)
    report = check_dataset(tmp_path)
    assert report.ok, report.lines()


def test_read_image_truncates_float_images(tmp_path: Path) -> None:
    values = np.full((40, 40), 0.5, np.float32)
    values[:20] = 0.9
    path = save(tmp_path / "float.tif", values)
    assert Image.open(path).mode == "F"
    assert read(path).max() == 0.0  # every value in [0, 1) is truncated to 0: the image is black
    assert [problem.path for problem in check_dataset(tmp_path).problems] == [path]


def test_read_image_reduces_16_bit_rgb_correctly(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    values = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    rgb = np.stack([values, values // 2, values // 4], axis=-1)
    path = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(path), rgb[..., ::-1])  # OpenCV writes BGR
    assert Image.open(path).mode == "RGB"  # PIL keeps the high byte of each 16-bit channel
    array = read(path)
    assert np.abs(array - rgb.transpose(2, 0, 1) / 65535.0).max() < 1 / 255
    report = check_dataset(tmp_path)
    assert report.ok, report.lines()
    assert any("16-bit RGB" in note for note in report.notes)


def test_exif_rotation_is_ignored_by_read_image(tmp_path: Path) -> None:
    image = Image.fromarray(noise(20, 60))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees": viewers show it 20 wide and 60 high
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert read(path).shape == (3, 20, 60)  # anomalib uses the pixels as stored
    report = check_dataset(tmp_path, min_size=16)
    assert report.ok, report.lines()
    assert any("EXIF" in note for note in report.notes)
