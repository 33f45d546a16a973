"""onnxruntime's static quantizer, wrapped: float models become the int8 models the compiler reads."""

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

FORMATS = ("qdq", "qop")
"""Quantized formats: ``"qdq"`` (QuantizeLinear/DequantizeLinear around float operators) and
``"qop"`` (QOperator: ``QLinearConv``, ``QLinearMatMul``... operating on int8 tensors)."""


def random_samples(model, count=8, seed=0):
    """``count`` calibration feeds for ``model``: one dict per sample, batch 1.

    Float inputs are standard normal; integer inputs (token or row ids) are uniform over the rows
    of the smallest table a ``Gather`` reads, so every id is valid for every table.

    Parameters
    ----------
    model : onnx.ModelProto
        A model whose inputs have fixed non-batch dimensions.
    count, seed : int
        Number of samples and seed of their values.

    Returns
    -------
    list of dict
        ``{input name: array of shape [1, ...]}`` for each sample (float32, or int64 ids).
    """
    rng = np.random.default_rng(seed)
    tables = {node.input[0] for node in model.graph.node if node.op_type == "Gather"}
    rows = min((init.dims[0] for init in model.graph.initializer if init.name in tables and init.dims), default=1)
    inputs = {i.name: ([d.dim_value or 1 for d in i.type.tensor_type.shape.dim],
                       i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT) for i in model.graph.input}

    def sample(shape, is_float):
        return rng.standard_normal(shape).astype(np.float32) if is_float else rng.integers(0, rows, shape)

    return [{name: sample(*spec) for name, spec in inputs.items()} for _ in range(count)]


class _Reader:
    """The ``CalibrationDataReader`` protocol (``get_next``, ``rewind``) over a list of feeds."""

    def __init__(self, feeds):
        self.feeds = list(feeds)
        self.position = 0

    def get_next(self):
        if self.position == len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self):
        self.position = 0


def quantize(model, fmt="qdq", samples=None, per_channel=False, activations="int8"):
    """An int8 version of ``model`` by onnxruntime's ``quantize_static``.

    Weights are ``QInt8``, activations ``QInt8`` or ``QUInt8`` (``activations``), ranges
    calibrated by MinMax (asymmetric for the activations, symmetric for the weights: onnxruntime's
    defaults), per tensor unless ``per_channel``.

    Parameters
    ----------
    model : onnx.ModelProto
        A float model.
    fmt : {"qdq", "qop"}
        ``QuantFormat.QDQ`` or ``QuantFormat.QOperator``.
    samples : numpy.ndarray or list of dict, optional
        Calibration data: an array (fed whole to the model's only input) or a list of feeds.
        Default: :func:`random_samples` ``(model)``.
    per_channel : bool
        Per-output-channel weight scales.
    activations : {"int8", "uint8"}
        Type of the quantized activations.

    Returns
    -------
    onnx.ModelProto
        The quantized model.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    formats = {"qdq": QuantFormat.QDQ, "qop": QuantFormat.QOperator}
    if fmt not in formats:
        raise ValueError(f"fmt must be one of {sorted(formats)}, not {fmt!r}")
    if samples is None:
        samples = random_samples(model)
    elif isinstance(samples, np.ndarray):
        samples = [{model.graph.input[0].name: samples.astype(np.float32)}]
    with tempfile.TemporaryDirectory() as tmp:
        # From a file, not the ModelProto: given a proto, quantize_static (onnxruntime 1.32)
        # rewrites it in place to point its initializers at a temporary external-data file that
        # it then deletes, which leaves the caller's model unusable.
        source, out = Path(tmp) / "float.onnx", Path(tmp) / "quantized.onnx"
        onnx.save(model, source)
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.ERROR))  # quantize_static's pre-processing and x64 hints, on every call
        try:
            quantize_static(source, out, _Reader(samples), quant_format=formats[fmt],
                            activation_type={"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[activations],
                            weight_type=QuantType.QInt8, per_channel=per_channel)
        finally:
            root.setLevel(level)
        return onnx.load(out)
