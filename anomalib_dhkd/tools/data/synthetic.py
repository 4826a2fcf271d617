"""Offline texture dataset with synthetic defects, in MVTec AD layout.

The images are crops of real texture photographs that ship with scikit-image (``brick``, ``grass`` and
``gravel``, 512x512 grayscale), so the dataset needs no download. Test images get one synthetic defect each,
and every defect has a pixel-exact ground-truth mask: a pixel is set in the mask if and only if the defect
changed it.

The dataset is written in MVTec AD layout, so anomalib's own datamodule reads it unchanged:

.. code-block:: text

    <root>/<category>/
    ├── train/good/000.png ...
    ├── test/good/000.png ...
    ├── test/<defect_type>/000.png ...
    ├── ground_truth/<defect_type>/000_mask.png ...
    └── manifest.json

Defect types (:data:`DEFECT_TYPES`):

* ``scratch``: a thin bright or dark curved line.
* ``stain``: an irregular blob of darker or lighter intensity with a soft inner edge.
* ``patch``: a region pasted from a *different* texture photograph (CutPaste-like), brightness matched.
* ``hole``: a dark elliptical pit, darkest in the middle.

Train crops come from the top part of the photograph and test crops from the bottom part, so test images are
not copies of training images. Generation is deterministic for a seed (byte-identical files), idempotent (a
complete dataset with the same parameters is reused) and atomic (built in a temporary folder, then renamed).

Example:
    >>> from pathlib import Path
    >>> from anomalib.data import MVTecAD
    >>> from anomalib_dhkd.tools.data import generate_texture_dataset

    >>> root = Path("./datasets/textures")
    >>> generate_texture_dataset(root, category="brick")  # doctest: +SKIP
    PosixPath('datasets/textures/brick')
    >>> datamodule = MVTecAD(root=root, category="brick")  # doctest: +SKIP

The same from the command line::

    python -m anomalib_dhkd.tools.data.synthetic --root ./datasets/textures --category brick

"""

import argparse
import json
import logging
import shutil
import sys
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import draw, filters, measure, transform
from skimage.color import rgb2gray
from skimage.morphology import disk

logger = logging.getLogger(__name__)

GrayImage = npt.NDArray[np.uint8]
FloatImage = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
MaskFn = Callable[[np.random.Generator, int], Mask]
PaintFn = Callable[[FloatImage, Mask, np.random.Generator, FloatImage], FloatImage]

TEXTURES: dict[str, Callable[[], np.ndarray]] = {
    "brick": skdata.brick,
    "grass": skdata.grass,
    "gravel": skdata.gravel,
}
"""Category name to the scikit-image loader of its texture photograph."""

# Textures without a dominant direction may also be rotated by multiples of 90 degrees; brick is only flipped.
_ROTATABLE = frozenset({"grass", "gravel"})

DEFECT_TYPES = ("scratch", "stain", "patch", "hole")
"""Defect folders of the test split, assigned to defect images in turn."""

MANIFEST_NAME = "manifest.json"
_FORMAT_VERSION = 1
# Not ``__name__``, which is ``"__main__"`` when the module runs as a script.
_GENERATOR = "anomalib_dhkd.data.synthetic"

