"""Per-position teacher-student discrepancies and their spatial coherence."""

import torch
import torch.nn.functional as F  # noqa: N812


def squared_discrepancy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-position squared discrepancy ``mean_c (S - T)^2`` of shape ``(N, 1, H, W)``."""
    return (student - teacher).pow(2).mean(dim=1, keepdim=True)


def normalized_discrepancy(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-position ``0.5 * ||S / |S| - T / |T|||^2`` over channels, ``(N, 1, H, W)``, in ``[0, 2]``.

    STFPM's layer map (Wang et al., "Student-Teacher Feature Pyramid Matching for Anomaly Detection", BMVC 2021,
    Sec. 3.3): features are compared by direction only, so layers of different magnitudes share one scale.

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
    """

    def neighbourhood_mean(maps: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(maps, window, stride=1, padding=window // 2, count_include_pad=False)

    coherent = neighbourhood_mean(residual).pow(2).mean(dim=1, keepdim=True)
    total = neighbourhood_mean(residual.pow(2).mean(dim=1, keepdim=True))
    return coherent / total.clamp_min(torch.finfo(total.dtype).tiny)


def coherence_windows(window: int, strides: list[int], reference_stride: int) -> list[int]:
    """Neighbourhood sides, in cells of layers of ``strides``, spanning ``window`` cells of ``reference_stride``.

    Rounded down to an odd number of cells, at least one: 7 cells of stride 16 (112 px) are 3 cells of stride 32.
    """
    cells = [int(window * reference_stride / stride) for stride in strides]
    return [max(1, count - 1 + count % 2) for count in cells]
