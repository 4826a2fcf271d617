"""Bikd with one direction (the ablations forward only, reverse only) builds, trains and scores that branch only."""

import pytest
import torch

from anomalib_dhkd.models.bikd.loss import BikdLoss
from tests.conftest import TINY_IMAGE_SIZE, tiny_bikd


@pytest.mark.parametrize(
    ("direction", "kept", "left_out"),
    [
        ("forward", ("forward_student",), ("bottleneck", "decoder")),
        ("reverse", ("bottleneck", "decoder"), ("forward_student",)),
    ],
)
def test_one_direction_builds_trains_and_scores_its_branch_only(
    direction: str, kept: tuple[str, ...], left_out: tuple[str, ...]
) -> None:
    torch.manual_seed(0)
    model = tiny_bikd(directions=[direction], anomaly_probability=0.0)
    network = model.model
    assert all(getattr(network, name) is not None for name in kept)
    assert all(getattr(network, name) is None for name in left_out)
    scales = len(network.teacher.layers)
    assert network.scorer.map_indices == list(range(scales))  # one scored map per scale of the one branch
    optimised = {id(p) for group in model.configure_optimizers().param_groups for p in group["params"]}
    assert optimised == {id(p) for name in kept for p in getattr(network, name).parameters()}
    images = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    terms = model.loss(*network.train()(images))
    other = "reverse_distillation" if direction == "forward" else "forward_distillation"
    own = "forward_distillation" if direction == "forward" else "reverse_distillation"
    assert float(getattr(terms, own)) > 0
    assert float(getattr(terms, other)) == 0
    assert float(terms.exchange) == 0
    terms.total.backward()
    for name in kept:  # every kept module learns from the loss
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(network, name).parameters())
    with torch.no_grad():
        output = network.eval()(images)
    assert output.anomaly_map.shape == (2, 1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)


def test_both_directions_score_every_scale_twice() -> None:
    network = tiny_bikd().model
    assert network.scorer.map_indices == list(range(2 * len(network.teacher.layers)))


def test_unknown_or_no_direction_is_refused() -> None:
    with pytest.raises(ValueError, match="directions must be one or both of"):
        tiny_bikd(directions=["sideways"])
    with pytest.raises(ValueError, match="directions must be one or both of"):
        tiny_bikd(directions=[])


def test_exchange_needs_both_directions() -> None:
    features = [torch.rand(2, 4, 4, 4)]
    other = [torch.rand(2, 4, 4, 4)]
    assert float(BikdLoss(1.0)(features, other, other).exchange) == 0  # the two students agree
    assert float(BikdLoss(1.0)(features, other, features).exchange) > 0
    assert float(BikdLoss(1.0)(features, other, None).exchange) == 0


def test_feature_exchange_reconstructs_the_teacher_from_the_forward_student() -> None:
    torch.manual_seed(0)
    network = tiny_bikd(feature_exchange=True, exchange_weight=0.0, anomaly_probability=0.0).model
    images = torch.rand(2, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    teacher, forward, reverse = network.train()(images)
    assert [r.shape for r in reverse] == [t.shape for t in teacher]
    BikdLoss(0.0)(teacher, [f.detach() for f in forward], reverse).reverse_distillation.backward()
    # the reverse loss reaches the forward student only through the exchange; the frozen teacher gets nothing
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in network.forward_student.parameters())
    assert all(p.grad is None for p in network.teacher.parameters())
    with torch.no_grad():
        network.eval()
        scored = network.scoring_input(images)
        forward_eval = list(network.forward_student(images).values())
        expected = network.reconstruct(forward_eval)
    assert all(torch.equal(s, e) for s, e in zip(scored.student[len(forward_eval) :], expected, strict=True))


def test_one_direction_has_nothing_to_exchange() -> None:
    network = tiny_bikd(directions=["reverse"], feature_exchange=True).model
    assert not network.feature_exchange  # the reverse branch reads the teacher, as there is no forward student
    assert tiny_bikd().model.feature_exchange  # the default with both directions
    assert not tiny_bikd(feature_exchange=False).model.feature_exchange
