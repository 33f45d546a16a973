"""Lookup tables for quantized unary operators, computed by onnxruntime itself.

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


def _run(graph, opsets, dtype):
    model = helper.make_model(graph, opset_imports=opsets)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdqisint8allowed", "1")  # as the exactness tests run the model
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": _codes(dtype)})[0]


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
    def scalar(name, value, kind):
        return helper.make_tensor(name, kind, (), [value])

    inputs = [helper.make_tensor_value_info("x", _ELEMENT[x.dtype], [256])]
    outputs = [helper.make_tensor_value_info("y", _ELEMENT[y.dtype], [256])]
    initializers = [scalar("xs", float(x.scale), TensorProto.FLOAT), scalar("xz", x.zero_point, _ELEMENT[x.dtype]),
                    scalar("ys", float(y.scale), TensorProto.FLOAT), scalar("yz", y.zero_point, _ELEMENT[y.dtype])]
    if op_type in QLINEAR_UNARY:
        domain, _ = QLINEAR_UNARY[op_type]
        nodes = [helper.make_node(op_type, ["x", "xs", "xz", "ys", "yz"], ["y"], domain=domain, **attributes)]
        opsets = [helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    else:
        extra = [name for name, _ in constants]
        initializers += [onnx.numpy_helper.from_array(np.asarray(value), name) for name, value in constants]
        nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
                 helper.make_node(op_type, ["xf", *extra], ["yf"], **attributes),
                 helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"])]
        opsets = [helper.make_opsetid("", 17)]
    out = _run(helper.make_graph(nodes, "unary", inputs, outputs, initializers), opsets, x.dtype)
    codes = _codes(x.dtype).astype(np.int16) - x.offset  # input codes as the pNPU holds them
    table = np.zeros(256, np.int8)
    table[codes.astype(np.uint8)] = (out.astype(np.int16) - y.offset).astype(np.int8)
    return table
