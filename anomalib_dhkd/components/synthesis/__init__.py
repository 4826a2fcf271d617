"""Synthesis: anomalies painted on normal training images, restricted to the object's foreground."""

from anomalib_dhkd.components.synthesis.anomalies import ForegroundAnomalies
from anomalib_dhkd.components.synthesis.foreground import foreground_mask, otsu_threshold

__all__ = ["ForegroundAnomalies", "foreground_mask", "otsu_threshold"]
