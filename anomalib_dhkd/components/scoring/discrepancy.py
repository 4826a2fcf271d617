"""Per-position teacher-student discrepancies and their spatial coherence.

:func:`squared_discrepancy` is DHKD's (model README, "Architecture as built"), :func:`normalized_discrepancy`
STFPM's layer map (Wang et al., BMVC 2021, Sec. 3.3). :func:`discrepancy_coherence` is our addition; neither paper
has it.
"""

import torch
import torch.nn.functional as F  # noqa: N812


def squared_discrepancy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Return the per-position squared discrepancy ``mean_c (S - T)^2``.

    Args:
        student: Student features ``(N, C, H, W)``.
        teacher: Teacher features of the same shape.

    Returns:
        The discrepancy ``(N, 1, H, W)``.

    Example:
        >>> squared_discrepancy(torch.ones(1, 2, 1, 1), torch.zeros(1, 2, 1, 1))
        tensor([[[[1.]]]])

    """
    return (student - teacher).pow(2).mean(dim=1, keepdim=True)


def normalized_discrepancy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Return the per-position ``0.5 * ||S / |S| - T / |T|||^2`` over channels, in ``[0, 2]``.

    STFPM's layer map (Wang et al., "Student-Teacher Feature Pyramid Matching for Anomaly Detection", BMVC 2021,
    Sec. 3.3): features are compared by direction only, so layers of different magnitudes share one scale.

    Args:
        student: Student features ``(N, C, H, W)``.
        teacher: Teacher features of the same shape.

    Returns:
        The discrepancy ``(N, 1, H, W)``.

    Example:
        >>> teacher = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
        >>> normalized_discrepancy(-teacher, teacher).flatten(), normalized_discrepancy(3 * teacher, teacher).flatten()
        (tensor([2.]), tensor([0.]))

    """
    return 0.5 * (F.normalize(student, dim=1) - F.normalize(teacher, dim=1)).pow(2).sum(dim=1, keepdim=True)


def discrepancy_coherence(residual: torch.Tensor, window: int) -> torch.Tensor:
    """Share of the discrepancy in each ``window`` x ``window`` neighbourhood that is spatially coherent.

    ``mean_c (avg_w r_c)^2 / avg_w (mean_c r_c^2)`` of the residual ``r = S - T``, ``(N, C, h, w) -> (N, 1, h, w)``, in
    ``[0, 1]`` (Jensen's inequality): near 1 where the student misses the teacher the same way across the whole
    neighbourhood (a lighting gradient, a large low-contrast defect), near ``1 / window^2`` where the misses are
    independent (normal noise) or confined to a few cells (a small defect, which the local discrepancy shows).

    Args:
        residual: Student minus teacher features ``(N, C, h, w)``.
        window: Side of the neighbourhood in cells, odd; positions near the border average the cells inside.

    Returns:
        The coherence ``(N, 1, h, w)``.

    Example:
        >>> discrepancy_coherence(torch.ones(1, 2, 4, 4), window=3).unique()  # the same miss everywhere
        tensor([1.])

    """

    def neighbourhood_mean(maps: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(maps, window, stride=1, padding=window // 2, count_include_pad=False)

    coherent = neighbourhood_mean(residual).pow(2).mean(dim=1, keepdim=True)
    total = neighbourhood_mean(residual.pow(2).mean(dim=1, keepdim=True))
    return coherent / total.clamp_min(torch.finfo(total.dtype).tiny)


def coherence_windows(window: int, strides: list[int], reference_stride: int) -> list[int]:
    """Neighbourhood sides, in cells of layers of ``strides``, spanning ``window`` cells of ``reference_stride``.

    Rounded down to an odd number of cells, at least one: 7 cells of stride 16 (112 px) are 3 cells of stride 32.

    Args:
        window: Side of the neighbourhood in cells of ``reference_stride``.
        strides: Strides of the layers in pixels.
        reference_stride: Stride the ``window`` is counted in.

    Returns:
        One odd side per layer.

    Example:
        >>> coherence_windows(7, [16, 32], reference_stride=16)
        [7, 3]

    """
    cells = [int(window * reference_stride / stride) for stride in strides]
    return [max(1, count - 1 + count % 2) for count in cells]