# Side of the square crop as a fraction of the photograph's shorter side (192 px of 512 px).
_CROP_FRACTION = 0.375
# Rows above this fraction of the photograph's height feed train crops, rows below it test crops.
_TRAIN_FRACTION = 0.6
# Mild brightness jitter of normal crops: gain and offset (grey levels).
_GAIN_RANGE = (0.92, 1.08)
_OFFSET_RANGE = (-8.0, 8.0)
# Defect area as a fraction of the image area.
_MIN_DEFECT_AREA = 0.005
_MAX_DEFECT_AREA = 0.06
_MAX_SHAPE_TRIES = 1000
# Smallest change (grey levels) of a pixel inside a defect mask, so that mask == changed pixels.
_MIN_CHANGE = 6.0
_MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class TextureDatasetSpec:
    """Parameters that fully determine a generated dataset (recorded in the manifest).

    Args:
        category (str): Texture name, a key of :data:`TEXTURES`.
        image_size (int): Side of the square images in pixels.
        num_train (int): Number of normal training images.
        num_test_good (int): Number of normal test images.
        num_test_defect (int): Number of defective test images, spread over :data:`DEFECT_TYPES`.
        seed (int): Seed of the random generators.

    Raises:
        ValueError: If the category is unknown, the images are smaller than 32 px, or a count or the seed is
            negative.

    Example:
        >>> TextureDatasetSpec(num_test_defect=5).counts()["test/scratch"]  # defects are assigned in turn
        2

    """

    category: str = "brick"
    image_size: int = 256
    num_train: int = 60
    num_test_good: int = 20
    num_test_defect: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if self.category not in TEXTURES:
            msg = f"Unknown category {self.category!r}, expected one of {sorted(TEXTURES)}."
            raise ValueError(msg)
        if self.image_size < _MIN_IMAGE_SIZE:
            msg = f"image_size must be at least {_MIN_IMAGE_SIZE}, got {self.image_size}."
            raise ValueError(msg)
        if min(self.num_train, self.num_test_good, self.num_test_defect, self.seed) < 0:
            msg = "Image counts and seed must not be negative."
            raise ValueError(msg)

    def counts(self) -> dict[str, int]:
        """Return the number of PNG files expected in each folder of the dataset.

        Returns:
            ``{"train/good": n, "test/good": n, "test/<defect>": n, "ground_truth/<defect>": n, ...}``; a defect type
            with no image has no folder.

        """
        counts = {"train/good": self.num_train, "test/good": self.num_test_good}
        for defect_index, defect_type in enumerate(DEFECT_TYPES):
            num_images = len(range(defect_index, self.num_test_defect, len(DEFECT_TYPES)))
            if num_images:
                counts[f"test/{defect_type}"] = num_images
                counts[f"ground_truth/{defect_type}"] = num_images
        return counts


@dataclass(frozen=True)
class Sample:
    """One generated image before it is written to disk.

    Args:
        split (str): ``"train"`` or ``"test"``.
        label (str): ``"good"`` or the defect type.
        index (int): Index of the image within its folder.
        image (GrayImage): The grayscale image (saved as RGB).
        clean (GrayImage): The defect-free crop the image was made from (equal to ``image`` for normal samples).
        mask (Mask | None): Defect mask, ``None`` for normal samples.

    """

    split: str
    label: str
    index: int
    image: GrayImage
    clean: GrayImage
    mask: Mask | None = None


def load_texture(category: str) -> FloatImage:
    """Load the texture photograph of a category as a float grayscale image in grey levels ``[0, 255]``.

    Args:
        category (str): Texture name, a key of :data:`TEXTURES`.

    Returns:
        FloatImage: The photograph, shape ``(H, W)``.

    Example:
        >>> load_texture("brick").shape
        (512, 512)

    """
    photo = np.asarray(TEXTURES[category]())
    if photo.ndim == 3:
        return rgb2gray(photo[..., :3]) * 255.0
    return photo.astype(np.float64)


def _split_rows(height: int, crop_size: int, split: str) -> tuple[int, int]:
    """Return the row range a split crops from: the top part for train, the bottom part for test.

    Falls back to the whole photograph where a part is lower than one crop.
    """
    boundary = round(height * _TRAIN_FRACTION)
    start, stop = (0, boundary) if split == "train" else (boundary, height)
    if stop - start < crop_size:
        return 0, height
    return start, stop


