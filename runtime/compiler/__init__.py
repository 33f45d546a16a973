"""The model compiler: int8 ONNX models (QDQ or QOperator, or float models quantized with
onnxruntime) to uTOp programs whose outputs equal onnxruntime's.

Stages: :mod:`.frontend` (ONNX → the IR of :mod:`.ir`, folding QDQ pairs), :mod:`.fuse` (elementwise
regions of one tensor → one table), :mod:`.lower` (layouts,
memory plan, kernels of :mod:`tcloud.firmware` → one program image) and :mod:`.model` (the
:class:`CompiledModel` and the host's work at the model's edges). :mod:`.zoo` holds the models the
tests and benchmarks use.
"""

import warnings
from pathlib import Path

import numpy as np

from .frontend import build_graph, load_model
from .fuse import fold_code_functions
from .ir import CompileError
from .lower import lower
from .model import CompiledModel
from .quantize import quantize

__all__ = ["compile", "CompiledModel", "CompileError", "quantize_model"]


def compile(model, config="small", calibration=None, *, batch=None, sram_kib=None, max_utop_cost=None):
    """Compile an ONNX model for a pNPU configuration.

    Parameters
    ----------
    model : path, bytes or onnx.ModelProto
        An int8 model as onnxruntime's quantizer writes it (QDQ or QOperator), or a float model,
        which is quantized first (:func:`quantize_model`).
    config : str or ArchConfig
    calibration : dict, path or None
        For float models: calibration samples (input name → array with the batch first, or an
        ``.npz`` of them); without any, random samples are used and a warning says so.
    batch : int, optional
        Batch size for a dynamic batch dimension (default 1); :meth:`CompiledModel.run` compiles
        other batch sizes on demand.
    sram_kib : int, optional
        Scratchpad budget, e.g. a vNPU's window (default: the whole scratchpad).
    max_utop_cost : int, optional
        Largest declared cost of an ME uTOp, so the ``harvest`` policy may share them (default:
        no limit).

    Returns
    -------
    CompiledModel

    Raises
    ------
    CompileError
        An unsupported operator or attribute (naming the node), or a model too large for the
        configuration (naming the tensor and the sizes).
    """
    for name, value in (("batch", batch), ("sram_kib", sram_kib), ("max_utop_cost", max_utop_cost)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CompileError(f"{name} must be a positive integer, got {value!r}")
    proto = load_model(model)
    if not _is_quantized(proto):
        proto = quantize_model(proto, calibration)
    options = {"sram_bytes": None if sram_kib is None else sram_kib * 1024, "max_utop_cost": max_utop_cost}

    def build(size):
        image, _ = lower(fold_code_functions(build_graph(proto, size)), config, **options)
        return CompiledModel(image, recompile=build)

    return build(batch)


def _is_quantized(proto):
    return any(node.op_type in ("QuantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm") for node in proto.graph.node)


def quantize_model(model, calibration=None):
    """Quantize a float ONNX model with onnxruntime's ``quantize_static`` (QDQ, int8 activations and
    weights), calibrated on ``calibration``.

    Parameters
    ----------
    model : path, bytes or onnx.ModelProto
    calibration : dict, path or None
        Input name → samples (batch first), or an ``.npz`` file of them. ``None``: random normal
        samples, with a warning.

    Returns
    -------
    onnx.ModelProto

    Raises
    ------
    CompileError
        If the samples do not name every model input.
    """
    proto = load_model(model)
    if calibration is None:
        warnings.warn("no calibration samples given: quantizing with random inputs; pass calibration= "
                      "(or --calibration samples.npz) for a model that keeps its accuracy", stacklevel=2)
        return quantize(proto, "qdq")
    if isinstance(calibration, (str, Path)):
        try:
            with np.load(calibration, allow_pickle=False) as archive:
                data = dict(archive)
        except (OSError, ValueError) as exc:
            raise CompileError(f"cannot read calibration samples {calibration}: {exc}") from None
    else:
        data = dict(calibration)
    names = [value.name for value in proto.graph.input if value.name not in {i.name for i in proto.graph.initializer}]
    missing = sorted(set(names) - set(data))
    if missing:
        raise CompileError(f"the calibration samples lack the model input(s) {missing}")
    count = min(len(data[name]) for name in names)
    feeds = [{name: np.asarray(data[name][i:i + 1], np.float32) for name in names} for i in range(count)]
    return quantize(proto, "qdq", feeds)
