"""Separable Gaussian smoothing of anomaly maps."""

from typing import Any

import torch
from anomalib.models.components.filters.blur import compute_kernel_size
from kornia.filters import filter2d_separable, get_gaussian_kernel1d
from torch import nn


class GaussianBlur(nn.Module):
    """Gaussian smoothing of ``(N, C, H, W)`` maps with a kernel of +-4 sigma and a reflected border.

    The 2-D Gaussian is separable: two 1-D passes. In eager mode each pass is one matrix product, ``B_H @ maps @
    B_W^T``, with the ``(H, H)`` and ``(W, W)`` matrices of the reflected-border 1-D convolution built once per map
    size: a single-channel convolution uses the CPU poorly, a matrix product well (measured on 1 thread, 256 px,
    sigma 4: 0.9 ms instead of 2.7 at batch 1, 18 instead of 112 at batch 16). Exported graphs keep the two 1-D
    convolutions (:meth:`separable`). Both equal the 2-D convolution with a reflected border (anomalib's
    ``GaussianBlur2d``) up to float rounding.

    The kernel follows from ``sigma`` alone and is not saved in checkpoints. A ``kernel`` entry in a loaded state
    dict, written by versions that smoothed with ``GaussianBlur2d``, is dropped.

    Args:
        sigma: Standard deviation in pixels, positive.

    Raises:
        ValueError: If ``sigma`` is not positive.

    Example:
        >>> blur = GaussianBlur(4.0)
        >>> blur, blur(torch.rand(1, 1, 32, 32)).shape
        (GaussianBlur(sigma=4.0, kernel_size=33), torch.Size([1, 1, 32, 32]))

    """

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if sigma <= 0:
            msg = f"sigma must be positive, got {sigma}."
            raise ValueError(msg)
        self.sigma = sigma
        self.kernel: torch.Tensor
        self.register_buffer("kernel", get_gaussian_kernel1d(compute_kernel_size(sigma), sigma), persistent=False)
        self.register_load_state_dict_pre_hook(_drop_saved_kernel)
        self._matrices: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (``torch.save(model)``, deep copies) without the cached matrices; they are rebuilt."""
        state = super().__getstate__()
        state["_matrices"] = {}
        return state

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Smooth ``maps`` over height and width, keeping their shape.

        Args:
            maps: Maps ``(N, C, H, W)``.

        Returns:
            The smoothed maps.

        """
        if torch.compiler.is_compiling():
            return self.separable(maps)
        rows, columns = self.matrices(maps)
        return rows @ maps @ columns.mT

    def separable(self, maps: torch.Tensor) -> torch.Tensor:
        """Smooth ``maps`` by two 1-D convolutions (the exported form)."""
        return filter2d_separable(maps, self.kernel, self.kernel, border_type="reflect")

    def matrices(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the matrices ``B_H (H, H)`` and ``B_W (W, W)`` of the passes over ``maps``, cached per size."""
        height, width = maps.shape[-2:]
        key = (height, width, maps.device, maps.dtype)
        if key not in self._matrices:
            kernel = self.kernel.to(maps.device, maps.dtype)
            with torch.inference_mode(mode=False), torch.no_grad():  # usable by training after a test loop
                self._matrices[key] = (_pass_matrix(kernel, height), _pass_matrix(kernel, width))
        return self._matrices[key]

    def extra_repr(self) -> str:
        """Show ``sigma`` and the kernel size."""
        return f"sigma={self.sigma}, kernel_size={self.kernel.shape[-1]}"


def _pass_matrix(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Build the matrix of a reflected-border 1-D convolution over ``size`` values (it smooths each unit vector)."""
    identity = torch.eye(size, dtype=kernel.dtype, device=kernel.device).view(1, 1, size, size)
    return filter2d_separable(identity, kernel.new_ones(1, 1), kernel, border_type="reflect")[0, 0]


def _drop_saved_kernel(_module: nn.Module, state_dict: dict[str, Any], prefix: str, *_args: Any) -> None:
    """Load-state-dict pre-hook: drop the kernel saved by older versions; it is rebuilt from ``sigma``."""
    state_dict.pop(f"{prefix}kernel", None)