def sample_crop(
    photo: FloatImage,
    rng: np.random.Generator,
    image_size: int,
    rows: tuple[int, int] | None = None,
    rotate: bool = False,
) -> FloatImage:
    """Cut a random square crop from a photograph, flip/rotate it at random and resize it.

    Args:
        photo (FloatImage): Source photograph, shape ``(H, W)``.
        rng (np.random.Generator): Random generator.
        image_size (int): Side of the output crop.
        rows (tuple[int, int] | None): Row range ``[start, stop)`` to crop from. Defaults to all rows.
        rotate (bool): Also rotate by a random multiple of 90 degrees. Defaults to ``False``.

    Returns:
        FloatImage: The crop, shape ``(image_size, image_size)``, grey levels ``[0, 255]``.

    """
    height, width = photo.shape
    crop_size = round(_CROP_FRACTION * min(height, width))
    start, stop = rows if rows is not None else (0, height)
    top = int(rng.integers(start, stop - crop_size + 1))
    left = int(rng.integers(0, width - crop_size + 1))
    crop = photo[top : top + crop_size, left : left + crop_size]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1, :]
    if rotate:
        crop = np.rot90(crop, k=int(rng.integers(4)))
    return transform.resize(crop, (image_size, image_size), order=1, anti_aliasing=True, preserve_range=True)


def jitter_brightness(image: FloatImage, rng: np.random.Generator) -> GrayImage:
    """Apply a mild random gain and offset and quantise to ``uint8``.

    Args:
        image (FloatImage): Image in grey levels.
        rng (np.random.Generator): Random generator.

    Returns:
        GrayImage: The jittered image.

    """
    gain = rng.uniform(*_GAIN_RANGE)
    offset = rng.uniform(*_OFFSET_RANGE)
    return _to_uint8(image * gain + offset)


def _to_uint8(image: FloatImage) -> GrayImage:
    """Round and clip grey levels to ``uint8``."""
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _area_ok(mask: Mask) -> bool:
    """Check that a defect covers between 0.5 % and 6 % of the image."""
    fraction = mask.mean()
    return _MIN_DEFECT_AREA <= fraction <= _MAX_DEFECT_AREA


def _ellipse_field(rng: np.random.Generator, size: int, radius_range: tuple[float, float]) -> FloatImage:
    """Return ``(u/a)^2 + (v/b)^2`` of a randomly placed, sized and rotated ellipse on the pixel grid."""
    center_row, center_col = rng.uniform(0.2, 0.8, size=2) * size
    radius_a, radius_b = rng.uniform(*radius_range, size=2) * size
    angle = rng.uniform(0.0, np.pi)
    rows, cols = np.mgrid[:size, :size].astype(np.float64)
    u = (rows - center_row) * np.cos(angle) + (cols - center_col) * np.sin(angle)
    v = -(rows - center_row) * np.sin(angle) + (cols - center_col) * np.cos(angle)
    return (u / radius_a) ** 2 + (v / radius_b) ** 2


def _scratch_mask(rng: np.random.Generator, size: int) -> Mask:
    """Draw a thin curved line (quadratic Bezier curve) a few pixels wide."""
    start = rng.uniform(0.1, 0.9, size=2) * size
    angle = rng.uniform(0.0, 2.0 * np.pi)
    length = rng.uniform(0.35, 0.75) * size
    direction = np.array([np.sin(angle), np.cos(angle)])
    end = start + length * direction
    bend = rng.uniform(-0.25, 0.25) * length
    control = (start + end) / 2 + bend * np.array([direction[1], -direction[0]])
    (r0, c0), (r1, c1), (r2, c2) = np.round([start, control, end]).astype(int)
    rr, cc = draw.bezier_curve(r0, c0, r1, c1, r2, c2, weight=1.0, shape=(size, size))
    mask = np.zeros((size, size), dtype=bool)
    mask[rr, cc] = True
    radius = max(1, round(size * rng.uniform(0.004, 0.009)))
    return ndimage.binary_dilation(mask, structure=disk(radius))


