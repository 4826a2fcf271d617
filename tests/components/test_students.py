"""Dual-domain students: the matmul DFT, its export and the dual-domain blocks."""

import pytest
import torch

from anomalib_dhkd.components.students import (
    DenoisingStudentConfig,
    DualDomainBlock,
    DualDomainStudent,
    FrequencyFilter,
    irfft2,
    rfft2,
)
from anomalib_dhkd.components.students.fourier import irfft2_matmul, rfft2_matmul


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (16, 5), (1, 4)])
def test_matmul_dft_equals_torch_fft(size: tuple[int, int]) -> None:
    features = torch.randn(2, 3, *size, dtype=torch.float64)
    spectrum = torch.fft.rfft2(features, norm="ortho")
    real, imag = rfft2_matmul(features)
    torch.testing.assert_close(real, spectrum.real)
    torch.testing.assert_close(imag, spectrum.imag)
    # A spectrum that is not Hermitian in its DC/Nyquist bins must be treated like torch does (imag dropped).
    noisy_real, noisy_imag = real + torch.randn_like(real), imag + torch.randn_like(imag)
    expected = torch.fft.irfft2(torch.complex(noisy_real, noisy_imag), s=size, norm="ortho")
    torch.testing.assert_close(irfft2_matmul(noisy_real, noisy_imag, size), expected)


def test_fft_round_trip_float32() -> None:
    features = torch.randn(2, 4, 12, 10)
    torch.testing.assert_close(irfft2(*rfft2(features), (12, 10)), features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(irfft2_matmul(*rfft2_matmul(features), (12, 10)), features, atol=1e-5, rtol=1e-5)


def test_export_uses_matmul_dft_not_fft_ops() -> None:
    module = FrequencyFilter(4).eval()
    example = torch.randn(1, 4, 8, 6)
    exported = torch.export.export(module, (example,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert not [target for target in targets if "fft" in target], targets
    torch.testing.assert_close(exported.module()(example), module(example), atol=1e-5, rtol=1e-4)


def test_student_width_follows_hidden_ratio() -> None:
    assert DenoisingStudentConfig().hidden_channels(40) == 40
    assert DenoisingStudentConfig(hidden_ratio=0.5).hidden_channels(40) == 20
    assert DenoisingStudentConfig(hidden_ratio=0.1).hidden_channels(40) == 8  # never narrower than 8 channels
    student = DualDomainStudent(
        40, num_blocks=1, hidden_channels=DenoisingStudentConfig(hidden_ratio=0.5).hidden_channels(40)
    )
    assert student.stem.out_channels == 20
    assert student(torch.randn(1, 40, 6, 6)).shape == (1, 40, 6, 6)


def test_dual_domain_block_starts_as_identity_and_keeps_shape() -> None:
    block = DualDomainBlock(6)
    features = torch.randn(2, 6, 9, 7)
    torch.testing.assert_close(block(features), features)
    student = DualDomainStudent(6, num_blocks=2, hidden_channels=8)
    output = student(features)
    assert output.shape == features.shape
    assert output.dtype == torch.float32
    output.sum().backward()
    assert all(p.grad is not None for p in student.parameters())
