"""Bad input reaching the model: non-finite pixels are stopped with the image paths; constant images stay finite."""

import math
from pathlib import Path

import pytest
import torch
from anomalib.data import ImageBatch

from anomalib_dhkd import Dhkd
from anomalib_dhkd.models.base import check_finite_images

BACKBONE = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def model() -> Dhkd:
    torch.manual_seed(0)
    layers = ("blocks.1", "blocks.2", "blocks.4")
    return Dhkd(backbone=BACKBONE, layers=layers, pre_trained=False, max_epochs=2, teacher_warmup_epochs=1)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Normalise like the pre-processor does, at 64 px to keep the test fast."""
    return Dhkd.configure_pre_processor((64, 64), BACKBONE).transform(images)


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
def test_training_step_rejects_non_finite_images(model: Dhkd, bad_value: float) -> None:
    image = torch.rand(3, 3, 64, 64)
    image[1, 2, 30, 40] = bad_value
    paths = ["parts/train/good/000.png", "parts/train/good/001.png", "parts/train/good/002.png"]
    batch = ImageBatch(image=image, image_path=paths)
    with pytest.raises(ValueError, match="NaN or infinite") as error:
        model.training_step(batch)
    message = str(error.value)
    assert "\n" not in message
    assert paths[1] in message
    assert paths[0] not in message
    assert paths[2] not in message


def test_non_finite_check_without_paths_names_the_batch_item() -> None:
    image = torch.zeros(2, 3, 8, 8)
    image[1, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="batch item 1"):
        check_finite_images(ImageBatch(image=image))
    check_finite_images(ImageBatch(image=torch.rand(2, 3, 8, 8), image_path=["a.png", "b.png"]))  # no error


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_finite_batch_trains(model: Dhkd) -> None:
    batch = ImageBatch(image=torch.rand(2, 3, 64, 64), image_path=["a.png", "b.png"])
    model.model.train()
    loss = model.training_step(batch)["loss"]
    assert torch.isfinite(loss)


def test_constant_black_images_give_finite_anomaly_maps(model: Dhkd) -> None:
    """All-black frames (normalised like the pre-processor does) keep the model finite, even after training on them."""
    black = normalise(torch.zeros(2, 3, 64, 64))
    model.model.eval()
    with torch.no_grad():
        output = model.model(black)
    assert output.anomaly_map.shape == (2, 1, 64, 64)
    assert torch.isfinite(output.anomaly_map).all()
    assert torch.isfinite(output.pred_score).all()
    # training on black frames only drives the features' BatchNorm running variance towards 0; momentum 1 gets
    # there in one forward instead of dozens
    model.model.train()
    for norm in model.model.feature_norms:
        norm.momentum = 1.0
    with torch.no_grad():
        model.model(black)
    for norm in model.model.feature_norms:
        norm.momentum = 0.1
    assert min(float(norm.running_var.min()) for norm in model.model.feature_norms) < 0.1
    model.model.eval()
    with torch.no_grad():
        for images in (black, normalise(torch.rand(2, 3, 64, 64))):
            output = model.model(images)
            assert torch.isfinite(output.anomaly_map).all()
            assert torch.isfinite(output.pred_score).all()


def test_another_models_checkpoint_is_named_in_one_line(tmp_path: Path) -> None:
    """Loading a PaDiM checkpoint as Dhkd says it is PaDiM's instead of listing hundreds of missing keys."""
    from anomalib.models import Padim

    padim = Padim(backbone=BACKBONE, layers=["blocks.1", "blocks.2"], pre_trained=False, n_features=20)
    checkpoint = {"state_dict": padim.state_dict(), "hyper_parameters": dict(padim.hparams)}
    path = tmp_path / "padim.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"padim\.ckpt is not a checkpoint of Dhkd: .* are those of Padim") as error:
        Dhkd.load_from_checkpoint(path)
    assert "\n" not in str(error.value)
    dhkd = Dhkd(backbone=BACKBONE, layers=["blocks.1", "blocks.2"], pre_trained=False)
    with pytest.raises(ValueError, match="not a checkpoint of Dhkd"):
        dhkd.on_load_checkpoint(checkpoint)  # the path of `anomalib test --model Dhkd --ckpt_path padim.ckpt`
    own = {"hyper_parameters": dict(dhkd.hparams)}
    dhkd.on_load_checkpoint(own)  # its own checkpoint passes


def copies_of_one_image(root: Path, source: Path, count: int) -> Path:
    """An MVTec-layout category whose training images are ``count`` copies of one real image."""
    from PIL import Image

    image = Image.open(source).convert("RGB").resize((64, 64))
    category = root / "copies"
    for folder in ("train/good", "test/good", "test/defect", "ground_truth/defect"):
        (category / folder).mkdir(parents=True)
    for index in range(count):
        image.save(category / "train" / "good" / f"{index:03d}.png")
    image.save(category / "test" / "good" / "000.png")
    image.rotate(90).save(category / "test" / "defect" / "000.png")
    mask = Image.new("L", (64, 64))
    mask.paste(255, (16, 16, 48, 48))
    mask.save(category / "ground_truth" / "defect" / "000_mask.png")
    return root


@pytest.mark.slow
def test_training_on_copies_of_one_image_stops_with_the_cause_and_the_checker_reports_them(tmp_path: Path) -> None:
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    from anomalib_dhkd.tools.check import check_dataset
    from tests.conftest import shared_category, tiny_dhkd

    bottle = shared_category("mvtec_ad", "bottle") / "bottle" / "train" / "good" / "000.png"
    root = copies_of_one_image(tmp_path / "data", bottle, count=8)
    report = check_dataset(root, category="copies")
    assert any("8 images are identical or near-identical" in str(problem) for problem in report.problems)
    data = MVTecAD(root=root, category="copies", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=tmp_path / "run", logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"training images hardly vary .*python -m anomalib_dhkd\.check"):
        engine.fit(model=tiny_dhkd(max_epochs=2), datamodule=data)
