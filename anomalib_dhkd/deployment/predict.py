"""Predict with an exported model on a folder of images: heat maps and a table of scores, no torch model needed.

``anomalib predict`` in anomalib 2.7 runs torch checkpoints only; this is the same job for the deployed artefact
(OpenVINO IR or ONNX from ``anomalib export``), as it runs on a factory PC::

    python -m anomalib_dhkd.predict results/weights/openvino/model.xml ./images --out results/predictions

For every image it writes ``OUT/images/<relative path>.png`` (the image, the anomaly heat map over it, the
predicted defect region outlined on it, score and label in the corner) and one row of
``OUT/predictions.csv`` (path, anomaly score normalised to ``[0, 1]`` with 0.5 as threshold, label, defect
area in percent). Images are resized to the model's input size and the maps resized back to the image's own
size. An unreadable image is listed in the table with its error and the command exits with status 1 after
processing all the others.
"""

import argparse
import csv
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from anomalib.data import ImageItem
from anomalib.data.utils import read_image
from anomalib.visualization.image.functional import add_text_to_image
from anomalib.visualization.image.item_visualizer import visualize_image_item
from PIL import Image
from torch.nn import functional
from tqdm import tqdm

from anomalib_dhkd.constants import HIGH_BIT_DEPTH_MODES, IMAGE_EXTENSIONS
from anomalib_dhkd.deployment.runtime import ExportedModel, load_exported, resize_to_input
from anomalib_dhkd.tools.preflight import check_writable

# An image whose shorter side is below the model's input size over this fraction is not scored.
SMALLEST_FRACTION = 8
MIN_SIDE = 32  # the same floor for models exported without a fixed input size


@dataclass
class Prediction:
    """One row of ``predictions.csv``.

    Args:
        image: Path of the image relative to the source folder.
        score: Anomaly score normalised to ``[0, 1]`` (0.5 is the threshold); ``None`` if the image was not scored.
        label: ``"normal"``, ``"anomalous"`` or ``"error"``.
        defect_area_percent: Share of the image in the predicted defect region, in percent; ``None`` if not scored.
        error: Why the image was not scored; empty if it was.

    Example:
        >>> Prediction("good/001.png", 0.12, "normal", 0.0)
        Prediction(image='good/001.png', score=0.12, label='normal', defect_area_percent=0.0, error='')

    """

    image: str
    score: float | None
    label: str
    defect_area_percent: float | None
    error: str = ""


def find_images(source: Path) -> list[Path]:
    """Image files under ``source`` (a file or a folder, searched recursively), sorted.

    Args:
        source: An image file, returned as is whatever its suffix, or a folder.

    Returns:
        The files whose suffix is one of :data:`~anomalib_dhkd.constants.IMAGE_EXTENSIONS`, in any case.

    Raises:
        FileNotFoundError: If ``source`` is neither a file nor a folder.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("b.PNG", "a.jpg", "notes.txt"):
        ...     (folder / name).touch()
        >>> [path.name for path in find_images(folder)]
        ['a.jpg', 'b.PNG']

    """
    if source.is_file():
        return [source]
    if not source.is_dir():
        msg = f"{source} is neither an image file nor a folder."
        raise FileNotFoundError(msg)
    return sorted(path for path in source.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)


def predict_image(model: ExportedModel, image: torch.Tensor) -> ImageItem:
    """Run one ``(3, H, W)`` image in ``[0, 1]``, resized to the model's fixed input size if it has one.

    Maps come back at the image's own size.

    Args:
        model: The exported model (:func:`~anomalib_dhkd.deployment.runtime.load_exported`).
        image: Image tensor of shape ``(3, H, W)`` with values in ``[0, 1]``.

    Returns:
        The image with its anomaly map, predicted mask, score and label.

    """
    batch = resize_to_input(image.unsqueeze(0), model.input_size)
    outputs = {name: torch.from_numpy(np.asarray(value)) for name, value in model(batch.numpy()).items()}
    size = image.shape[-2:]
    anomaly_map = functional.interpolate(outputs["anomaly_map"].float(), size=size, mode="bilinear")
    pred_mask = functional.interpolate(outputs["pred_mask"].float(), size=size, mode="nearest").bool()
    return ImageItem(
        image=image,
        anomaly_map=anomaly_map[0],
        pred_mask=pred_mask[0],
        pred_score=outputs["pred_score"].reshape(-1)[0],
        pred_label=outputs["pred_label"].reshape(-1)[0].bool(),
    )


def visualise(item: ImageItem) -> Image.Image:
    """Draw the image, the heat map over it and the predicted region on it, with score and label in the corner.

    Args:
        item: A prediction of :func:`predict_image`.

    Returns:
        The figure, at the image's own size.

    """
    figure = visualize_image_item(
        item,
        fields=["image"],
        overlay_fields=[("image", ["anomaly_map"]), ("image", ["pred_mask"])],
        field_size=(item.image.shape[-1], item.image.shape[-2]),
        text_config={"enable": False},
    )
    label = "anomalous" if item.pred_label else "normal"
    return add_text_to_image(figure, f"score {float(item.pred_score):.3f} - {label}")