def _stain_mask(rng: np.random.Generator, size: int) -> Mask:
    """Draw an irregular blob: an ellipse whose border is perturbed by smooth noise."""
    ellipse = _ellipse_field(rng, size, radius_range=(0.06, 0.14))
    noise = filters.gaussian(rng.standard_normal((size, size)), sigma=size / 24)
    noise /= noise.std() + 1e-12
    blob = ellipse < 1.0 + 0.35 * noise
    labels = measure.label(blob)
    center_label = labels.flat[np.argmin(ellipse)]
    if center_label == 0:
        return np.zeros_like(blob)
    return ndimage.binary_fill_holes(labels == center_label)


def _patch_mask(rng: np.random.Generator, size: int) -> Mask:
    """Draw a randomly rotated rectangle."""
    center = rng.uniform(0.2, 0.8, size=2) * size
    half_sides = rng.uniform(0.05, 0.11, size=2) * size
    angle = rng.uniform(0.0, np.pi / 2)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    corners = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]]) * half_sides
    rows, cols = (corners @ rotation.T + center).T
    rr, cc = draw.polygon(rows, cols, shape=(size, size))
    mask = np.zeros((size, size), dtype=bool)
    mask[rr, cc] = True
    return mask


def _hole_mask(rng: np.random.Generator, size: int) -> Mask:
    """Draw a randomly rotated ellipse."""
    return _ellipse_field(rng, size, radius_range=(0.04, 0.1)) <= 1.0


def _depth(mask: Mask) -> FloatImage:
    """Return the distance to the mask border, normalised to ``[0, 1]`` inside the mask."""
    distance = ndimage.distance_transform_edt(mask)
    return distance / max(distance.max(), 1.0)


def _paint_scratch(clean: FloatImage, _mask: Mask, rng: np.random.Generator, _donor: FloatImage) -> FloatImage:
    """Brighten or darken the line strongly."""
    if rng.random() < 0.5:
        return clean + (255.0 - clean) * rng.uniform(0.6, 0.85)
    return clean * rng.uniform(0.15, 0.4)


def _paint_stain(clean: FloatImage, mask: Mask, rng: np.random.Generator, _donor: FloatImage) -> FloatImage:
    """Blend towards a dark or light tone, strongest away from the blob border."""
    tone = rng.uniform(20.0, 60.0) if rng.random() < 0.7 else rng.uniform(190.0, 235.0)
    ramp = max(2.0, 0.03 * mask.shape[0])
    alpha = np.clip(ndimage.distance_transform_edt(mask) / ramp, 0.0, 1.0) * rng.uniform(0.6, 0.9)
    return clean * (1.0 - alpha) + tone * alpha


def _paint_patch(clean: FloatImage, mask: Mask, _rng: np.random.Generator, donor: FloatImage) -> FloatImage:
    """Paste the donor texture, shifted to the mean brightness of the covered region."""
    return donor - donor[mask].mean() + clean[mask].mean()


def _paint_hole(clean: FloatImage, mask: Mask, rng: np.random.Generator, _donor: FloatImage) -> FloatImage:
    """Darken strongly, darkest in the middle."""
    rim = rng.uniform(0.3, 0.45)
    return clean * (rim - (rim - 0.08) * np.sqrt(_depth(mask)))


_DEFECTS: dict[str, tuple[MaskFn, PaintFn]] = {
    "scratch": (_scratch_mask, _paint_scratch),
    "stain": (_stain_mask, _paint_stain),
    "patch": (_patch_mask, _paint_patch),
    "hole": (_hole_mask, _paint_hole),
}


def _sample_defect_mask(mask_fn: MaskFn, rng: np.random.Generator, size: int) -> Mask:
    """Draw defect shapes until one has an area within the allowed range."""
    for _ in range(_MAX_SHAPE_TRIES):
        mask = mask_fn(rng, size)
        if _area_ok(mask):
            return mask
    msg = f"Could not draw a defect of allowed area with {mask_fn.__name__} at image size {size}."
    raise RuntimeError(msg)


