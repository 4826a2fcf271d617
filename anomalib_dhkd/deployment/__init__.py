"""Deployment: exported-model runtimes (ONNX Runtime, OpenVINO), encoder-only INT8 and the predict command."""

from anomalib_dhkd.deployment.runtime import ExportedModel, load_exported, resize_to_input

__all__ = ["ExportedModel", "load_exported", "resize_to_input"]
