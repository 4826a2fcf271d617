"""Synthetic anomalies on real images stay on the object, and are reproducible under a seed."""

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_dhkd.components.synthesis import ForegroundAnomalies, foreground_mask, otsu_threshold
from tests.conftest import shared_category, tiny_bikd


def real_images(dataset: str, category: str, count: int = 2) -> torch.Tensor:
    """The first ``count`` training images of a shared category, 256 px, in ``[0, 1]``."""
    folder = shared_category(dataset, category) / category / "train" / "good"
    paths = sorted(folder.glob("*.png"))[:count]
    arrays = [np.array(Image.open(path).convert("RGB").resize((256, 256))) for path in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize(("dataset", "category"), [("hazelnut_toy", "hazelnut"), ("mvtec_ad", "bottle")])
def test_foreground_of_an_object_on_a_plain_background_stays_off_the_border(dataset: str, category: str) -> None:
    mask = foreground_mask(real_images(dataset, category))
    share = mask.float().flatten(1).mean(dim=1)
    assert ((share > 0.1) & (share < 0.9)).all()  # an object, not the whole frame
    border = torch.cat([mask[..., :8, :].flatten(1), mask[..., -8:, :].flatten(1)], dim=1)
    assert not border.any()  # the background at the border is never foreground
    centre = mask[..., 120:136, 120:136]
    assert centre.all()  # the part sits in the middle of these images


def test_a_texture_is_foreground_everywhere() -> None:
    assert foreground_mask(real_images("magnetic_tile", "magnetic_tile", count=4)).all()


def test_anomalies_are_painted_only_on_the_object_and_repeat_under_a_seed() -> None:
    images = real_images("mvtec_ad", "bottle", count=4)
    synthesizer = ForegroundAnomalies(probability=1.0)
    torch.manual_seed(3)
    augmented, masks = synthesizer(images)
    torch.manual_seed(3)
    again, masks_again = synthesizer(images)
    assert torch.equal(augmented, again)
    assert torch.equal(masks, masks_again)
    assert masks.flatten(1).sum(dim=1).gt(0).any()
    outside = ~foreground_mask(images) | (masks == 0)
    assert torch.equal(augmented.expand_as(images)[outside.expand_as(images)], images[outside.expand_as(images)])
    assert (masks <= foreground_mask(images).float()).all()


def test_otsu_splits_two_clusters() -> None:
    low, high = 0.2 + 0.01 * torch.rand(1, 50), 0.7 + 0.01 * torch.rand(1, 30)
    threshold = float(otsu_threshold(torch.cat([low, high], dim=1))[0])
    assert float(low.max()) < threshold < float(high.min())


def test_the_model_paints_on_denormalised_images_and_normalises_them_again() -> None:
    model = tiny_bikd()
    images01 = real_images("hazelnut_toy", "hazelnut", count=2)
    mean, std = model.input_normalization()
    normalised = (images01 - mean) / std
    unchanged, masks = model.synthesize_anomalies(normalised, lambda x: (x, torch.zeros_like(x[:, :1])))
    assert torch.equal(unchanged, normalised)  # bit for bit: a model may reuse the features of unpainted images
    assert not masks.any()
    seen = []
    model.synthesize_anomalies(normalised, lambda x: (seen.append(x) or x, x[:, :1]))
    torch.testing.assert_close(seen[0], images01, atol=1e-6, rtol=0)  # the synthesizer works in [0, 1]
