"""Run models exported by ``anomalib export`` (ONNX or OpenVINO IR) without torch models or Lightning.

An exported anomalib model contains the whole forward pass: pre-processing (resize and normalisation),
the network and post-processing (score normalisation and thresholds). It takes ``float32`` images in
``[0, 1]`` of shape ``(N, 3, H, W)`` and returns ``pred_score``, ``pred_label``, ``anomaly_map`` and
``pred_mask``. ``H`` and ``W`` are fixed when the model was exported with ``--input_size``.

Hand-written rather than anomalib's ``OpenVINOInferencer``: that one writes an ``openvino_cache`` folder into the
working directory (which fails on read-only factory installs), guesses the channel axis from the last dimension,
and has no ONNX Runtime counterpart.

Example:
    >>> model = load_exported("results/weights/openvino/model.xml")  # doctest: +SKIP
    >>> outputs = model(images)  # doctest: +SKIP
    >>> outputs["pred_score"].shape  # doctest: +SKIP
    (4,)

"""

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn import functional


class ExportedModel(Protocol):
    """An exported model ready to run: call it on a batch; ``input_size`` is its fixed ``(H, W)`` or ``None``.

    :class:`OpenVinoModel` and :class:`OnnxRuntimeModel` implement it; :func:`load_exported` picks one.

    Attributes:
        input_size: The ``(H, W)`` the model was exported with (``--input_size``), or ``None`` if it takes any size.

    """

    input_size: tuple[int, int] | None

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; outputs are keyed by name.

        Args:
            images: ``float32`` images in ``[0, 1]`` of shape ``(N, 3, H, W)``, at ``input_size`` if it is fixed.

        Returns:
            ``pred_score``, ``pred_label``, ``anomaly_map`` and ``pred_mask`` by name.

        """
        ...


def fixed_size(shape: list[object]) -> tuple[int, int] | None:
    """``(H, W)`` of an ``(N, C, H, W)`` input shape whose last two sizes are integers, else ``None`` (dynamic).

    Args:
        shape: Input shape as a runtime reports it; a dynamic size is a name or ``None``.

    Returns:
        The fixed spatial size, or ``None`` if the height or width is dynamic.

    Example:
        >>> fixed_size([1, 3, 256, 256])
        (256, 256)
        >>> fixed_size(["batch", 3, "height", "width"]) is None
        True

    """
    height, width = shape[2], shape[3]
    return (height, width) if isinstance(height, int) and isinstance(width, int) else None


def openvino_input_size(model: Any) -> tuple[int, int] | None:
    """Return the fixed ``(H, W)`` of an OpenVINO (compiled) model's first input, else ``None``.

    Args:
        model: ``openvino.Model`` or ``openvino.CompiledModel``.

    Returns:
        The fixed spatial size, or ``None`` if the height or width is dynamic.

    """
    shape = model.input(0).get_partial_shape()
    return fixed_size([dim.get_length() if dim.is_static else None for dim in shape])


def resize_to_input(images: torch.Tensor, input_size: tuple[int, int] | None) -> torch.Tensor:
    """Resize an ``(N, 3, H, W)`` batch to a model's fixed input size (bilinear, antialiased); ``None`` keeps it.

    Args:
        images: Batch of shape ``(N, 3, H, W)``.
        input_size: The model's fixed ``(H, W)``, or ``None`` for a model with a dynamic input size.

    Returns:
        The batch at ``input_size``; ``images`` itself when no resize is needed.

    Example:
        >>> import torch
        >>> resize_to_input(torch.rand(2, 3, 300, 400), (256, 256)).shape
        torch.Size([2, 3, 256, 256])

    """
    if input_size is None or tuple(images.shape[-2:]) == input_size:
        return images
    return functional.interpolate(images, size=input_size, mode="bilinear", antialias=True)


class OpenVinoModel:
    """An OpenVINO IR or ONNX file compiled by OpenVINO for the CPU.

    Args:
        path: ``.xml`` (its ``.bin`` beside it) or ``.onnx`` file.
        precision: OpenVINO inference precision hint. ``"f32"`` (default) keeps full precision for parity with
            torch; ``"bf16"``/``"f16"`` are faster on CPUs that support them. INT8 models stay INT8 either way.
        threads: CPU threads for inference; ``None`` lets OpenVINO decide.

    Example:
        >>> model = OpenVinoModel("results/weights/openvino/model.xml", threads=2)  # doctest: +SKIP
        >>> model.input_size  # doctest: +SKIP
        (256, 256)

    """

    def __init__(self, path: str | Path, precision: str = "f32", threads: int | None = None) -> None:
        import openvino

        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = openvino.Core().compile_model(str(path), "CPU", config)
        self.input_size = openvino_input_size(self.compiled)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; outputs are keyed by name.

        Args:
            images: ``float32`` images in ``[0, 1]`` of shape ``(N, 3, H, W)``, at ``input_size`` if it is fixed.

        Returns:
            ``pred_score``, ``pred_label``, ``anomaly_map`` and ``pred_mask`` by name.

        """
        result = self.compiled(images)
        return {port.get_any_name(): np.asarray(value) for port, value in result.items()}


