"""Check an image dataset before training: list every problem, one line each, with its fix.

Command line::

    python -m anomalib_dhkd.check ROOT [--category C] [--image-size 256] [--min-size 32]

``ROOT`` is an MVTec-layout dataset (``ROOT/<category>/train/good``, ``test/<good|defect>``,
``ground_truth/<defect>/<stem>_mask.png``; ``ROOT`` may also be a category folder itself) or, when neither it nor
its subfolders have a ``train/`` (or ``test/`` and ``ground_truth/``) folder, a plain folder whose every file is
checked, as anomalib's ``Folder`` datamodule would read it.
The exit status is 1 if there is any problem, else 0. It imports no torch, so it starts fast.

Problems:
    - empty (0-byte), unreadable or truncated image files (each is decoded completely), and files that are not
      images (``notes.txt``, ``Thumbs.db``) in image folders;
    - image files anomalib does not read: extensions outside torchvision's list, and in the MVTec layout any file
      but ``.png``/``.PNG``, which anomalib's ``MVTecAD`` skips without a word;
    - 16-bit grayscale, 32-bit integer and float images: anomalib's ``read_image`` calls PIL's ``convert("RGB")``,
      which clips every value above 255, so a 16-bit image turns almost white (16-bit RGB is reduced correctly);
    - images whose shorter side is below ``min_size`` (default 32 px). DHKD's deepest layer
      (``tf_efficientnet_lite0`` ``blocks.4``) has stride 16, so such an image spans at most 2 x 2 feature cells.
      anomalib resizes every image to ``image_size`` and would not fail, but upsampling a few pixels to 256 invents
      no detail: the model would learn and score interpolation blur. That is why this is an error, not a warning;
    - training folders of mostly identical or near-identical images (too little normal variation to learn);
    - constant images (every pixel the same, e.g. all black): blank frames with no texture, which in training push
      the per-channel feature standard deviation that DHKD normalises and scales its noise by towards 0;
    - MVTec layout: a missing or empty ``train/good``, folders other than ``good`` in ``train/``, defect images
      without a mask, masks without an image, masks whose size differs from their image's.

Warnings (listed, but training and testing may start): empty masks of defect images, which only bias the pixel
metrics of those images (Magnetic Tile ships four).

Notes (counted, not problems): grayscale, palette, RGBA, CMYK and 16-bit RGB images, which ``read_image``
converts to RGB correctly; non-square images (resized to a square without keeping the aspect ratio); images smaller
than ``image_size`` or more than 4 times larger; images with an EXIF rotation, which anomalib ignores.

Example:
    >>> from anomalib_dhkd.check import check_dataset
    >>> report = check_dataset("datasets/MVTecAD", category="bottle")  # doctest: +SKIP
    >>> report.ok, len(report.problems)  # doctest: +SKIP
    (True, 0)

"""

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from anomalib_dhkd.constants import HIGH_BIT_DEPTH_MODES, IMAGE_EXTENSIONS, MVTEC_EXTENSIONS

MODE_NOTES = {
    "L": "grayscale (L): read_image repeats it into 3 channels",
    "LA": "grayscale with alpha (LA): read_image drops the alpha channel",
    "P": "palette (P): read_image expands it to RGB",
    "PA": "palette with alpha (PA): read_image expands it to RGB and drops the alpha channel",
    "RGBA": "RGBA: read_image drops the alpha channel; transparent pixels keep their stored colour",
    "CMYK": "CMYK: read_image converts it to RGB",
    "1": "1-bit: read_image expands it to black-and-white RGB",
}
EXIF_ORIENTATION = 0x0112
PROGRESS_MIN_FILES = 200
DEEPEST_STRIDE = 16
THUMBNAIL = (32, 32)
# Mean absolute difference of 32 x 32 grey thumbnails below which two training images count as copies.
NEAR_IDENTICAL_GREY_LEVELS = 1.0


