"""Building blocks shared by the plugin's knowledge-distillation models."""

from anomalib_dhkd.components.affinity import AffinityLoss, affinity_matrix
from anomalib_dhkd.components.dual_domain import DualDomainBlock, DualDomainStudent, FrequencyFilter
from anomalib_dhkd.components.flow import ConvFlow, flow_negative_log_likelihood
from anomalib_dhkd.components.fourier import irfft2, rfft2
from anomalib_dhkd.components.global_statistics import GaussianDistance, channel_statistics, vector_moments
from anomalib_dhkd.components.noise import add_feature_noise
from anomalib_dhkd.components.position_statistics import PositionStandardizer, map_moments, mean_and_std
from anomalib_dhkd.components.smoothing import GaussianBlur

__all__ = [
    "AffinityLoss",
    "ConvFlow",
    "DualDomainBlock",
    "DualDomainStudent",
    "FrequencyFilter",
    "GaussianBlur",
    "GaussianDistance",
    "PositionStandardizer",
    "add_feature_noise",
    "affinity_matrix",
    "channel_statistics",
    "flow_negative_log_likelihood",
    "irfft2",
    "map_moments",
    "mean_and_std",
    "rfft2",
    "vector_moments",
]
