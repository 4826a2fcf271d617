"""INT8 post-training quantisation of the feature encoder only, for models whose heads must stay in FP32.

Models like DHKD put a density model (a normalizing flow) on top of a frozen CNN encoder. NNCF can quantise the
encoder's convolutions well, but INT8 rounding inside the flow, the student or the score post-processing
destroys the anomaly scores. This module finds the encoder in an exported OpenVINO graph, as every node upstream
of the per-scale feature taps, and builds the NNCF ignored scope that keeps everything else in FP32. The model
README's "Export" section gives the measurements behind this split.

Example:
    >>> import nncf, openvino  # doctest: +SKIP
    >>> model = openvino.Core().read_model("weights/openvino/model.xml")  # doctest: +SKIP
    >>> scope = encoder_only_scope(model, tap_name="batch_norm", num_taps=3)  # doctest: +SKIP
    >>> dataset = calibration_dataset(model, datamodule)  # doctest: +SKIP
    >>> int8_model = nncf.quantize(model, dataset, ignored_scope=scope)  # doctest: +SKIP

"""

import logging
from typing import Any

import numpy as np
from anomalib.data import AnomalibDataModule, Batch

from anomalib_dhkd.deployment.runtime import openvino_input_size, resize_to_input

logger = logging.getLogger(__name__)

CONSTANT_TYPES = frozenset({"Constant", "Parameter", "Result"})


def feature_taps(model: Any, tap_name: str) -> list[Any]:
    """Ops whose name contains ``tap_name`` and none of whose inputs does: the first op of each feature tap.

    Args:
        model: OpenVINO model (``openvino.Model``).
        tap_name: Substring of the friendly names of the ops that take the encoder's features.

    Returns:
        The first op of each tap, in the graph's topological order.

    """

    def is_tap(op: Any) -> bool:
        return tap_name in op.get_friendly_name()

    return [
        op
        for op in model.get_ordered_ops()
        if is_tap(op) and not any(is_tap(source.get_source_output().get_node()) for source in op.inputs())
    ]


def upstream_names(ops: list[Any]) -> set[str]:
    """Friendly names of ``ops`` and of every op they depend on.

    Args:
        ops: OpenVINO ops (``openvino.Node``) to start from.

    Returns:
        The names of ``ops`` and of all their transitive inputs, constants included.

    """
    names, stack = set(), list(ops)
    while stack:
        op = stack.pop()
        if op.get_friendly_name() not in names:
            names.add(op.get_friendly_name())
            stack.extend(source.get_source_output().get_node() for source in op.inputs())
    return names


def encoder_only_scope(model: Any, tap_name: str, num_taps: int) -> Any:
    """NNCF ignored scope of every op of ``model`` that is not upstream of its visible feature taps.

    A tap can be invisible: the ONNX exporter folds a per-channel standardisation into the convolution before it
    when that convolution's output has no other use, as in an encoder layer that ends in convolution + BatchNorm
    without a residual connection (``tf_efficientnet_lite0``'s ``blocks.6``). The encoder ops that only such a
    tap depends on then stay in FP32, which costs speed but never accuracy: every quantised op is upstream of a
    visible tap, so it is part of the encoder.

    Args:
        model: OpenVINO model (``openvino.Model``).
        tap_name: Substring of the names of the ops that take the encoder's features (the exported model's
            feature standardisation); the ops upstream of them, the taps excluded, are quantised.
        num_taps: How many feature taps the model has; finding none or more means the graph was not read
            correctly.

    Returns:
        ``nncf.IgnoredScope`` naming every op outside the encoder (constants, parameters and results left out).

    Raises:
        ValueError: If no tap or more than ``num_taps`` taps are found.

    """
    import nncf

    taps = feature_taps(model, tap_name)
    if not 0 < len(taps) <= num_taps:
        msg = (
            f"Expected 1 to {num_taps} feature taps named '*{tap_name}*' in the exported graph, found {len(taps)}: "
            f"{[op.get_friendly_name() for op in taps]}. The export changed; INT8 quantisation cannot tell the "
            "encoder from the rest."
        )
        raise ValueError(msg)
    if len(taps) < num_taps:
        logger.info(
            "%d of %d feature taps are folded into their encoder convolution; the encoder layers only they use stay "
            "FP32.",
            num_taps - len(taps),
            num_taps,
        )
    sources = [source.get_source_output().get_node() for tap in taps for source in tap.inputs()]
    encoder = upstream_names(sources)
    ignored = [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_friendly_name() not in encoder and op.get_type_name() not in CONSTANT_TYPES
    ]
    return nncf.IgnoredScope(names=ignored, validate=False)


def calibration_dataset(model: Any, datamodule: AnomalibDataModule) -> Any:
    """NNCF dataset of ``datamodule``'s validation images, resized to ``model``'s fixed input size if it has one.

    anomalib's own calibration feeds the images at their stored size, which a model exported with
    ``input_size`` rejects.

    Args:
        model: OpenVINO model (``openvino.Model``) to be quantised.
        datamodule: Datamodule whose validation images calibrate the quantisation; it is set up here.

    Returns:
        ``nncf.Dataset`` yielding ``float32`` batches as the exported model takes them.

    """
    import nncf

    datamodule.setup("fit")
    size = openvino_input_size(model)

    def model_input(batch: Batch) -> np.ndarray:
        return resize_to_input(batch.image, size).numpy()

    return nncf.Dataset(datamodule.val_dataloader(), model_input)