@dataclass(frozen=True)
class Problem:
    """One problem: the file (or folder), what is wrong and how to fix it.

    Args:
        path: The file or folder at fault.
        message: What is wrong, and what anomalib would do with it.
        fix: How to fix it.
        blocking: Whether training or testing should not start with it; ``False`` (a warning): anomalib runs and
            only a metric is slightly off, e.g. an empty mask, which some public datasets ship.

    Example:
        >>> print(Problem(Path("train/good/001.png"), "empty (0-byte) file.", "delete it."))
        train/good/001.png: empty (0-byte) file. Fix: delete it.
        >>> Problem(Path("a_mask.png"), "empty mask.", "draw it.", blocking=False).label
        'WARNING'

    """

    path: Path
    message: str
    fix: str
    blocking: bool = True

    @property
    def label(self) -> str:
        """``PROBLEM`` or ``WARNING``, the word that starts its line."""
        return "PROBLEM" if self.blocking else "WARNING"

    def __str__(self) -> str:
        return f"{self.path}: {self.message} Fix: {self.fix}"


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`: the problems, the notes (text -> number of files) and images per split.

    Args:
        root: The folder that was checked.
        layout: ``"mvtec"`` or ``"folder"`` (a plain image folder).
        categories: The MVTec categories checked; empty for a plain folder.
        problems: Everything that stops or silently spoils training or evaluation, with its fix.
        notes: Harmless findings, each with the number of images it applies to.
        counts: Images checked per split (MVTec) or per top-level folder (plain folder).

    Example:
        >>> report = CheckReport(Path("data"))
        >>> report.ok, report.summary()
        (True, 'Checked 0 images in data (plain folder): none; 0 problem(s).')

    """

    root: Path
    layout: str = "folder"
    categories: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        """Whether no problem was found.

        Returns:
            ``True`` if the report lists no blocking problem (warnings and notes do not count).

        """
        return not any(problem.blocking for problem in self.problems)

    def summary(self) -> str:
        """One line: images checked per split and the number of problems.

        Returns:
            The summary line, naming the root and the layout.

        """
        where = f"MVTec layout, category {', '.join(self.categories)}" if self.layout == "mvtec" else "plain folder"
        splits = ", ".join(f"{split} {count}" for split, count in self.counts.items())
        total = sum(self.counts.values())
        warnings = sum(not problem.blocking for problem in self.problems)
        counted = f"{len(self.problems) - warnings} problem(s)" + (f", {warnings} warning(s)" if warnings else "")
        return f"Checked {total} images in {self.root} ({where}): {splits or 'none'}; {counted}."

    def lines(self) -> list[str]:
        """Every problem, then every note, then the summary.

        Returns:
            The lines the command line prints: ``PROBLEM ...`` and ``WARNING ...``, then ``note: ...``, then
            :meth:`summary`.

        """
        notes = [f"note: {count} image(s): {note}" for note, count in sorted(self.notes.items())]
        return [f"{problem.label} {problem}" for problem in self.problems] + notes + [self.summary()]


@dataclass(frozen=True)
class ImageInfo:
    """What the checks need from a readable image: size, any non-zero pixel, and a small grey thumbnail.

    Args:
        size: ``(width, height)`` in pixels.
        foreground: Whether any pixel is above 0 (for a mask: whether it marks a defect).
        thumbnail: 32 x 32 grey thumbnail of a training image, compared to find copies; ``None`` for other images.

    """

    size: tuple[int, int]
    foreground: bool
    thumbnail: np.ndarray | None = field(default=None, compare=False)


class _Checker:
    """Walks a dataset, inspects every file once and fills a :class:`CheckReport`."""

    def __init__(self, report: CheckReport, image_size: int, min_size: int, progress: tqdm) -> None:
        self.report = report
        self.image_size = image_size
        self.min_size = min_size
        self.progress = progress

    def problem(self, path: Path, message: str, fix: str, blocking: bool = True) -> None:
        self.report.problems.append(Problem(path, message, fix, blocking))

    def folder(self, folder: Path, split: str, mask: bool = False) -> dict[Path, ImageInfo | None]:
        """Inspect every file of an MVTec label folder; return its image files and their info (None: broken)."""
        images: dict[Path, ImageInfo | None] = {}
        for path in sorted(folder.iterdir()):
            if path.is_dir():
                self.problem(path, "nested folder: anomalib's MVTecAD ignores the images in it.", "move them up.")
                continue
            info = self.file(path, split, mvtec=True, mask=mask)
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                images[path] = info
        return images

    def file(self, path: Path, split: str, mvtec: bool, mask: bool = False) -> ImageInfo | None:
        """Check one file of an image folder; return its info if it is a readable image."""
        self.progress.update()
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            self.not_an_image(path)
            return None
        self.report.counts[split] += 1
        if mvtec and path.suffix not in MVTEC_EXTENSIONS:
            self.problem(
                path,
                f"anomalib's MVTecAD reads only {' and '.join(MVTEC_EXTENSIONS)} files and skips this one silently.",
                "convert it to PNG, or train with anomalib.data.Folder, which reads every common image format.",
            )
        return self.image(path, split, mask)

    def not_an_image(self, path: Path) -> None:
        try:
            with Image.open(path) as image:
                kind = f"{image.format} image"
        except Exception:  # anything PIL cannot open is simply not an image here
            kind = None
        if kind:
            self.problem(
                path,
                f"{kind} with extension {path.suffix!r}, which anomalib does not read (it reads "
                f"{', '.join(IMAGE_EXTENSIONS)}).",
                "convert it to PNG.",
            )
        else:
            self.problem(path, "not an image file; anomalib skips it.", "move it out of the image folders.")

    def image(self, path: Path, split: str, mask: bool) -> ImageInfo | None:
        """Decode ``path`` completely and run the pixel checks on what anomalib's ``read_image`` would see."""
        if path.stat().st_size == 0:
            self.problem(path, "empty (0-byte) file.", "re-export or re-copy it, or delete it.")
            return None
        try:
            with Image.open(path) as image:
                image.verify()  # checks PNG chunk checksums, which load() does not
            image = Image.open(path)
            sixteen_bit = any("16" in str(tile[3]) for tile in image.tile)  # e.g. raw mode "RGB;16B"
            image.load()  # decodes every pixel: truncated files fail here
        except Exception as error:  # PIL raises many exception types for corrupt files
            fix = "delete it (macOS metadata file)." if path.name.startswith("._") else "re-export or delete it."
            self.problem(path, f"unreadable or corrupt image ({type(error).__name__}: {error}).", fix)
            return None
        with image:
            return self.pixels(path, image, split, mask, sixteen_bit)

    def pixels(self, path: Path, image: Image.Image, split: str, mask: bool, sixteen_bit: bool) -> ImageInfo:
        width, height = image.size
        if mask:
            return ImageInfo((width, height), foreground=image.convert("L").getextrema()[1] > 0)
        if image.mode in HIGH_BIT_DEPTH_MODES:
            values = np.asarray(image)
            top = float(values.max())
            if image.mode == "F" or top > 255:
                damage = (
                    "truncates every value to an integer and clips it at 255"
                    if image.mode == "F"
                    else f"clips values above 255 ({float((values > 255).mean()):.0%} of the pixels turn white)"
                )
                self.problem(
                    path,
                    f"{image.mode} image with values up to {top:g}: anomalib's read_image converts it with PIL's "
                    f"convert('RGB'), which {damage}.",
                    "convert it to 8 bits first, e.g. Image.fromarray((a * 255.0 / a.max()).astype('uint8')).",
                )
            else:
                self.report.notes[f"{image.mode} with values <= 255: read_image reads it correctly"] += 1
            extrema = [(values.min().item(), values.max().item())]
        else:
            if image.mode in MODE_NOTES:
                self.report.notes[MODE_NOTES[image.mode]] += 1
            elif image.mode != "RGB":
                self.report.notes[f"mode {image.mode}: read_image converts it to RGB"] += 1
            if sixteen_bit and image.mode in {"RGB", "RGBA"}:
                self.report.notes["16-bit RGB(A): PIL reads 8 bits per channel, correctly scaled"] += 1
            extrema = image.convert("RGB").getextrema()
        if all(low == high for low, high in extrema):
            self.constant(path, split, [low for low, _ in extrema])
        self.geometry(path, image, width, height)
        thumbnail = None
        if split == "train":  # only training images are compared for copies
            thumbnail = np.asarray(image.convert("L").resize(THUMBNAIL, Image.Resampling.BOX), dtype=np.float32)
        return ImageInfo((width, height), foreground=any(high > 0 for _, high in extrema), thumbnail=thumbnail)

    def constant(self, path: Path, split: str, value: list[float]) -> None:
        why = "a blank frame from a camera or export fault"
        if split == "train":
            why += "; training on it pushes the per-channel feature standard deviation DHKD normalises by towards 0"
        self.problem(path, f"constant image (every pixel {tuple(value)}): {why}.", "remove it or re-capture it.")

    def geometry(self, path: Path, image: Image.Image, width: int, height: int) -> None:
        shorter = min(width, height)
        if shorter < self.min_size:
            cells = shorter // DEEPEST_STRIDE
            self.problem(
                path,
                f"image is {width}x{height} px, shorter side below --min-size {self.min_size}: DHKD's deepest "
                f"encoder layer has stride {DEEPEST_STRIDE}, so it covers {cells} feature cell(s) across; anomalib "
                f"would upsample it to {self.image_size} px, which invents no detail.",
                f"use the full-resolution capture or crops of at least {self.min_size} px.",
            )
        elif shorter < self.image_size:
            self.report.notes[f"smaller than --image-size {self.image_size}: upsampled"] += 1
        if max(width, height) > 4 * self.image_size:
            self.report.notes[f"over 4x --image-size {self.image_size}: defects under ~4 px may vanish"] += 1
        if width != height:
            self.report.notes["non-square: resized to a square without keeping the aspect ratio"] += 1
        try:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        except Exception:  # a broken EXIF block is not worth a problem
            orientation = 1
        if orientation not in {None, 1}:
            self.report.notes["EXIF rotation: anomalib ignores it and uses the pixels as stored"] += 1

    def category(self, directory: Path) -> None:
        """Check one MVTec-layout category folder."""
        train, test, truth = directory / "train", directory / "test", directory / "ground_truth"
        for split in (train, test, truth):
            for path in sorted(split.iterdir()) if split.is_dir() else []:
                if not path.is_dir():
                    self.progress.update()
                    self.problem(path, "not in a label folder: anomalib's MVTecAD ignores it.", "move or delete it.")
        self.train(train)
        infos: dict[Path, ImageInfo | None] = {}
        defects: dict[str, dict[Path, ImageInfo | None]] = {}
        labels = sorted(path for path in test.iterdir() if path.is_dir()) if test.is_dir() else []
        for label in labels:
            images = self.folder(label, "test")
            infos.update(images)
            if label.name != "good":
                defects[label.name] = images
        if not infos:
            fix = "add test/good and test/<defect type> images."
            self.problem(test, "no test images: MVTecAD's validation and test sets would be empty.", fix)
        masks = sorted(path for path in truth.iterdir() if path.is_dir()) if truth.is_dir() else []
        for mask_dir in masks:
            self.masks(mask_dir, defects.pop(mask_dir.name, {}))
        for label, images in defects.items():  # defect folders without any ground_truth folder
            self.masks(truth / label, images)

    def train(self, train: Path) -> None:
        good = train / "good"
        images = self.folder(good, "train") if good.is_dir() else {}
        readable = [info for info in images.values() if info is not None]
        if not readable:
            state = "has no readable images" if good.is_dir() else "is missing"
            self.problem(good, f"train/good {state}: there is nothing to train on.", "put normal images in train/good.")
        self.duplicates(good, {path: info for path, info in images.items() if info is not None})
        for path in sorted(train.iterdir()) if train.is_dir() else []:
            if path.is_dir() and path.name != "good":
                self.problem(
                    path,
                    "train/ must hold only good/: anomalib's MVTecAD labels these images abnormal and then stops with "
                    "'TypeError: expected str, bytes or os.PathLike object, not NoneType' (they have no mask).",
                    "move normal images to train/good and defective ones to test/<defect type> with masks.",
                )

    def duplicates(self, good: Path, images: dict[Path, ImageInfo]) -> None:
        """Count training images (near-)identical to an earlier one; a folder of mostly copies is a problem.

        Copies add no normal variation: on a set of identical images every statistic the models fit of normal images
        has zero spread, and the scores of anything else are not finite.
        """
        kept: list[np.ndarray] = []
        copies = 0
        for info in images.values():
            if info.thumbnail is None:
                continue
            if any(np.abs(info.thumbnail - other).mean() < NEAR_IDENTICAL_GREY_LEVELS for other in kept):
                copies += 1
            else:
                kept.append(info.thumbnail)
        if copies:
            self.report.notes["training image identical or near-identical to another one"] += copies
        if len(images) >= 2 and copies >= len(images) / 2:
            self.problem(
                good,
                f"{copies} of its {len(images)} images are identical or near-identical to another one: there is too "
                "little normal variation to learn, and the statistics of normal images become degenerate.",
                "train on many different normal images (different parts, positions, lighting).",
            )

    def masks(self, mask_dir: Path, images: dict[Path, ImageInfo | None]) -> None:
        """Pair the masks of ``mask_dir`` with the defect images exactly by name, as anomalib does by sorted order."""
        masks = self.folder(mask_dir, "ground_truth", mask=True) if mask_dir.is_dir() else {}
        by_stem = {path.stem: path for path in masks}
        for image, info in images.items():
            mask = by_stem.pop(f"{image.stem}_mask", None) or by_stem.pop(image.stem, None)
            if mask is None:
                self.problem(
                    image,
                    f"defect image without a mask (expected {mask_dir / (image.stem + '_mask.png')}): anomalib's "
                    "MVTecAD pairs masks with images by sorted order and stops with pandas' 'ValueError: Must have "
                    "equal len keys and value when setting with an iterable' (or MisMatchError), naming no file.",
                    "add its mask (white = defect) or move the image to test/good if it is not defective.",
                )
                continue
            self.mask(mask, masks[mask], info)
        for stem, mask in sorted(by_stem.items()):
            expected = mask_dir.parent.parent / "test" / mask_dir.name / f"{stem.removesuffix('_mask')}.png"
            self.problem(
                mask,
                f"mask without a defect image (expected {expected}): anomalib stops with a ValueError or "
                "MisMatchError, or, when names only overlap (1.png and 11_mask.png), silently evaluates with the "
                "wrong mask.",
                "delete the mask or restore its image.",
            )

    def mask(self, path: Path, info: ImageInfo | None, image: ImageInfo | None) -> None:
        """Check a readable mask against its (readable) image."""
        if info is None:
            return
        if image is not None and info.size != image.size:
            self.problem(
                path,
                f"mask is {info.size[0]}x{info.size[1]} px but its image is {image.size[0]}x{image.size[1]}: "
                "anomalib resizes both to the model's input size without comparing them, so unless the mask is an "
                "exact rescale of the image it is silently stretched off the defect.",
                "re-export the mask at the image's size.",
            )
        if not info.foreground:
            self.problem(
                path,
                "empty mask (no pixel above 0): pixel metrics see no defect in this defect image.",
                "draw the defect region, or move the image to test/good if it is not defective.",
                blocking=False,  # anomalib runs; public sets ship such masks (Magnetic Tile has four)
            )

    def plain(self, root: Path) -> None:
        """Check every file below a plain folder, counted per top-level folder."""
        files = sorted(path for path in root.rglob("*") if path.is_file())
        for path in files:
            split = path.relative_to(root).parts[0] if path.parent != root else "."
            self.file(path, split, mvtec=False)
        if not self.report.counts:
            self.problem(root, "no image files found.", f"put images ({', '.join(IMAGE_EXTENSIONS)}) in it.")


def _is_category(folder: Path) -> bool:
    """Whether ``folder`` looks like an MVTec category: a ``train/`` folder, or ``test/`` and ``ground_truth/``."""
    return (folder / "train").is_dir() or ((folder / "test").is_dir() and (folder / "ground_truth").is_dir())


def _layout(root: Path, category: str | None) -> tuple[Path, list[str]]:
    """Return the MVTec root and its categories to check, or no categories for a plain folder."""
    if category is not None:
        at_category = root.name == category and _is_category(root) and not (root / category).is_dir()
        return (root.parent if at_category else root), [category]
    if _is_category(root):
        return root.parent, [root.name]
    return root, sorted(path.name for path in root.iterdir() if path.is_dir() and _is_category(path))


def check_dataset(
    root: str | Path,
    category: str | None = None,
    min_size: int = 32,
    image_size: int = 256,
    progress: bool = False,
) -> CheckReport:
    """Check an MVTec-layout dataset or a plain image folder; see the module docstring for what is checked.

    Args:
        root: Dataset root, MVTec category folder or plain folder of images.
        category: MVTec category to check. Defaults to every category found (or ``root`` itself).
        min_size: Smallest allowed shorter image side in pixels. Defaults to ``32``.
        image_size: Model input size, for the notes on resizing. Defaults to ``256``.
        progress: Show a progress bar on stderr for folders of 200 files or more. Defaults to ``False``.

    Returns:
        The report: every problem with its fix, the notes and the number of images checked per split.

    Example:
        >>> for line in check_dataset("no/such/folder").lines():
        ...     print(line)
        PROBLEM no/such/folder: no such folder. Fix: pass the dataset root folder.
        Checked 0 images in no/such/folder (plain folder): none; 1 problem(s).

    """
    root = Path(root)
    report = CheckReport(root=root)
    if not root.is_dir():
        report.problems.append(Problem(root, "no such folder.", "pass the dataset root folder."))
        return report
    mvtec_root, categories = _layout(root, category)
    total = sum(1 for path in root.rglob("*") if path.is_file())
    disable = True if not progress or total < PROGRESS_MIN_FILES else None  # None: only on a terminal
    with tqdm(total=total, desc="checking", unit="file", file=sys.stderr, disable=disable) as bar:
        checker = _Checker(report, image_size=image_size, min_size=min_size, progress=bar)
        if categories:
            report.layout, report.categories = "mvtec", categories
            for name in categories:
                if not (mvtec_root / name).is_dir():
                    checker.problem(mvtec_root / name, "no such category folder.", "check --category.")
                    continue
                checker.category(mvtec_root / name)
        else:
            checker.plain(root)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: print every problem, the notes and a summary; return 1 if there are problems.

    Args:
        argv: Arguments without the program name. Defaults to ``sys.argv[1:]``.

    Returns:
        Exit status: 1 if the dataset has a problem, else 0.

    """
    parser = argparse.ArgumentParser(prog="python -m anomalib_dhkd.check", description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="MVTec-layout dataset root, category folder, or folder of images")
    parser.add_argument("--category", help="MVTec category (default: every category found)")
    parser.add_argument("--image-size", type=int, default=256, help="model input size in px (default 256)")
    parser.add_argument("--min-size", type=int, default=32, help="smallest allowed image side in px (default 32)")
    args = parser.parse_args(argv)
    if args.min_size < 1 or args.image_size < 1:
        parser.error("--min-size and --image-size must be positive")
    report = check_dataset(args.root, args.category, args.min_size, args.image_size, progress=True)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