class OnnxRuntimeModel:
    """An ONNX file run by ONNX Runtime on the CPU.

    Args:
        path: ``.onnx`` file (external ``.onnx.data`` weights beside it are found automatically).
        threads: Intra-op threads; ``None`` lets ONNX Runtime decide.

    Example:
        >>> model = OnnxRuntimeModel("results/weights/onnx/model.onnx")  # doctest: +SKIP
        >>> sorted(model(images))  # doctest: +SKIP
        ['anomaly_map', 'pred_label', 'pred_mask', 'pred_score']

    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = fixed_size(self.session.get_inputs()[0].shape)
        self.output_names = [output.name for output in self.session.get_outputs()]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; outputs are keyed by name.

        Args:
            images: ``float32`` images in ``[0, 1]`` of shape ``(N, 3, H, W)``, at ``input_size`` if it is fixed.

        Returns:
            ``pred_score``, ``pred_label``, ``anomaly_map`` and ``pred_mask`` by name.

        """
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: images}), strict=True))


def load_exported(
    path: str | Path, runtime: str | None = None, threads: int | None = None, precision: str = "f32"
) -> ExportedModel:
    """Load an exported model for inference.

    Args:
        path: ``.xml`` (OpenVINO IR) or ``.onnx`` file.
        runtime: ``"openvino"`` or ``"onnxruntime"``; by default OpenVINO for ``.xml``, ONNX Runtime for ``.onnx``.
        threads: CPU threads for inference; ``None`` lets the runtime decide.
        precision: OpenVINO inference precision hint. ``"f32"`` by default: OpenVINO's own default on CPUs with
            bfloat16 support is ``bf16``, which changes DHKD's scores (see ``benchmarks/deployment.py``).

    Returns:
        The model, ready to call on ``float32`` batches of shape ``(N, 3, H, W)``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file type or runtime is not supported.

    Example:
        >>> model = load_exported("results/weights/onnx/model.onnx", threads=2)  # doctest: +SKIP
        >>> model.input_size  # doctest: +SKIP
        (256, 256)

    """
    path = Path(path)
    if not path.is_file():
        msg = f"Exported model {path} not found; create it with `anomalib export --export_type openvino|onnx`."
        raise FileNotFoundError(msg)
    runtime = runtime or {".xml": "openvino", ".onnx": "onnxruntime"}.get(path.suffix)
    if runtime == "openvino" and path.suffix in {".xml", ".onnx"}:
        return OpenVinoModel(path, precision=precision, threads=threads)
    if runtime == "onnxruntime" and path.suffix == ".onnx":
        return OnnxRuntimeModel(path, threads=threads)
    msg = f"Cannot run {path.name} with runtime {runtime!r}: use an OpenVINO .xml or an .onnx file."
    raise ValueError(msg)
