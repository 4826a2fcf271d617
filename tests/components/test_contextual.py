"""Contextual Transformer blocks and the residual student built from them."""

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_dhkd.components.students import ContextualStudent, ContextualTransformer
from anomalib_dhkd.components.students.contextual import neighbourhood_sum


@pytest.mark.parametrize(("height", "width"), [(5, 7), (1, 1), (9, 4)])
def test_cot_keeps_the_shape_and_passes_gradients_for_odd_sizes(height: int, width: int) -> None:
    torch.manual_seed(0)
    layer = ContextualTransformer(12, groups=4)
    features = torch.rand(2, 12, height, width, requires_grad=True)
    output = layer(features)
    assert output.shape == features.shape
    output.square().sum().backward()
    assert features.grad is not None
    assert torch.isfinite(features.grad).all()
    assert features.grad.abs().sum() > 0
    assert all(p.grad is not None for p in layer.parameters())


def test_neighbourhood_sum_equals_unfold() -> None:
    torch.manual_seed(0)
    values, weights = torch.rand(2, 3, 4, 6, 5), torch.rand(2, 3, 9, 6, 5)
    patches = F.unfold(values.flatten(1, 2), kernel_size=3, padding=1).view(2, 3, 4, 9, 6, 5)
    expected = (patches * weights.unsqueeze(2)).sum(dim=3)
    torch.testing.assert_close(neighbourhood_sum(values, weights, 3), expected)


def test_cot_groups_fall_back_to_a_divisor_of_the_channels() -> None:
    assert ContextualTransformer(6, groups=4).groups == 2
    with pytest.raises(ValueError, match="odd"):
        ContextualTransformer(8, kernel_size=4)


def test_attention_depends_on_the_neighbourhood() -> None:
    """The contexts mix the 3 x 3 neighbourhood; only the fusion's global average reaches further, weakly."""
    torch.manual_seed(0)
    layer = ContextualTransformer(8).eval()
    features = torch.rand(1, 8, 6, 6)
    changed = features.clone()
    changed[..., 3, 3] += 1
    with torch.no_grad():
        difference = (layer(changed) - layer(features)).abs().sum(dim=1)[0]
    assert difference[3, 4] > 10 * difference[0, 0]  # a neighbour against a far position


def test_student_predicts_every_scale_of_the_teacher() -> None:
    student = ContextualStudent([24, 40, 112], strides=[4, 8, 16], blocks=1)
    outputs = student(torch.rand(2, 3, 64, 64))
    assert [tuple(f.shape) for f in outputs] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]
    plain = ContextualStudent([24, 40], strides=[4, 8], contextual=False)
    assert not any(isinstance(m, ContextualTransformer) for m in plain.modules())
    with pytest.raises(ValueError, match="powers of two"):
        ContextualStudent([8, 16], strides=[4, 12])
