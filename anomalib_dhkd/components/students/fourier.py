"""Two-dimensional real FFT with an export-friendly fallback.

They serve the frequency branch of the student's dual-domain block in DHKD ("Unsupervised Image Anomaly Detection
with Denoised Heterogeneous Networks via Knowledge Distillation"; see
:mod:`~anomalib_dhkd.components.students.dual_domain`).

Eager PyTorch uses :func:`torch.fft.rfft2` / :func:`torch.fft.irfft2`. While the model is being traced for export
(``torch.compiler.is_compiling()``), the same transforms run as a discrete Fourier transform by matrix
multiplication with cosine and sine matrices. The two paths agree to float precision; the matrix path lowers to
plain ``MatMul`` nodes, which ONNX Runtime and OpenVINO both run (OpenVINO cannot convert ONNX ``DFT``).

Both paths use the orthonormal scaling (``norm="ortho"``), so a feature map and its spectrum have the same energy.
The complex spectrum is returned as a ``(real, imag)`` pair of real tensors of shape ``(..., H, W // 2 + 1)``.
"""

import math

import torch


def _dft_matrices(size: int, num_frequencies: int, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the ``(size, num_frequencies)`` cosine and sine matrices of the DFT of length ``size``."""
    positions = torch.arange(size, dtype=torch.float64, device=reference.device)
    frequencies = torch.arange(num_frequencies, dtype=torch.float64, device=reference.device)
    angle = 2 * math.pi * torch.outer(positions, frequencies) / size
    return torch.cos(angle).to(reference.dtype), torch.sin(angle).to(reference.dtype)


def rfft2_matmul(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal real 2-D DFT over the last two dimensions by matrix multiplication.

    With ``x`` real, a real DFT along the width (``Y = x C_w - i x S_w``) followed by a full DFT along the height
    (``X = (C_h - i S_h) Y``) gives ``Re X = C_h Yr + S_h Yi`` and ``Im X = C_h Yi - S_h Yr``.

    Args:
        features: Real tensor of shape ``(..., H, W)``.

    Returns:
        Real and imaginary parts of the spectrum, each of shape ``(..., H, W // 2 + 1)``.

    Example:
        >>> import torch
        >>> features = torch.randn(2, 3, 6, 7)
        >>> real, imag = rfft2_matmul(features)
        >>> spectrum = torch.fft.rfft2(features, norm="ortho")
        >>> torch.allclose(real, spectrum.real, atol=1e-5), torch.allclose(imag, spectrum.imag, atol=1e-5)
        (True, True)

    """
    height, width = features.shape[-2:]
    cos_w, sin_w = _dft_matrices(width, width // 2 + 1, features)
    cos_h, sin_h = _dft_matrices(height, height, features)
    real_w = features @ cos_w
    imag_w = -(features @ sin_w)
    scale = 1.0 / math.sqrt(height * width)
    real = (cos_h @ real_w + sin_h @ imag_w) * scale
    imag = (cos_h @ imag_w - sin_h @ real_w) * scale
    return real, imag


def irfft2_matmul(real: torch.Tensor, imag: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`rfft2_matmul` for an output of spatial ``size``, matching :func:`torch.fft.irfft2`.

    The inverse DFT along the height is complex; the inverse real DFT along the width weights each frequency by
    its Hermitian multiplicity (1 for the DC and Nyquist bins, 2 otherwise) and drops their imaginary parts.

    Args:
        real: Real part of the spectrum, shape ``(..., H, W // 2 + 1)``.
        imag: Imaginary part of the spectrum, same shape.
        size: Spatial size ``(H, W)`` of the output; ``W`` tells an odd width from an even one.

    Returns:
        Real tensor of shape ``(..., H, W)``.

    Example:
        >>> import torch
        >>> features = torch.randn(2, 3, 6, 7)
        >>> torch.allclose(irfft2_matmul(*rfft2_matmul(features), (6, 7)), features, atol=1e-5)
        True

    """
    height, width = size
    num_frequencies = real.shape[-1]
    cos_h, sin_h = _dft_matrices(height, height, real)
    real_h = cos_h @ real - sin_h @ imag
    imag_h = cos_h @ imag + sin_h @ real
    cos_w, sin_w = _dft_matrices(width, num_frequencies, real)
    multiplicity = torch.full((num_frequencies,), 2.0, dtype=real.dtype, device=real.device)
    multiplicity[0] = 1.0
    if width % 2 == 0:
        multiplicity[-1] = 1.0
    output = real_h @ (cos_w * multiplicity).T - imag_h @ (sin_w * multiplicity).T
    return output / math.sqrt(height * width)


def rfft2(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal real 2-D FFT of ``features`` (``..., H, W``) as a ``(real, imag)`` pair.

    Args:
        features: Real tensor of shape ``(..., H, W)``.

    Returns:
        Real and imaginary parts of the spectrum, each of shape ``(..., H, W // 2 + 1)``.

    Example:
        >>> import torch
        >>> real, imag = rfft2(torch.randn(2, 3, 8, 8))
        >>> real.shape, imag.shape
        (torch.Size([2, 3, 8, 5]), torch.Size([2, 3, 8, 5]))

    """
    if torch.compiler.is_compiling():
        return rfft2_matmul(features)
    spectrum = torch.fft.rfft2(features, norm="ortho")
    return spectrum.real, spectrum.imag


def irfft2(real: torch.Tensor, imag: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`rfft2`, returning a real tensor of spatial ``size``.

    Args:
        real: Real part of the spectrum, shape ``(..., H, W // 2 + 1)``.
        imag: Imaginary part of the spectrum, same shape.
        size: Spatial size ``(H, W)`` of the output.

    Returns:
        Real tensor of shape ``(..., H, W)``.

    Example:
        >>> import torch
        >>> features = torch.randn(2, 3, 8, 9)
        >>> torch.allclose(irfft2(*rfft2(features), (8, 9)), features, atol=1e-5)
        True

    """
    if torch.compiler.is_compiling():
        return irfft2_matmul(real, imag, size)
    return torch.fft.irfft2(torch.complex(real, imag), s=size, norm="ortho")
