"""Students: networks trained to reproduce the teacher on normal features."""

from anomalib_dhkd.components.students.contextual import ContextualStudent, ContextualTransformer, ResidualBlock
from anomalib_dhkd.components.students.dual_domain import (
    DenoisingStudentConfig,
    DualDomainBlock,
    DualDomainStudent,
    FrequencyFilter,
)
from anomalib_dhkd.components.students.fourier import irfft2, rfft2

__all__ = [
    "ContextualStudent",
    "ContextualTransformer",
    "DenoisingStudentConfig",
    "DualDomainBlock",
    "DualDomainStudent",
    "FrequencyFilter",
    "ResidualBlock",
    "irfft2",
    "rfft2",
]
