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

from anomalib_dhkd.constants import IMAGE_EXTENSIONS
from anomalib_dhkd.deployment.runtime import ExportedModel, load_exported, resize_to_input


@dataclass
class Prediction:
    """One row of ``predictions.csv``."""

    image: str
    score: float | None
    label: str
    defect_area_percent: float | None
    error: str = ""


def find_images(source: Path) -> list[Path]:
    """Image files under ``source`` (a file or a folder, searched recursively), sorted."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        msg = f"{source} is neither an image file nor a folder."
        raise FileNotFoundError(msg)
    return sorted(path for path in source.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS)


def predict_image(model: ExportedModel, image: torch.Tensor) -> ImageItem:
    """Run one ``(3, H, W)`` image in ``[0, 1]``, resized to the model's fixed input size if it has one.

    Maps come back at the image's own size.
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
    """Draw the image, the heat map over it and the predicted region on it, with score and label in the corner."""
    figure = visualize_image_item(
        item,
        fields=["image"],
        overlay_fields=[("image", ["anomaly_map"]), ("image", ["pred_mask"])],
        field_size=(item.image.shape[-1], item.image.shape[-2]),
        text_config={"enable": False},
    )
    label = "anomalous" if item.pred_label else "normal"
    return add_text_to_image(figure, f"score {float(item.pred_score):.3f} - {label}")


def run(model_path: Path, source: Path, out: Path, runtime: str | None = None) -> list[Prediction]:
    """Predict every image under ``source``, write the figures and ``predictions.csv``, return the rows."""
    images = find_images(source)
    if not images:
        msg = f"No images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {source}."
        raise FileNotFoundError(msg)
    model = load_exported(model_path, runtime)
    base = source if source.is_dir() else source.parent
    predictions = []
    for path in tqdm(images, desc="predict", unit="image", file=sys.stderr):
        relative = path.relative_to(base)
        try:
            item = predict_image(model, read_image(path, as_tensor=True))
        except (OSError, ValueError) as error:  # PIL raises these for unreadable or truncated files
            predictions.append(Prediction(str(relative), None, "error", None, f"{type(error).__name__}: {error}"))
            continue
        target = (out / "images" / relative).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        visualise(item).save(target)
        label = "anomalous" if item.pred_label else "normal"
        area = round(100 * float(item.pred_mask.float().mean()), 3)
        predictions.append(Prediction(str(relative), round(float(item.pred_score), 6), label, area))
    write_table(predictions, out / "predictions.csv")
    return predictions


def write_table(predictions: list[Prediction], path: Path) -> None:
    """Write the rows as CSV (atomically: a half-written table never replaces a complete one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".csv.partial")
    with partial.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(Prediction.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(prediction) for prediction in predictions)
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 1 if any image could not be read."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="exported model: OpenVINO .xml or .onnx")
    parser.add_argument("source", type=Path, help="an image or a folder of images (searched recursively)")
    parser.add_argument("--out", type=Path, default=Path("results/predictions"), help="output folder")
    parser.add_argument("--runtime", choices=["openvino", "onnxruntime"], help="default: by file type")
    args = parser.parse_args(argv)
    try:
        predictions = run(args.model, args.source, args.out, args.runtime)
    except FileNotFoundError as error:
        parser.exit(2, f"error: {error}\n")
    failed = [prediction for prediction in predictions if prediction.error]
    anomalous = sum(prediction.label == "anomalous" for prediction in predictions)
    print(f"{len(predictions)} images, {anomalous} anomalous, {len(failed)} unreadable -> {args.out}/predictions.csv")
    for prediction in failed:
        print(f"unreadable: {prediction.image}: {prediction.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