def compose(clean: GrayImage, target: FloatImage, mask: Mask) -> GrayImage:
    """Paint ``target`` into ``clean`` inside ``mask`` only.

    Every pixel inside the mask changes by at least a few grey levels (where the target is too close to the
    clean pixel it is pushed away from it), and no pixel outside the mask changes, so the mask is exactly the
    set of changed pixels.

    Args:
        clean (GrayImage): Defect-free image.
        target (FloatImage): Desired defect appearance in grey levels, same shape.
        mask (Mask): Defect region, same shape.

    Returns:
        GrayImage: The defective image.

    Example:
        >>> clean = np.full((3, 3), 100, dtype=np.uint8)
        >>> mask = np.zeros((3, 3), dtype=bool)
        >>> mask[1, 1] = True
        >>> compose(clean, np.full((3, 3), 102.0), mask)  # a 2-level change is pushed to 6, outside stays
        array([[100, 100, 100],
               [100, 106, 100],
               [100, 100, 100]], dtype=uint8)

    """
    base = clean.astype(np.float64)
    delta = np.round(np.clip(target, 0.0, 255.0)) - base
    direction = np.where(delta < 0, -1.0, 1.0)
    direction = np.where(base + direction * _MIN_CHANGE > 255.0, -1.0, direction)
    direction = np.where(base + direction * _MIN_CHANGE < 0.0, 1.0, direction)
    delta = np.where(np.abs(delta) < _MIN_CHANGE, direction * _MIN_CHANGE, delta)
    return np.where(mask, base + delta, base).astype(np.uint8)


def apply_defect(
    clean: GrayImage,
    defect_type: str,
    rng: np.random.Generator,
    donor: FloatImage | None = None,
) -> tuple[GrayImage, Mask]:
    """Add one synthetic defect to a defect-free image.

    Args:
        clean (GrayImage): Defect-free square image.
        defect_type (str): One of :data:`DEFECT_TYPES`.
        rng (np.random.Generator): Random generator.
        donor (FloatImage | None): Same-size crop of a different texture, required for ``"patch"``.

    Returns:
        tuple[GrayImage, Mask]: The defective image and its mask; ``(image != clean) == mask``.

    Raises:
        ValueError: If ``defect_type`` is unknown, or it is ``"patch"`` and no ``donor`` is given.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> clean = jitter_brightness(sample_crop(load_texture("brick"), rng, 64), rng)
        >>> image, mask = apply_defect(clean, "hole", rng)
        >>> bool(((image != clean) == mask).all())
        True

    """
    if defect_type not in _DEFECTS:
        msg = f"Unknown defect type {defect_type!r}, expected one of {DEFECT_TYPES}."
        raise ValueError(msg)
    if defect_type == "patch" and donor is None:
        msg = "The 'patch' defect needs a donor crop of a different texture."
        raise ValueError(msg)
    mask_fn, paint_fn = _DEFECTS[defect_type]
    mask = _sample_defect_mask(mask_fn, rng, clean.shape[0])
    donor = np.zeros(clean.shape) if donor is None else donor
    target = paint_fn(clean.astype(np.float64), mask, rng, donor)
    return compose(clean, target, mask), mask


