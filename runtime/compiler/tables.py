"""Lookup tables for quantized unary operators (and Concat's inputs), computed by onnxruntime itself.

A quantized unary operator (``QLinearSigmoid``, ``QLinearLeakyRelu``, or ``DequantizeLinear → Tanh
→ QuantizeLinear`` in a QDQ model) maps each of the 256 input codes to one output code, whatever
float arithmetic onnxruntime uses inside. So the compiler builds the operator alone as a one-node
model with the same quantization, runs onnxruntime's CPU provider on all 256 codes, and the pNPU
looks the answers up (``ve.lut``): bit-exact by construction.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper

_ELEMENT = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}
_NUMPY = {"int8": np.int8, "uint8": np.uint8}

FLOAT_UNARY = ("Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Softplus", "Relu", "Clip",
               "Exp", "Erf", "Neg", "Abs")
"""Float operators of a QDQ model the compiler turns into tables (between a DequantizeLinear and a
QuantizeLinear)."""

QLINEAR_UNARY = {"QLinearSigmoid": ("com.microsoft", ()), "QLinearLeakyRelu": ("com.microsoft", ("alpha",))}
"""QOperator unary operators and the attributes they carry."""


def _codes(dtype):
    info = np.iinfo(_NUMPY[dtype])
    return np.arange(info.min, info.max + 1).astype(_NUMPY[dtype])


def _run(graph, opsets, dtype, feeds=None):
    model = helper.make_model(graph, opset_imports=opsets)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdqisint8allowed", "1")  # as the exactness tests run the model
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": _codes(dtype)} if feeds is None else feeds)[0]


def unary_table(op_type, attributes, x, y, constants=()):
    """The 256 output codes of a quantized unary operator, indexed by the input code's byte.

    Parameters
    ----------
    op_type : str
        A float operator of :data:`FLOAT_UNARY` (QDQ) or a key of :data:`QLINEAR_UNARY`.
    attributes : dict
        The node's attributes.
    x, y : QTensor
        Input and output quantization.
    constants : sequence of (name, numpy.ndarray)
        Extra constant inputs of a float operator (e.g. Clip's min and max), in input order.

    Returns
    -------
    numpy.ndarray
        int8 ``[256]``: entry ``code & 0xFF`` holds the output for input ``code``, both as the
        pNPU holds them (uint8 codes offset by 128).
    """
    if op_type in QLINEAR_UNARY:
        domain, _ = QLINEAR_UNARY[op_type]
        initializers = _quantization_constants(x, y)
        nodes = [helper.make_node(op_type, ["x", "xs", "xz", "ys", "yz"], ["y"], domain=domain, **attributes)]
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
        return _table(nodes, initializers, opsets, x, y)
    return chain_table([(op_type, attributes, constants)], x, y)


def chain_table(chain, x, y):
    """The 256 output codes of ``QuantizeLinear(f(DequantizeLinear(x)))`` for a chain of float operators
    ``f`` (each reading the previous one's output first, then its constants), e.g. GELU's
    ``Div → Erf → Add``.

    Parameters
    ----------
    chain : sequence of (op_type, attributes, constants)
        ``constants`` as in :func:`unary_table`.
    x, y : QTensor

    Returns
    -------
    numpy.ndarray
        As :func:`unary_table`.
    """
    initializers = _quantization_constants(x, y)
    nodes, source = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["f0"])], "f0"
    for index, (op_type, attributes, constants) in enumerate(chain):
        extra = []
        for name, value in constants:
            extra.append(f"c{index}_{name}")
            initializers.append(onnx.numpy_helper.from_array(np.asarray(value), extra[-1]))
        nodes.append(helper.make_node(op_type, [source, *extra], [f"f{index + 1}"], **attributes))
        source = f"f{index + 1}"
    nodes.append(helper.make_node("QuantizeLinear", [source, "ys", "yz"], ["y"]))
    return _table(nodes, initializers, [helper.make_opsetid("", 17)], x, y)


def _scalar(name, value, kind):
    return helper.make_tensor(name, kind, (), [value])


def _quantization(prefix, tensor):
    """The scale and zero-point initializers ``<prefix>s`` and ``<prefix>z`` of ``tensor``."""
    return [_scalar(f"{prefix}s", float(tensor.scale), TensorProto.FLOAT),
            _scalar(f"{prefix}z", tensor.zero_point, _ELEMENT[tensor.dtype])]


def _quantization_constants(x, y):
    return _quantization("x", x) + _quantization("y", y)


def _table(nodes, initializers, opsets, x, y):
    inputs = [helper.make_tensor_value_info("x", _ELEMENT[x.dtype], [256])]
    outputs = [helper.make_tensor_value_info("y", _ELEMENT[y.dtype], [256])]
    return _device_table(_run(helper.make_graph(nodes, "unary", inputs, outputs, initializers), opsets, x.dtype), x, y)


def _device_table(out, x, y):
    """The table indexed by the input bytes the pNPU holds, of the output codes ``out`` onnxruntime
    gave for the input codes ``_codes(x.dtype)``."""
    codes = _codes(x.dtype).astype(np.int16) - x.offset  # input codes as the pNPU holds them
    table = np.zeros(256, np.int8)
    table[codes.astype(np.uint8)] = (out.astype(np.int16) - y.offset).astype(np.int8)
    return table


def concat_tables(inputs, y, qdq):
    """Per input of a quantized Concat, the 256-entry table of its output codes, or ``None`` for an
    input whose codes pass unchanged (onnxruntime's ``QLinearConcat`` copies those).

    onnxruntime's ``QLinearConcat`` (which its graph optimizer also makes of a QDQ Concat) maps each
    input through a table of its own, so the compiler runs the operator itself, once, on a model
    with the same inputs, each fed all its 256 codes along axis 0.

    Parameters
    ----------
    inputs : list of QTensor
    y : QTensor
        The output's quantization.
    qdq : bool
        Build the model as ``DequantizeLinear``s → ``Concat`` → ``QuantizeLinear`` (a QDQ model),
        else as one ``com.microsoft`` ``QLinearConcat``.

    Returns
    -------
    list
        int8 ``[256]`` tables as :func:`unary_table` returns them, or ``None``.
    """
    names = [f"x{i}" for i in range(len(inputs))]
    values = [helper.make_tensor_value_info(name, _ELEMENT[x.dtype], [256]) for name, x in zip(names, inputs)]
    initializers = _quantization("y", y)
    for name, x in zip(names, inputs):
        initializers += _quantization(name, x)
    if qdq:
        nodes = [helper.make_node("DequantizeLinear", [name, f"{name}s", f"{name}z"], [f"{name}f"]) for name in names]
        nodes += [helper.make_node("Concat", [f"{name}f" for name in names], ["yf"], axis=0),
                  helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"])]
        opsets = [helper.make_opsetid("", 17)]
    else:
        nodes = [helper.make_node("QLinearConcat", ["ys", "yz"] + [f"{name}{part}" for name in names
                                                                    for part in ("", "s", "z")],
                                  ["y"], domain="com.microsoft", axis=0)]
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    outputs = [helper.make_tensor_value_info("y", _ELEMENT[y.dtype], [256 * len(inputs)])]
    out = _run(helper.make_graph(nodes, "concat", values, outputs, initializers), opsets, None,
               {name: _codes(x.dtype) for name, x in zip(names, inputs)})
    tables = [_device_table(out[256 * i:256 * (i + 1)], x, y) for i, x in enumerate(inputs)]
    identity = np.arange(256).astype(np.uint8).view(np.int8)
    return [None if np.array_equal(table, identity) else table for table in tables]
