"""Teachers: models of normal features whose output the students learn to reproduce."""

from anomalib_dhkd.components.teachers.eman import EmaNormalizedEncoder
from anomalib_dhkd.components.teachers.flow import ConvFlow, FlowTeacherConfig, flow_negative_log_likelihood

__all__ = ["ConvFlow", "EmaNormalizedEncoder", "FlowTeacherConfig", "flow_negative_log_likelihood"]