def unusable_reason(path: Path, input_size: tuple[int, int] | None) -> str | None:
    """Why the model cannot judge the image at ``path`` (too small, or values anomalib's reader clips); else ``None``.

    A 16-bit grey image read by anomalib's ``read_image`` turns almost white, and an image a fraction of the model's
    input size is all interpolation blur once resized: scores of either would be confident and meaningless.

    Args:
        path: Image file; only its header and, for high-bit-depth modes, its pixels are read.
        input_size: The model's fixed ``(H, W)``, or ``None`` for a dynamic input size (then 32 px is the floor).

    Returns:
        The reason in one line, or ``None`` if the image can be scored.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "tiny.png"
        >>> Image.new("RGB", (16, 16)).save(path)
        >>> unusable_reason(path, (256, 256))
        "image is 16x16 px, far below the model's input (32 px or more needed)"

    """
    with Image.open(path) as image:
        width, height = image.size
        if image.mode in HIGH_BIT_DEPTH_MODES and np.asarray(image).max() > 255:
            return f"{image.mode} image with values above 255: convert it to 8 bits first"
    smallest = min(input_size) // SMALLEST_FRACTION if input_size else MIN_SIDE
    if min(width, height) < smallest:
        return f"image is {width}x{height} px, far below the model's input ({smallest} px or more needed)"
    return None


def run(model_path: Path, source: Path, out: Path, runtime: str | None = None) -> list[Prediction]:
    """Predict every image under ``source``, write the figures and ``predictions.csv`` row by row, return the rows.

    Each row is written as soon as its image is done, so an interrupted run keeps the rows it finished.

    Args:
        model_path: Exported model, OpenVINO ``.xml`` or ``.onnx``.
        source: An image or a folder of images (searched recursively).
        out: Output folder for ``predictions.csv`` and ``images/``.
        runtime: ``"openvino"`` or ``"onnxruntime"``; by default chosen by the model's file type.

    Returns:
        One row per image, in the order of :func:`find_images`.

    Raises:
        FileNotFoundError: If ``source`` holds no image or the model file does not exist.
        PermissionError: If ``out`` cannot be written.
        ValueError: If the model's file type or ``runtime`` is not supported.

    Example:
        >>> rows = run(Path("results/weights/openvino/model.xml"), Path("images"), Path("out"))  # doctest: +SKIP
        >>> rows[0]  # doctest: +SKIP
        Prediction(image='001.png', score=0.91, label='anomalous', defect_area_percent=2.37, error='')

    """
    images = find_images(source)
    if not images:
        msg = f"No images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {source}."
        raise FileNotFoundError(msg)
    check_writable(out)
    model = load_exported(model_path, runtime)
    base = source if source.is_dir() else source.parent
    predictions = []
    with (out / "predictions.csv").open("w", newline="") as table:
        writer = csv.DictWriter(table, fieldnames=list(Prediction.__dataclass_fields__))
        writer.writeheader()
        for path in tqdm(images, desc="predict", unit="image", file=sys.stderr):
            prediction = predict_file(model, path, path.relative_to(base), out)
            predictions.append(prediction)
            writer.writerow(asdict(prediction))
            table.flush()
    return predictions


def predict_file(model: ExportedModel, path: Path, relative: Path, out: Path) -> Prediction:
    """Score one file and save its figure; an image the model cannot judge gets an ``error`` row with the reason.

    Args:
        model: The exported model.
        path: Image file.
        relative: ``path`` relative to the source folder: the row's name and the figure's place under ``out/images``.
        out: Output folder.

    Returns:
        The image's row of ``predictions.csv``.

    """
    item = None
    try:
        reason = unusable_reason(path, model.input_size)
        item = None if reason else predict_image(model, read_image(path, as_tensor=True))
    except (OSError, ValueError) as error:  # PIL raises these for unreadable or truncated files
        reason = f"{type(error).__name__}: {error}"
    if item is None:
        return Prediction(str(relative), None, "error", None, reason or "")
    target = (out / "images" / relative).with_suffix(".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    visualise(item).save(target)
    label = "anomalous" if item.pred_label else "normal"
    area = round(100 * float(item.pred_mask.float().mean()), 3)
    return Prediction(str(relative), round(float(item.pred_score), 6), label, area)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point of ``python -m anomalib_dhkd.predict``.

    Args:
        argv: Arguments without the program name. Defaults to ``sys.argv[1:]``.

    Returns:
        Exit status: 1 if any image could not be scored, else 0.

    Raises:
        SystemExit: With status 2, before any image is scored, if the model, the images or a writable output folder
            is missing, or the model file is of a kind it cannot run.

    """
    parser = argparse.ArgumentParser(prog="python -m anomalib_dhkd.predict", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="exported model: OpenVINO .xml or .onnx")
    parser.add_argument("source", type=Path, help="an image or a folder of images (searched recursively)")
    parser.add_argument("--out", type=Path, default=Path("results/predictions"), help="output folder")
    parser.add_argument("--runtime", choices=["openvino", "onnxruntime"], help="default: by file type")
    args = parser.parse_args(argv)
    try:
        predictions = run(args.model, args.source, args.out, args.runtime)
    except (FileNotFoundError, PermissionError, ValueError) as error:  # ValueError: a model file it cannot run
        parser.exit(2, f"error: {error}\n")
    failed = [prediction for prediction in predictions if prediction.error]
    anomalous = sum(prediction.label == "anomalous" for prediction in predictions)
    print(f"{len(predictions)} images, {anomalous} anomalous, {len(failed)} not scored -> {args.out}/predictions.csv")
    for prediction in failed:
        print(f"not scored: {prediction.image}: {prediction.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