def iter_samples(spec: TextureDatasetSpec) -> Iterator[Sample]:
    """Generate all images of a dataset in memory, in a fixed order.

    Train, normal test and defective test images use separate random streams derived from ``spec.seed`` and
    the category, so changing one count does not change the images of the other splits, and categories do not
    share defect geometry.

    Args:
        spec (TextureDatasetSpec): Dataset parameters.

    Yields:
        Sample: The generated images, train first.

    Example:
        >>> sample = next(iter_samples(TextureDatasetSpec(image_size=32, num_train=1)))
        >>> sample.split, sample.label, sample.image.shape
        ('train', 'good', (32, 32))

    """
    photos = {name: load_texture(name) for name in TEXTURES}
    photo = photos[spec.category]
    donors = [name for name in TEXTURES if name != spec.category]
    crop_size = round(_CROP_FRACTION * min(photo.shape))
    rotate = spec.category in _ROTATABLE

    def normal_crop(rng: np.random.Generator, split: str) -> GrayImage:
        rows = _split_rows(photo.shape[0], crop_size, split)
        return jitter_brightness(sample_crop(photo, rng, spec.image_size, rows=rows, rotate=rotate), rng)

    category_key = zlib.crc32(spec.category.encode())
    rng = np.random.default_rng([spec.seed, category_key, 0])
    for index in range(spec.num_train):
        image = normal_crop(rng, "train")
        yield Sample("train", "good", index, image, image)

    rng = np.random.default_rng([spec.seed, category_key, 1])
    for index in range(spec.num_test_good):
        image = normal_crop(rng, "test")
        yield Sample("test", "good", index, image, image)

    rng = np.random.default_rng([spec.seed, category_key, 2])
    for number in range(spec.num_test_defect):
        defect_type = DEFECT_TYPES[number % len(DEFECT_TYPES)]
        clean = normal_crop(rng, "test")
        donor_photo = photos[donors[int(rng.integers(len(donors)))]]
        donor = sample_crop(donor_photo, rng, spec.image_size, rotate=True)
        image, mask = apply_defect(clean, defect_type, rng, donor=donor)
        yield Sample("test", defect_type, number // len(DEFECT_TYPES), image, clean, mask)


def _file_stem(index: int, count: int) -> str:
    """Zero-padded file name stem, at least three digits as in MVTec AD."""
    return f"{index:0{max(3, len(str(max(count - 1, 0))))}d}"


def _write_sample(sample: Sample, category_dir: Path, counts: dict[str, int]) -> None:
    """Write one sample as an RGB PNG, and its mask as a ``{0, 255}`` grayscale PNG."""
    folder = f"{sample.split}/{sample.label}"
    stem = _file_stem(sample.index, counts[folder])
    image_path = category_dir / folder / f"{stem}.png"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.repeat(sample.image[..., None], 3, axis=-1)).save(image_path)
    if sample.mask is not None:
        mask_path = category_dir / "ground_truth" / sample.label / f"{stem}_mask.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sample.mask.astype(np.uint8) * 255).save(mask_path)


def _manifest(spec: TextureDatasetSpec) -> dict:
    """Return the manifest that describes a complete dataset."""
    return {
        "format_version": _FORMAT_VERSION,
        "generator": _GENERATOR,
        "params": asdict(spec),
        "counts": spec.counts(),
    }


def read_manifest(category_dir: Path) -> dict | None:
    """Read the manifest of a generated dataset, ``None`` if it is missing or unreadable.

    Args:
        category_dir (Path): The category folder.

    Returns:
        dict | None: The parsed manifest.

    Example:
        >>> read_manifest(Path("no/such/category")) is None
        True

    """
    try:
        return json.loads((category_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(category_dir: Path, spec: TextureDatasetSpec) -> bool:
    """Check that a folder holds a complete dataset generated with exactly these parameters.

    Args:
        category_dir (Path): The category folder.
        spec (TextureDatasetSpec): Expected parameters.

    Returns:
        bool: ``True`` if the manifest matches and every folder has the expected number of PNG files.

    """
    if read_manifest(category_dir) != _manifest(spec):
        return False
    return all(len(list((category_dir / folder).glob("*.png"))) == count for folder, count in spec.counts().items())


def _build(spec: TextureDatasetSpec, target_dir: Path) -> None:
    """Write all images, then the manifest, into an empty folder."""
    counts = spec.counts()
    for sample in iter_samples(spec):
        _write_sample(sample, target_dir, counts)
    manifest = json.dumps(_manifest(spec), indent=2) + "\n"
    (target_dir / MANIFEST_NAME).write_text(manifest, encoding="utf-8")


def _publish(build_dir: Path, category_dir: Path) -> None:
    """Move a finished build into place, replacing (and then deleting) an older folder."""
    if not category_dir.exists():
        build_dir.rename(category_dir)
        return
    stale_dir = category_dir.with_name(f".{category_dir.name}.stale-{uuid.uuid4().hex}")
    category_dir.rename(stale_dir)
    build_dir.rename(category_dir)
    shutil.rmtree(stale_dir, ignore_errors=True)


def generate_texture_dataset(
    root: Path,
    category: str = "brick",
    image_size: int = 256,
    num_train: int = 60,
    num_test_good: int = 20,
    num_test_defect: int = 30,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Generate (or reuse) a texture dataset with synthetic defects in MVTec AD layout.

    A complete dataset with the same parameters is reused as is. A dataset generated with other parameters,
    or an incomplete one, is replaced. A folder that this function did not create (no manifest) is only
    replaced with ``overwrite=True``.

    Args:
        root (Path): Dataset root, as passed to ``anomalib.data.MVTecAD(root=...)``.
        category (str): Texture name, a key of :data:`TEXTURES`. Defaults to ``"brick"``.
        image_size (int): Side of the square images in pixels. Defaults to ``256``.
        num_train (int): Number of normal training images. Defaults to ``60``.
        num_test_good (int): Number of normal test images. Defaults to ``20``.
        num_test_defect (int): Number of defective test images. Defaults to ``30``.
        seed (int): Random seed; the same seed gives byte-identical files. Defaults to ``0``.
        overwrite (bool): Regenerate even if a complete dataset exists. Defaults to ``False``.

    Returns:
        Path: The category folder ``root / category``.

    Raises:
        FileExistsError: If the category folder exists, has no manifest and ``overwrite`` is ``False``.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> folder = generate_texture_dataset(root, image_size=64, num_train=2, num_test_good=1, num_test_defect=4)
        >>> folder.name, len(list((folder / "train" / "good").glob("*.png")))
        ('brick', 2)
        >>> is_complete(folder, TextureDatasetSpec(image_size=64, num_train=2, num_test_good=1, num_test_defect=4))
        True

    """
    spec = TextureDatasetSpec(category, image_size, num_train, num_test_good, num_test_defect, seed)
    root = Path(root)
    category_dir = root / category
    if not overwrite and is_complete(category_dir, spec):
        logger.info("Reusing synthetic dataset at %s", category_dir)
        return category_dir
    if not overwrite and category_dir.exists() and read_manifest(category_dir) is None:
        msg = f"{category_dir} exists but was not generated by {_GENERATOR}; pass overwrite=True to replace it."
        raise FileExistsError(msg)

    root.mkdir(parents=True, exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=f".{category}.tmp-", dir=root))
    try:
        _build(spec, build_dir)
        _publish(build_dir, category_dir)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    logger.info("Generated synthetic dataset at %s", category_dir)
    return category_dir


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog="python -m anomalib_dhkd.data.synthetic",
        description="Generate a texture dataset with synthetic defects in MVTec AD layout.",
    )
    parser.add_argument("--root", type=Path, required=True, help="dataset root folder")
    parser.add_argument("--category", choices=sorted(TEXTURES), default="brick", help="texture photograph")
    parser.add_argument("--image-size", type=int, default=256, help="side of the square images")
    parser.add_argument("--num-train", type=int, default=60, help="normal training images")
    parser.add_argument("--num-test-good", type=int, default=20, help="normal test images")
    parser.add_argument("--num-test-defect", type=int, default=30, help="defective test images")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if the dataset is complete")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: generate a dataset and print where it went and the image counts.

    Args:
        argv (Sequence[str] | None): Arguments without the program name. Defaults to ``sys.argv[1:]``.

    Returns:
        int: Exit status.

    """
    args = _parse_args(argv)
    category_dir = generate_texture_dataset(
        root=args.root,
        category=args.category,
        image_size=args.image_size,
        num_train=args.num_train,
        num_test_good=args.num_test_good,
        num_test_defect=args.num_test_defect,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    manifest = read_manifest(category_dir) or {"counts": {}}
    print(f"Dataset at {category_dir} (MVTecAD root={args.root}, category={args.category})")
    for folder, count in manifest["counts"].items():
        print(f"  {folder}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
