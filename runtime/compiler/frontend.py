"""Front end: an int8 ONNX model (QDQ or QOperator) to the IR of :mod:`.ir`.

QOperator nodes (``QLinearConv``, ``QLinearMatMul``, ``com.microsoft`` ``QGemm``, ``QLinearAdd``,
``QLinearMul``) map one to one.
QDQ models are folded: a ``DequantizeLinear`` of an initializer is a constant; one of an activation
is a view of that quantized tensor; a float ``Conv``/``MatMul``/``Gemm`` on such views, followed by
its ``QuantizeLinear``, becomes the same operator as its QOperator twin — which is also what
onnxruntime's graph optimizer fuses it into. Requantization scales are computed in float32 in the
order onnxruntime's kernels compute them (``fl(fl(x_scale · w_scale) / y_scale)``). An ``Add`` or
``Mul`` of two such views (or of a view and a quantized constant, per tensor or per channel) is
onnxruntime's ``QLinearAdd`` / ``QLinearMul``; with a float scalar constant onnxruntime computes it
in float, which, as for the unary operators, becomes a 256-entry table.
"""

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .ir import (ActivationMatMul, AveragePool, CompileError, Concat, DepthwiseConv, DequantizeOutput, Elementwise,
                 Embedding, Flatten, GatherColumns, GlobalAveragePool, Graph, IdsInput, LayerNorm, Linear, Lookup,
                 MatrixTranspose, MaxPool, QTensor, QuantizeInput, Reshape, SequenceReduce, Softmax, Transpose,
                 node_error)
from .tables import FLOAT_UNARY, QLINEAR_UNARY, chain_table, concat_tables, unary_table

_QTYPES = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8"}
_LAYOUT_OPS = ("Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose")
"""Operators that move int8 codes without changing their quantization."""


def load_model(model):
    """An ``onnx.ModelProto`` from a path, bytes or a ModelProto (checked with ``onnx.checker``).

    Raises
    ------
    CompileError
        If the file is missing or is not a valid ONNX model.
    """
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        try:
            proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
        except FileNotFoundError:
            raise CompileError(f"no such model file: {model}") from None
        except Exception as exc:  # onnx raises DecodeError and others for a bad file
            raise CompileError(f"{model} is not an ONNX model: {exc}") from None
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise CompileError(f"the model is not valid ONNX: {str(exc).splitlines()[0]}") from None
    return proto


@dataclass
class _Const:
    """An initializer, or a DequantizeLinear of one (``scale``/``zero_point`` then set)."""

    values: np.ndarray
    scale: np.ndarray = None
    zero_point: np.ndarray = None


@dataclass
class _FloatView:
    """The float output of a DequantizeLinear of an activation: a view of ``tensor``."""

    tensor: QTensor


@dataclass
class _Ids:
    """An integer model input: row ids for embedding Gathers."""

    name: str
    shape: tuple


@dataclass
class _Pending:
    """A float operator of a QDQ model waiting for the QuantizeLinear that defines its output."""

    node: object
    make: object  # callable(output QTensor) -> IR node
    function: tuple = None
    """For a chain of float unary operators: ``(input QTensor, [(op_type, attributes, constants)...])``."""
    shape: tuple = None
    """The output's shape, where a layout operator may follow before the QuantizeLinear."""


def build_graph(model, batch=None):
    """Lower an ONNX model to a :class:`~.ir.Graph`.

    Parameters
    ----------
    model : onnx.ModelProto, path or bytes
    batch : int, optional
        Size of a dynamic batch dimension (default 1; a model with a fixed batch keeps it).

    Raises
    ------
    CompileError
        For unsupported operators or attributes (naming the node), or a model that is not int8.
    """
    proto = load_model(model)
    return _FrontEnd(proto, batch).graph


class _FrontEnd:
    def __init__(self, proto, batch):
        self.graph = Graph()
        self.values = {init.name: _Const(numpy_helper.to_array(init)) for init in proto.graph.initializer}
        self.nodes = list(proto.graph.node)
        self.float_inputs = {}
        for value in proto.graph.input:
            if value.name in self.values:
                continue
            shape = self._input_shape(value, batch)
            if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                self.float_inputs[value.name] = shape
            else:
                self.values[value.name] = _Ids(value.name, shape)
        self.graph.inputs = dict(self.float_inputs)
        self.graph.outputs = [value.name for value in proto.graph.output]
        for node in proto.graph.node:
            handler = getattr(self, f"_op_{node.op_type}", None)
            if handler is None and node.op_type in FLOAT_UNARY:
                handler = self._unary
            elif handler is None and node.op_type in QLINEAR_UNARY:
                handler = self._qlinear_unary
            if handler is None or node.domain not in ("", "ai.onnx", "com.microsoft"):
                raise node_error(node, f"operator {node.domain + '.' if node.domain else ''}{node.op_type} "
                                       f"is not supported")
            handler(node, _attributes(node))
        for name in self.graph.outputs:
            if not any(isinstance(n, DequantizeOutput) and (n.float_output or n.output) == name
                       for n in self.graph.nodes):
                value = self.values.get(name)
                if isinstance(value, QTensor):
                    self.graph.nodes.append(DequantizeOutput(name, "Output", [name], name, None))
                elif isinstance(value, _Pending):
                    raise node_error(value.node, f"its output, model output {name!r}, is float: the quantizer left "
                                                 f"this operator unquantized and the pNPU computes int8 tensors only")
                else:
                    raise CompileError(f"model output {name!r} is not a quantized tensor the pNPU computes")

    def _input_shape(self, value, batch):
        kind = value.type.tensor_type
        if kind.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            raise CompileError(f"model input {value.name!r} has element type "
                               f"{onnx.TensorProto.DataType.Name(kind.elem_type)}; float inputs, or int64/int32 "
                               f"ids of embedding tables, only")
        dims = []
        for i, dim in enumerate(kind.shape.dim):
            if dim.HasField("dim_value"):
                if i == 0 and batch is not None and dim.dim_value != batch:
                    raise CompileError(f"model input {value.name!r} has a fixed batch of {dim.dim_value}, "
                                       f"not {batch}")
                dims.append(dim.dim_value)
            elif i == 0:
                dims.append(1 if batch is None else batch)
            else:
                raise CompileError(f"model input {value.name!r} has a dynamic dimension {i} "
                                   f"({dim.dim_param!r}); only the batch may be dynamic")
        self.graph.batch = dims[0]
        return tuple(dims)

    # --- helpers -------------------------------------------------------------------------------

    def _const(self, node, name, what):
        value = self.values.get(name)
        if not isinstance(value, _Const):
            raise node_error(node, f"{what} ({name!r}) must be a constant initializer")
        return value.values

    def _float_const(self, node, name, what):
        """A float constant: an initializer, or a DequantizeLinear of one computed as onnxruntime does
        (``float32(q − zero_point) · scale``)."""
        value = self.values.get(name)
        if isinstance(value, _Const) and value.scale is not None:
            zero = np.asarray(value.zero_point).astype(np.int32)
            return ((value.values.astype(np.int32) - zero).astype(np.float32) * np.asarray(value.scale, np.float32))
        return np.asarray(self._const(node, name, what), np.float32)

    def _qtensor(self, node, name, what="input"):
        value = self.values.get(name)
        if not isinstance(value, QTensor):
            raise node_error(node, f"{what} {name!r} is not a quantized activation")
        return value

    def _scalar_qparams(self, node, scale_name, zp_name, what):
        scale = np.asarray(self._const(node, scale_name, f"{what} scale"), dtype=np.float32)
        zp = np.asarray(self._const(node, zp_name, f"{what} zero point")) if zp_name else np.zeros((), np.uint8)
        if scale.size != 1 or zp.size != 1:
            raise node_error(node, f"{what} must be quantized per tensor (scale has {scale.size} values)")
        if zp.dtype not in _QTYPES:
            raise node_error(node, f"{what} zero point has type {zp.dtype}; int8 or uint8 only")
        return np.float32(scale.reshape(())), int(zp.reshape(())), _QTYPES[zp.dtype]

    def _define(self, node, name, shape, scale, zp, dtype):
        tensor = QTensor(name, tuple(int(d) for d in shape), np.float32(scale), int(zp), dtype)
        self.values[name] = tensor
        self.graph.tensors[name] = tensor
        return tensor

    # --- edges ---------------------------------------------------------------------------------

    def _op_QuantizeLinear(self, node, attrs):
        source = node.input[0]
        scale, zp, dtype = self._scalar_qparams(node, node.input[1], node.input[2] if len(node.input) > 2 else "",
                                                "output")
        if source in self.float_inputs:
            tensor = self._define(node, node.output[0], self.float_inputs[source], scale, zp, dtype)
            self.graph.nodes.append(QuantizeInput(node.name, node.op_type, [source], tensor.name))
            return
        pending = self.values.get(source)
        if isinstance(pending, _Pending):
            pending.make(node, node.output[0], scale, zp, dtype)
            return
        if isinstance(pending, _FloatView) and (scale, zp, dtype) == (pending.tensor.scale, pending.tensor.zero_point,
                                                                       pending.tensor.dtype):
            self.values[node.output[0]] = pending.tensor  # quantizing a dequantized tensor again: itself
            return
        raise node_error(node, f"quantizes {source!r}, which is neither a model input nor the output of an "
                               f"operator the compiler folds (Conv, MatMul, Gemm, Flatten, Reshape)")

    def _op_DequantizeLinear(self, node, attrs):
        source = node.input[0]
        value = self.values.get(source)
        if isinstance(value, _Const):
            scale = np.asarray(self._const(node, node.input[1], "scale"), dtype=np.float32)
            zp = (np.asarray(self._const(node, node.input[2], "zero point")) if len(node.input) > 2
                  else np.zeros_like(value.values))
            self.values[node.output[0]] = _Const(value.values, scale, zp)
            return
        tensor = self._qtensor(node, source)
        scale, zp, dtype = self._scalar_qparams(node, node.input[1], node.input[2] if len(node.input) > 2 else "",
                                                "input")
        if (scale, zp, dtype) != (tensor.scale, tensor.zero_point, tensor.dtype):
            raise node_error(node, f"dequantizes {source!r} with other parameters than it was quantized with")
        if node.output[0] in self.graph.outputs:
            self.graph.nodes.append(DequantizeOutput(node.name, node.op_type, [source], source, node.output[0]))
        self.values[node.output[0]] = _FloatView(tensor)

    # --- QOperator -----------------------------------------------------------------------------

    def _op_QLinearConv(self, node, attrs):
        x = self._qtensor(node, node.input[0])
        self._check_input_qparams(node, x, node.input[1], node.input[2])
        w, w_scale = self._weights(node, node.input[3], node.input[4], node.input[5])
        y_scale, y_zp, y_dtype = self._scalar_qparams(node, node.input[6], node.input[7], "output")
        bias = self._const(node, node.input[8], "bias") if len(node.input) > 8 and node.input[8] else None
        self._conv(node, attrs, x, w, w_scale, bias, node.output[0], y_scale, y_zp, y_dtype)

    def _op_QLinearMatMul(self, node, attrs):
        x = self._qtensor(node, node.input[0])
        self._check_input_qparams(node, x, node.input[1], node.input[2])
        if isinstance(self.values.get(node.input[3]), QTensor):
            b = self._qtensor(node, node.input[3])
            self._check_input_qparams(node, b, node.input[4], node.input[5])
            y_scale, y_zp, y_dtype = self._scalar_qparams(node, node.input[6], node.input[7], "output")
            return self._activation_matmul(node, x, b, node.output[0], y_scale, y_zp, y_dtype)
        w, w_scale = self._weights(node, node.input[3], node.input[4], node.input[5], axis=1)
        y_scale, y_zp, y_dtype = self._scalar_qparams(node, node.input[6], node.input[7], "output")
        self._matmul(node, x, w, w_scale, None, node.output[0], y_scale, y_zp, y_dtype)

    def _op_QGemm(self, node, attrs):
        x = self._qtensor(node, node.input[0])
        self._check_input_qparams(node, x, node.input[1], node.input[2])
        self._check_gemm_attributes(node, attrs)
        w, w_scale = self._weights(node, node.input[3], node.input[4], node.input[5],
                                   axis=0 if attrs.get("transB", 0) else 1)
        if attrs.get("transB", 0):
            w = w.T
        bias = self._const(node, node.input[6], "bias C") if len(node.input) > 6 and node.input[6] else None
        if len(node.input) < 8 or not node.input[7]:
            raise node_error(node, "a QGemm without y_scale returns float; only quantized outputs are supported")
        y_scale, y_zp, y_dtype = self._scalar_qparams(node, node.input[7], node.input[8] if len(node.input) > 8
                                                      else "", "output")
        self._matmul(node, self._transposed_a(node, attrs, x), w, w_scale, bias, node.output[0], y_scale, y_zp,
                     y_dtype)

    # --- QDQ -----------------------------------------------------------------------------------

    def _view(self, node, name):
        value = self.values.get(name)
        if not isinstance(value, _FloatView):
            raise node_error(node, f"input {name!r} must come from a DequantizeLinear of an int8 activation "
                                   f"(a QDQ model)")
        return value.tensor

    def _dq_const(self, node, name, what):
        value = self.values.get(name)
        if not isinstance(value, _Const) or value.scale is None:
            raise node_error(node, f"{what} {name!r} must be a DequantizeLinear of an int8 initializer")
        return value

    def _qdq_weights(self, node, name, axis):
        value = self._dq_const(node, name, "weight")
        return self._check_weights(node, value.values, value.scale, value.zero_point, axis)

    def _qdq_bias(self, node, name, x, w_scale):
        if len(node.input) <= 2 or not node.input[2]:
            return None
        value = self._dq_const(node, name, "bias")
        expected = np.float32(x.scale) * np.asarray(w_scale, np.float32)
        if value.values.dtype != np.int32 or np.any(value.zero_point != 0) or not np.array_equal(
                np.broadcast_to(value.scale, expected.shape), expected):
            raise node_error(node, "bias must be int32 with zero point 0 and scale input_scale × weight_scale")
        return value.values

    def _op_Conv(self, node, attrs):
        x = self._view(node, node.input[0])
        w, w_scale = self._qdq_weights(node, node.input[1], axis=0)
        bias = self._qdq_bias(node, node.input[2] if len(node.input) > 2 else "", x, w_scale)
        self._pend(node, lambda q, out, s, zp, dt: self._conv(q, attrs, x, w, w_scale, bias, out, s, zp, dt))

    def _op_MatMul(self, node, attrs):
        x = self._view(node, node.input[0])
        if isinstance(self.values.get(node.input[1]), _FloatView):
            b = self._view(node, node.input[1])
            return self._pend(node, lambda q, out, s, zp, dt: self._activation_matmul(q, x, b, out, s, zp, dt))
        w, w_scale = self._qdq_weights(node, node.input[1], axis=1)
        self._pend(node, lambda q, out, s, zp, dt: self._matmul(q, x, w, w_scale, None, out, s, zp, dt))

    def _op_Gemm(self, node, attrs):
        x = self._view(node, node.input[0])
        self._check_gemm_attributes(node, attrs)
        w, w_scale = self._qdq_weights(node, node.input[1], axis=0 if attrs.get("transB", 0) else 1)
        if attrs.get("transB", 0):
            w = w.T
        bias = self._qdq_bias(node, node.input[2] if len(node.input) > 2 else "", x, w_scale)
        self._pend(node, lambda q, out, s, zp, dt: self._matmul(q, self._transposed_a(q, attrs, x), w, w_scale, bias,
                                                                out, s, zp, dt))

    def _pend(self, node, make, shape=None):
        self.values[node.output[0]] = _Pending(node, lambda q, out, s, zp, dt: make(node, out, s, zp, dt), shape=shape)

    @staticmethod
    def _pending_shape(node, pending):
        """A stand-in tensor with the shape of a pending float operator's output (for shape arithmetic)."""
        if pending.shape is None:
            raise node_error(node, f"input {node.input[0]!r} is a float result whose shape the compiler does not "
                                   f"track here; quantize it first")
        return QTensor(node.input[0], pending.shape, np.float32(1), 0)

    def _op_Relu(self, node, attrs):
        pending = self.values.get(node.input[0])
        if not isinstance(pending, _Pending) or pending.function is not None:
            return self._unary(node, attrs)

        def make(q, out, s, zp, dt, inner=pending):
            inner.make(q, out, s, zp, dt)
            self._last_linear(out, node).relu = True
        self.values[node.output[0]] = _Pending(node, make)

    def _last_linear(self, output, relu):
        node = self.graph.nodes[-1]
        if not isinstance(node, Linear) or node.output != output:
            raise node_error(relu, f"follows {node.op} {node.name!r} with no QuantizeLinear between, which "
                                   f"onnxruntime computes in float; only convolutions and matrix products fold a Relu")
        return node

    # --- layout-only operators (both formats) ----------------------------------------------------

    def _op_Flatten(self, node, attrs):
        axis = attrs.get("axis", 1)
        if axis != 1:
            raise node_error(node, f"attribute axis={axis} is not supported (only 1)")
        self._flatten(node)

    def _op_Reshape(self, node, attrs):
        source = self.values.get(node.input[0])
        tensor = source.tensor if isinstance(source, _FloatView) else source
        target = [int(d) for d in self._const(node, node.input[1], "shape")]
        if isinstance(source, _Pending):
            tensor = self._pending_shape(node, source)
        if not isinstance(tensor, QTensor):
            raise node_error(node, f"input {node.input[0]!r} is not a quantized activation")
        if len(target) == 2 and target[0] in (0, -1, tensor.shape[0]) \
                and target[1] in (-1, int(np.prod(tensor.shape[1:]))):
            return self._flatten(node)
        self._reshape(node, self._reshaped(node, tensor.shape, target, attrs))

    def _op_Unsqueeze(self, node, attrs):
        source = self.values.get(node.input[0])
        tensor = source.tensor if isinstance(source, _FloatView) else source
        if not isinstance(tensor, QTensor):
            raise node_error(node, f"input {node.input[0]!r} is not a quantized activation")
        axes = attrs.get("axes") if len(node.input) < 2 else self._const(node, node.input[1], "axes")
        rank = len(tensor.shape) + len(axes)
        shape = list(tensor.shape)
        for axis in sorted(int(a) % rank for a in axes):
            shape.insert(axis, 1)
        if shape[0] != tensor.shape[0]:
            raise node_error(node, f"attribute axes={list(axes)} moves the batch axis")
        self._reshape(node, tuple(shape))

    def _reshape(self, node, shape):
        def make(q, source, out, scale, zp, dtype):
            if (np.float32(scale), zp, dtype) != (source.scale, source.zero_point, source.dtype):
                raise node_error(node, f"a {node.op_type} must keep its input's quantization")
            self._define(node, out, shape, scale, zp, dtype)
            self.graph.nodes.append(Reshape(node.name, node.op_type, [source.name], out, shape=shape))
        self._layout_op(node, make)

    def _op_Gather(self, node, attrs):
        source = self.values.get(node.input[0])
        tensor = source.tensor if isinstance(source, _FloatView) else source
        indices = self.values.get(node.input[1])
        if isinstance(indices, _Ids):
            return self._embedding(node, attrs, source, indices)
        if not isinstance(tensor, QTensor) or not isinstance(indices, _Const):
            raise node_error(node, "only a Gather of an activation's features by constant indices is supported")
        axis = attrs.get("axis", 0)
        if len(tensor.shape) != 2 or axis not in (1, -1) or indices.values.ndim != 1:
            raise node_error(node, f"attribute axis={axis}: only features of [N, F] by a 1-D index vector are "
                                   f"supported (input shape {list(tensor.shape)})")
        features = tensor.shape[1]
        picked = tuple(int(i) % features for i in indices.values)
        if any(not -features <= int(i) < features for i in indices.values):
            raise node_error(node, f"indices outside 0..{features - 1}")

        def make(q, source, out, scale, zp, dtype):
            shape = (source.shape[0], len(picked))
            requantized = (np.float32(scale), zp, dtype) != (source.scale, source.zero_point, source.dtype)
            gathered = f"{out}/gathered" if requantized else out
            self._define(node, gathered, shape, source.scale, source.zero_point, source.dtype)
            self.graph.nodes.append(GatherColumns(node.name, node.op_type, [source.name], gathered, indices=picked))
            if requantized:  # a float Gather between DequantizeLinear and QuantizeLinear: a table per code
                x = self.graph.tensors[gathered]
                y = self._define(node, out, shape, scale, zp, dtype)
                self.graph.nodes.append(Lookup(node.name, "Gather→QuantizeLinear", [gathered], out,
                                               table=chain_table([], x, y)))
        self._layout_op(node, make)

    def _embedding(self, node, attrs, table, ids):
        if attrs.get("axis", 0) != 0:
            raise node_error(node, f"attribute axis={attrs['axis']}: an embedding Gathers rows (axis 0)")
        if not isinstance(table, _Const) or table.values.ndim != 2 or table.values.dtype not in _QTYPES:
            raise node_error(node, f"the table {node.input[0]!r} must be a constant int8/uint8 matrix (a quantized "
                                   f"embedding table)")
        if table.scale is not None:  # QDQ: a DequantizeLinear of the table
            if np.asarray(table.scale).size != 1 or np.asarray(table.zero_point).size != 1:
                raise node_error(node, "the table must be quantized per tensor")
            scale, zp = np.float32(np.asarray(table.scale).reshape(())), int(np.asarray(table.zero_point).reshape(()))
        else:  # QOperator: the int8 table's scale and zero point follow the Gather's output where it is read
            scale, zp, _ = self._scalar_qparams(node, *self._read_qparams(node, node.output[0]), "table")
        rows = table.values.shape[0]
        existing = next((n for n in self.graph.nodes if isinstance(n, IdsInput) and n.output == ids.name), None)
        if existing is None:
            self.graph.nodes.append(IdsInput(ids.name, "Input", [ids.name], ids.name, shape=ids.shape, bound=rows))
        else:
            existing.bound = min(existing.bound, rows)
        y = self._define(node, node.output[0], ids.shape + table.values.shape[1:], scale, zp,
                         _QTYPES[table.values.dtype])
        self.graph.nodes.append(Embedding(node.name, node.op_type, [ids.name], y.name, table=table.values))
        if table.scale is not None:
            self.values[node.output[0]] = _FloatView(y)

    def _read_qparams(self, node, name):
        """The (scale, zero point) input names with which the first reader of ``name`` reads it: QOperator
        nodes and DequantizeLinear take ``(x, x_scale, x_zero_point)`` side by side; layout operators
        (Unsqueeze, Reshape, ...) pass the question on to their own reader."""
        for reader in self.nodes:
            if name in reader.input:
                position = list(reader.input).index(name)
                if len(reader.input) > position + 2 and (reader.op_type.startswith(("QLinear", "QGemm"))
                                                         or reader.op_type == "DequantizeLinear"):
                    return reader.input[position + 1], reader.input[position + 2]
                if reader.op_type in _LAYOUT_OPS and position == 0:
                    return self._read_qparams(node, reader.output[0])
                break
        raise node_error(node, f"no quantized reader of {name!r} says its scale and zero point")

    @staticmethod
    def _reshaped(node, shape, target, attrs):
        """ONNX Reshape's output shape (0 copies a dimension unless allowzero, -1 is inferred)."""
        if attrs.get("allowzero", 0):
            raise node_error(node, "attribute allowzero=1 is not supported")
        if any(d == 0 and i >= len(shape) for i, d in enumerate(target)):
            raise node_error(node, f"shape {target} copies (0) a dimension past the input's rank {len(shape)}")
        dims = [shape[i] if d == 0 else d for i, d in enumerate(target)]
        if dims.count(-1) > 1:
            raise node_error(node, f"shape {target} has more than one -1")
        total, known = int(np.prod(shape)), int(np.prod([d for d in dims if d != -1]))
        dims = [total // known if d == -1 else d for d in dims]
        if int(np.prod(dims)) != total or dims[0] != shape[0]:
            raise node_error(node, f"shape {target} does not fit {list(shape)} with the batch first")
        return tuple(dims)

    def _flatten(self, node):
        def make(q, source, out, scale, zp, dtype):
            if (np.float32(scale), zp, dtype) != (source.scale, source.zero_point, source.dtype):
                raise node_error(node, "a Flatten/Reshape must keep its input's quantization")
            self._emit_flatten(node, source, out)
        self._layout_op(node, make)

    def _emit_flatten(self, node, source, out):
        shape = (source.shape[0], int(np.prod(source.shape[1:])))
        self._define(node, out, shape, source.scale, source.zero_point, source.dtype)
        self.graph.nodes.append(Flatten(node.name, node.op_type, [source.name], out))

    # --- unary operators as tables -------------------------------------------------------------

    def _unary(self, node, attrs):
        """A float unary operator of a QDQ model, or the next one of a chain of them (GELU's ``Div →
        Erf``): a function of one int8 input code, so a table once the QuantizeLinear is seen."""
        source = self.values.get(node.input[0])
        if isinstance(source, _Pending) and source.function is not None:
            x, chain = source.function
        else:
            x, chain = self._view(node, node.input[0]), []
        constants = [(name, self._float_const(node, name, "input") if isinstance(self.values.get(name), _Const)
                      and self.values[name].scale is not None else self._const(node, name, "input"))
                     for name in node.input[1:] if name]
        chain = chain + [(node.op_type, attrs, constants)]
        op = "→".join(op_type for op_type, _, _ in chain)

        def make(q, out, scale, zp, dtype):
            y = self._define(node, out, x.shape, scale, zp, dtype)
            table = chain_table(chain, x, y)
            self.graph.nodes.append(Lookup(node.name, op, [x.name], out, table=table))
        self.values[node.output[0]] = _Pending(node, make, (x, chain))

    def _qlinear_unary(self, node, attrs):
        x = self._qtensor(node, node.input[0])
        self._check_input_qparams(node, x, node.input[1], node.input[2])
        scale, zp, dtype = self._scalar_qparams(node, node.input[3], node.input[4] if len(node.input) > 4 else "",
                                                "output")
        y = self._define(node, node.output[0], x.shape, scale, zp, dtype)
        table = unary_table(node.op_type, attrs, x, y)
        self.graph.nodes.append(Lookup(node.name, node.op_type, [x.name], y.name, table=table))

    # --- Add and Mul (both formats) -------------------------------------------------------------

    def _op_QLinearAdd(self, node, attrs):
        self._qlinear_binary(node, "add")

    def _op_QLinearMul(self, node, attrs):
        self._qlinear_binary(node, "mul")

    def _qlinear_binary(self, node, kind):
        operands = []
        for data, scale_name, zp_name in (node.input[0:3], node.input[3:6]):
            value = self.values.get(data)
            if isinstance(value, QTensor):
                self._check_input_qparams(node, value, scale_name, zp_name)
                operands.append(value)
            elif isinstance(value, _Const):
                values = value.values
                scale, zp, _ = self._scalar_qparams(node, scale_name, zp_name, "constant input")
                operands.append(_Const(values, np.float32(scale), np.asarray(zp, values.dtype)))
            else:
                raise node_error(node, f"input {data!r} is neither a quantized activation nor a constant initializer")
        y_scale, y_zp, y_dtype = self._scalar_qparams(node, node.input[6], node.input[7] if len(node.input) > 7
                                                      else "", "output")
        self._binary(node, kind, *operands, node.output[0], y_scale, y_zp, y_dtype)

    def _op_Add(self, node, attrs):
        self._qdq_binary(node, attrs, "add")

    def _op_Mul(self, node, attrs):
        self._qdq_binary(node, attrs, "mul")

    def _op_Sub(self, node, attrs):
        self._float_constant_binary(node, attrs, [self.values.get(name) for name in node.input])

    def _op_Div(self, node, attrs):
        self._float_constant_binary(node, attrs, [self.values.get(name) for name in node.input])

    def _qdq_binary(self, node, attrs, kind):
        values = [self.values.get(name) for name in node.input]
        if any(isinstance(v, _Const) and v.scale is None for v in values):
            return self._float_constant_binary(node, attrs, values)
        operands = []
        for name, value in zip(node.input, values):
            if isinstance(value, _FloatView):
                operands.append(value.tensor)
            elif isinstance(value, _Const):
                operands.append(value)
            else:
                raise node_error(node, f"input {name!r} must come from a DequantizeLinear (a QDQ model)")
        self._pend(node, lambda q, out, s, zp, dt: self._binary(q, kind, *operands, out, s, zp, dt))

    def _float_constant_binary(self, node, attrs, values):
        """``DequantizeLinear → Add/Mul(float scalar) → QuantizeLinear``: onnxruntime computes it in float,
        a function of the one input code, so it becomes a table like the unary operators."""
        if [isinstance(v, (_FloatView, _Pending)) for v in values].count(True) != 1:
            raise node_error(node, "needs one quantized activation and one float constant")
        constant = next(v for v in values if isinstance(v, _Const))
        if constant.scale is not None:
            raise node_error(node, "only a float constant operand is supported (onnxruntime has no quantized "
                                   f"{node.op_type})")
        if constant.values.size != 1:
            raise node_error(node, f"a float constant of shape {list(constant.values.shape)} (not a scalar) is "
                                   f"computed in float per element by onnxruntime; quantize it (QDQ) instead")
        if isinstance(values[0], _Const):
            if node.op_type not in ("Add", "Mul"):
                raise node_error(node, "a constant first operand is only supported for Add and Mul")
            swapped = onnx.NodeProto()
            swapped.CopyFrom(node)
            swapped.input[:] = list(reversed(node.input))
            node = swapped
        self._unary(node, attrs)

    def _binary(self, node, kind, a, b, out, y_scale, y_zp, y_dtype):
        if isinstance(a, _Const):
            a, b = b, a
        if not isinstance(a, QTensor):
            raise node_error(node, "both inputs are constants; fold them before compiling")
        constant = axis = matrix = quant = None
        if isinstance(b, _Const):
            values = np.asarray(b.values)
            if values.dtype not in _QTYPES:
                raise node_error(node, f"a constant input of type {values.dtype}; int8 or uint8 only")
            if np.asarray(b.scale).size != 1 or np.asarray(b.zero_point).size != 1:
                raise node_error(node, "a constant input must be quantized per tensor")
            b_dtype = _QTYPES[values.dtype]
            quant = (np.float32(np.asarray(b.scale).reshape(())), int(np.asarray(b.zero_point).reshape(())), b_dtype)
            matrix = self._matrix_constant(a, values)
            if matrix is None:
                constant, axis = self._channel_constant(node, a, values)
            inputs = [a.name]
        else:
            if b.shape != a.shape:
                raise node_error(node, f"inputs of shapes {list(a.shape)} and {list(b.shape)}: broadcasting between "
                                       f"two activations is not supported")
            b_dtype, inputs = b.dtype, [a.name, b.name]
        if not a.dtype == b_dtype == y_dtype:
            raise node_error(node, f"inputs and output of types {a.dtype}, {b_dtype} and {y_dtype}: onnxruntime "
                                   f"computes mixed types in float; one type only")
        self._define(node, out, a.shape, y_scale, y_zp, y_dtype)
        self.graph.nodes.append(Elementwise(node.name, node.op_type, inputs, out, kind=kind, constant=constant,
                                            constant_axis=axis, constant_quant=quant, constant_matrix=matrix))

    @staticmethod
    def _matrix_constant(a, values):
        """A constant over the last k ≥ 2 axes of a rank-3/4 ``a`` as ``[period, features]`` codes, else
        ``None`` (the lowering accepts it only for sequences, not NCHW images)."""
        shape = values.shape
        while shape and shape[0] == 1:
            shape = shape[1:]
        if len(a.shape) < 3 or len(shape) < 2 or tuple(a.shape[-len(shape):]) != shape:
            return None
        return values.reshape(-1, shape[-1])

    @staticmethod
    def _channel_constant(node, a, values):
        """A constant as ``(codes, axis)``: one code (``axis`` None) or one per index of axis 1 of a
        rank-4 ``a`` or of its last axis (the lowering checks the axis against the layout)."""
        if values.size == 1:
            return values.reshape(1), None
        rank = len(a.shape)
        for axis in ((1, -1) if rank == 4 else (-1,)):
            count = a.shape[axis]
            expected = [1] * rank
            expected[axis] = count
            squeezed = list(values.shape)
            while len(squeezed) < rank:
                squeezed.insert(0, 1)
            if squeezed == expected:
                return values.reshape(count), axis
        raise node_error(node, f"a constant of shape {list(values.shape)} does not broadcast along one axis of an "
                               f"input of shape {list(a.shape)} (a scalar, one value per channel, or per feature of "
                               f"the last axis)")

    # --- Softmax and LayerNormalization ----------------------------------------------------------

    def _op_Softmax(self, node, attrs):
        x = self._view(node, node.input[0])
        self._check_last_axis(node, attrs.get("axis", -1), x)
        self._pend(node, lambda q, out, s, zp, dt: self._softmax(q, x, out, s, zp, dt))

    def _op_QLinearSoftmax(self, node, attrs):
        x = self._qtensor(node, node.input[0])
        self._check_input_qparams(node, x, node.input[1], node.input[2] if len(node.input) > 2 else "")
        self._check_last_axis(node, attrs.get("axis", -1), x)
        y_scale, y_zp, y_dtype = self._scalar_qparams(node, node.input[3], node.input[4] if len(node.input) > 4
                                                      else "", "output")
        self._softmax(node, x, node.output[0], y_scale, y_zp, y_dtype)

    def _softmax(self, node, x, out, y_scale, y_zp, y_dtype):
        self._define(node, out, x.shape, y_scale, y_zp, y_dtype)
        self.graph.nodes.append(Softmax(node.name, node.op_type, [x.name], out))

    def _op_LayerNormalization(self, node, attrs):
        x = self._view(node, node.input[0])
        self._check_last_axis(node, attrs.get("axis", -1), x)
        if attrs.get("stash_type", 1) != 1 or len(node.output) > 1:
            raise node_error(node, "only the normalised output, computed in float32 (stash_type=1), is supported")
        features = x.shape[-1]
        gamma = self._float_const(node, node.input[1], "scale")
        beta = (self._float_const(node, node.input[2], "bias") if len(node.input) > 2 and node.input[2]
                else np.zeros(features, np.float32))
        if gamma.size != features or beta.size != features:
            raise node_error(node, f"scale and bias must have {features} values (one per feature)")

        def make(q, out, scale, zp, dtype):
            self._define(node, out, x.shape, scale, zp, dtype)
            self.graph.nodes.append(LayerNorm(node.name, node.op_type, [x.name], out, gamma=gamma.reshape(-1),
                                              beta=beta.reshape(-1), epsilon=float(attrs.get("epsilon", 1e-5))))
        self._pend(node, make)

    @staticmethod
    def _check_last_axis(node, axis, x):
        if axis not in (-1, len(x.shape) - 1):
            raise node_error(node, f"attribute axis={axis} is not supported (only the last axis)")

    # --- pooling -------------------------------------------------------------------------------

    def _op_MaxPool(self, node, attrs):
        for name, allowed in (("dilations", [1, 1]), ("ceil_mode", 0), ("storage_order", 0)):
            if name in attrs and attrs[name] != allowed:
                raise node_error(node, f"attribute {name}={attrs[name]} is not supported (only {allowed})")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise node_error(node, f"attribute auto_pad={attrs['auto_pad']!r} is not supported (give pads)")
        if len(node.output) > 1:
            raise node_error(node, "the Indices output is not supported")

        def make(q, source, out, scale, zp, dtype):
            if (np.float32(scale), zp, dtype) != (source.scale, source.zero_point, source.dtype):
                raise node_error(node, "a MaxPool must keep its input's quantization")
            kh, kw = attrs["kernel_shape"]
            stride = tuple(attrs.get("strides", (1, 1)))
            top, left, bottom, right = attrs.get("pads", (0, 0, 0, 0))
            n, c, h, w = source.shape
            shape = (n, c, (h + top + bottom - kh) // stride[0] + 1, (w + left + right - kw) // stride[1] + 1)
            self._define(node, out, shape, scale, zp, dtype)
            self.graph.nodes.append(MaxPool(node.name, node.op_type, [source.name], out, kernel=(kh, kw),
                                            stride=stride, pads=(top, left, bottom, right)))
        self._layout_op(node, make)

    def _op_ReduceMean(self, node, attrs):
        self._reduce_sequence(node, attrs, mean=True)

    def _op_ReduceSum(self, node, attrs):
        self._reduce_sequence(node, attrs, mean=False)

    def _reduce_sequence(self, node, attrs, mean):
        x = self._view(node, node.input[0])
        axes = attrs.get("axes") if len(node.input) < 2 or not node.input[1] else \
            self._const(node, node.input[1], "axes")
        if axes is None or len(x.shape) != 3 or [int(a) % 3 for a in axes] != [1]:
            raise node_error(node, f"attribute axes={None if axes is None else list(axes)}: only the sequence axis "
                                   f"(1) of [N, S, F] is supported (input shape {list(x.shape)})")
        if attrs.get("noop_with_empty_axes", 0):
            raise node_error(node, "attribute noop_with_empty_axes=1 is not supported")
        n, s, f = x.shape
        shape = (n, 1, f) if attrs.get("keepdims", 1) else (n, f)

        def make(q, out, y_scale, y_zp, y_dtype):
            divisor = np.float32(y_scale) * np.float32(s) if mean else np.float32(y_scale)
            self._define(node, out, shape, y_scale, y_zp, y_dtype)
            self.graph.nodes.append(SequenceReduce(node.name, node.op_type, [x.name], out,
                                                   scale=np.float32(np.float32(x.scale) / divisor)))
        self._pend(node, make, shape)

    def _op_GlobalAveragePool(self, node, attrs):
        x = self._view(node, node.input[0])
        self._pend(node, lambda q, out, s, zp, dt: self._global_average(node, x, out, s, zp, dt))

    def _op_QLinearGlobalAveragePool(self, node, attrs):
        if attrs.get("channels_last", 0):
            raise node_error(node, "attribute channels_last=1 is not supported (NCHW only)")
        x = self._qtensor(node, node.input[0])
        self._check_input_qparams(node, x, node.input[1], node.input[2])
        y_scale, y_zp, y_dtype = self._scalar_qparams(node, node.input[3], node.input[4], "output")
        self._global_average(node, x, node.output[0], y_scale, y_zp, y_dtype)

    def _global_average(self, node, x, out, y_scale, y_zp, y_dtype):
        if len(x.shape) != 4:
            raise node_error(node, f"a global average pool needs NCHW input, got shape {x.shape}")
        n, c, h, w = x.shape
        scale = np.float32(x.scale) / (np.float32(y_scale) * np.float32(h * w))
        self._define(node, out, (n, c, 1, 1), y_scale, y_zp, y_dtype)
        self.graph.nodes.append(GlobalAveragePool(node.name, node.op_type, [x.name], out, scale=np.float32(scale)))

    def _layout_op(self, node, make):
        """An operator that keeps its input's quantization, in either format: applied now to an
        int8 tensor (QOperator), or once its QuantizeLinear is seen (QDQ, or a float operator such
        as ReduceMean whose output only the QuantizeLinear after this one quantizes)."""
        source = self.values.get(node.input[0])
        if isinstance(source, QTensor):
            make(node, source, node.output[0], source.scale, source.zero_point, source.dtype)
        elif isinstance(source, _FloatView):
            self.values[node.output[0]] = _Pending(node, lambda q, out, s, zp, dt: make(q, source.tensor, out, s, zp,
                                                                                           dt))
        elif isinstance(source, _Pending) and source.function is None:
            def chained(q, out, s, zp, dt):
                source.make(q, node.input[0], s, zp, dt)  # the float operator, quantized as this one's output
                make(q, self.graph.tensors[node.input[0]], out, s, zp, dt)
            self.values[node.output[0]] = _Pending(node, chained)
        else:
            raise node_error(node, f"input {node.input[0]!r} is not a quantized activation")

    # --- the linear operators ------------------------------------------------------------------

    def _check_input_qparams(self, node, x, scale_name, zp_name):
        scale, zp, dtype = self._scalar_qparams(node, scale_name, zp_name, "input")
        if (scale, zp, dtype) != (x.scale, x.zero_point, x.dtype):
            raise node_error(node, f"input {x.name!r} is read with other quantization parameters than it "
                                   f"was written with")

    def _weights(self, node, w_name, scale_name, zp_name, axis=0):
        w = self._const(node, w_name, "weight")
        scale = self._const(node, scale_name, "weight scale")
        zp = self._const(node, zp_name, "weight zero point")
        return self._check_weights(node, w, scale, zp, axis)

    def _check_weights(self, node, w, scale, zp, axis):
        if w.dtype != np.int8:
            raise node_error(node, f"weights have type {w.dtype}; int8 only")
        if np.any(np.asarray(zp) != 0):
            raise node_error(node, "attribute w_zero_point: only symmetric weights (zero point 0) are "
                                   "supported, as onnxruntime's quantizer writes them")
        scale = np.asarray(scale, dtype=np.float32)
        channels = w.shape[axis]
        if scale.size not in (1, channels):
            raise node_error(node, f"weight scale has {scale.size} values for {channels} output channels")
        return w, np.broadcast_to(scale.reshape(-1), (channels,)).astype(np.float32)

    @staticmethod
    def _check_gemm_attributes(node, attrs):
        for name, allowed in (("alpha", 1.0), ("beta", 1.0)):
            if attrs.get(name, allowed) != allowed:
                raise node_error(node, f"attribute {name}={attrs[name]} is not supported (only {allowed})")

    def _transposed_a(self, node, attrs, x):
        """A Gemm's ``A`` (``transA=1``: ``x`` transposed on a VE first, same quantization)."""
        if not attrs.get("transA", 0):
            return x
        if len(x.shape) != 2:
            raise node_error(node, f"attribute transA=1 needs a 2-D input, got shape {list(x.shape)}")
        transposed = self._define(node, f"{node.output[0]}/Aᵀ", x.shape[::-1], x.scale, x.zero_point, x.dtype)
        self.graph.nodes.append(MatrixTranspose(node.name, "Transpose", [x.name], transposed.name, perm=(1, 0)))
        return transposed

    def _requant_scale(self, x, w_scale, y_scale):
        """onnxruntime's order: ``fl(fl(x_scale · w_scale) / y_scale)`` in float32."""
        return (np.float32(x.scale) * w_scale).astype(np.float32) / np.float32(y_scale)

    def _conv(self, node, attrs, x, w, w_scale, bias, out, y_scale, y_zp, y_dtype):
        if len(x.shape) != 4 or w.ndim != 4:
            raise node_error(node, f"a 2-D convolution needs NCHW input, got shape {x.shape}")
        group = attrs.get("group", 1)
        depthwise = group > 1 and group == x.shape[1] == w.shape[0] and w.shape[1] == 1
        if group != 1 and not depthwise:
            raise node_error(node, f"attribute group={group} is not supported (1, or depthwise: one filter per "
                                   f"input channel)")
        if any(d != 1 for d in attrs.get("dilations", (1, 1))):
            raise node_error(node, f"attribute dilations={attrs['dilations']} is not supported (only 1)")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise node_error(node, f"attribute auto_pad={attrs['auto_pad']!r} is not supported (give pads)")
        o, c, kh, kw = w.shape
        if c * group != x.shape[1]:
            raise node_error(node, f"weights expect {c} input channels, the input has {x.shape[1]}")
        stride = tuple(attrs.get("strides", (1, 1)))
        top, left, bottom, right = attrs.get("pads", (0, 0, 0, 0))
        oh = (x.shape[2] + top + bottom - kh) // stride[0] + 1
        ow = (x.shape[3] + left + right - kw) // stride[1] + 1
        self._define(node, out, (x.shape[0], o, oh, ow), y_scale, y_zp, y_dtype)
        kind = DepthwiseConv if depthwise else Linear
        self.graph.nodes.append(kind(node.name, node.op_type, [x.name], out, weight=w,
                                       bias=np.zeros(o, np.int32) if bias is None else bias.astype(np.int32),
                                       scale=self._requant_scale(x, w_scale, y_scale), kernel=(kh, kw),
                                       stride=stride, pads=(top, left, bottom, right)))

    def _matmul(self, node, x, w, w_scale, bias, out, y_scale, y_zp, y_dtype):
        if len(x.shape) not in (2, 3) or w.ndim != 2 or w.shape[0] != x.shape[-1]:
            raise node_error(node, f"a matrix product of {x.shape} and weights {w.shape} is not supported "
                                   f"(activations [N, K] or [N, S, K] times constant weights [K, M])")
        n = w.shape[1]
        self._define(node, out, x.shape[:-1] + (n,), y_scale, y_zp, y_dtype)
        self.graph.nodes.append(Linear(node.name, node.op_type, [x.name], out, weight=np.ascontiguousarray(w),
                                       bias=np.zeros(n, np.int32) if bias is None else bias.astype(np.int32),
                                       scale=self._requant_scale(x, w_scale, y_scale)))

    def _activation_matmul(self, node, a, b, out, y_scale, y_zp, y_dtype):
        if len(a.shape) != len(b.shape) or len(a.shape) not in (2, 3, 4) or a.shape[:-2] != b.shape[:-2] \
                or a.shape[-1] != b.shape[-2]:
            raise node_error(node, f"a matrix product of activations of shapes {list(a.shape)} and {list(b.shape)} "
                                   f"is not supported (equal leading dimensions, [.., M, K] × [.., K, N])")
        if not a.dtype == b.dtype == y_dtype:
            raise node_error(node, f"inputs and output of types {a.dtype}, {b.dtype} and {y_dtype}; one type only")
        self._define(node, out, a.shape[:-1] + b.shape[-1:], y_scale, y_zp, y_dtype)
        scale = self._requant_scale(a, np.float32(b.scale), y_scale)
        self.graph.nodes.append(ActivationMatMul(node.name, node.op_type, [a.name, b.name], out, scale=scale))

    # --- Concat, AveragePool, Transpose ----------------------------------------------------------

    def _op_Concat(self, node, attrs):
        inputs = [self._view(node, name) for name in node.input]
        self._pend(node, lambda q, out, s, zp, dt: self._concat(node, attrs, inputs, out, s, zp, dt, qdq=True))

    def _op_QLinearConcat(self, node, attrs):
        if len(node.input) < 5 or (len(node.input) - 2) % 3:
            raise node_error(node, f"has {len(node.input)} inputs; expected y_scale, y_zero_point and a (tensor, "
                                   f"scale, zero point) triple per input")
        y_scale, y_zp, y_dtype = self._scalar_qparams(node, node.input[0], node.input[1], "output")
        inputs = []
        for index in range(2, len(node.input), 3):
            x = self._qtensor(node, node.input[index])
            self._check_input_qparams(node, x, node.input[index + 1], node.input[index + 2])
            inputs.append(x)
        self._concat(node, attrs, inputs, node.output[0], y_scale, y_zp, y_dtype, qdq=False)

    def _concat(self, node, attrs, inputs, out, y_scale, y_zp, y_dtype, qdq):
        rank = len(inputs[0].shape)
        axis = attrs.get("axis", 1) % rank
        if rank not in (2, 3, 4) or axis == 0 or (rank == 4 and axis != 1):
            raise node_error(node, f"attribute axis={attrs.get('axis', 1)} is not supported for rank-{rank} tensors "
                                   f"(the channels of NCHW, the features of [N, F], either axis of [N, S, F])")
        for x in inputs:
            if len(x.shape) != rank or x.shape[:axis] + x.shape[axis + 1:] != \
                    inputs[0].shape[:axis] + inputs[0].shape[axis + 1:]:
                raise node_error(node, f"input {x.name!r} of shape {x.shape} does not match {inputs[0].shape} "
                                       f"outside axis {axis}")
        shape = list(inputs[0].shape)
        shape[axis] = sum(x.shape[axis] for x in inputs)
        shape = tuple(shape)
        y = self._define(node, out, shape, y_scale, y_zp, y_dtype)
        self.graph.nodes.append(Concat(node.name, node.op_type, [x.name for x in inputs], out,
                                       tables=concat_tables(inputs, y, qdq), axis=axis))

    def _op_AveragePool(self, node, attrs):
        x = self._view(node, node.input[0])
        self._pend(node, lambda q, out, s, zp, dt: self._average_pool(node, attrs, x, out, s, zp, dt))

    def _op_QLinearAveragePool(self, node, attrs):
        if attrs.get("channels_last", 0):
            raise node_error(node, "attribute channels_last=1 is not supported (NCHW only)")
        x = self._qtensor(node, node.input[0])
        self._check_input_qparams(node, x, node.input[1], node.input[2] if len(node.input) > 2 else "")
        y_scale, y_zp, y_dtype = self._scalar_qparams(node, node.input[3], node.input[4] if len(node.input) > 4
                                                      else "", "output")
        self._average_pool(node, attrs, x, node.output[0], y_scale, y_zp, y_dtype)

    def _average_pool(self, node, attrs, x, out, y_scale, y_zp, y_dtype):
        if len(x.shape) != 4 or len(attrs.get("kernel_shape", ())) != 2:
            raise node_error(node, f"only 2-D average pooling of NCHW tensors is supported, got input shape "
                                   f"{x.shape} and kernel_shape={attrs.get('kernel_shape')}")
        for name, allowed in (("dilations", [1, 1]), ("ceil_mode", 0)):
            if name in attrs and attrs[name] != allowed:
                raise node_error(node, f"attribute {name}={attrs[name]} is not supported (only {allowed})")
        if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise node_error(node, f"attribute auto_pad={attrs['auto_pad']!r} is not supported (give pads)")
        kernel = tuple(attrs["kernel_shape"])
        stride = tuple(attrs.get("strides", (1, 1)))
        pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
        n, c, h, w = x.shape
        if kernel == (h, w) and not any(pads):
            return self._global_average(node, x, out, y_scale, y_zp, y_dtype)  # onnxruntime's kernel does too
        ratio = np.float32(x.scale) / np.float32(y_scale)
        if not all(2.0 ** -40 <= s <= 2.0 ** 40 for s in (x.scale, y_scale)) or ratio > 2.0 ** 22:
            raise node_error(node, f"scales x_scale={x.scale} and y_scale={y_scale} are outside the range where the "
                                   f"vector engine's binary32 arithmetic matches onnxruntime's (2^-40 .. 2^40, "
                                   f"x_scale / y_scale ≤ 2^22)")
        shape = (n, c, (h + pads[0] + pads[2] - kernel[0]) // stride[0] + 1,
                 (w + pads[1] + pads[3] - kernel[1]) // stride[1] + 1)
        self._define(node, out, shape, y_scale, y_zp, y_dtype)
        self.graph.nodes.append(AveragePool(node.name, node.op_type, [x.name], out, kernel=kernel, stride=stride,
                                            pads=pads, count_include_pad=bool(attrs.get("count_include_pad", 0))))

    def _op_Transpose(self, node, attrs):
        def make(q, source, out, scale, zp, dtype):
            if (np.float32(scale), zp, dtype) != (source.scale, source.zero_point, source.dtype):
                raise node_error(node, "a Transpose must keep its input's quantization")
            perm = tuple(attrs.get("perm", range(len(source.shape) - 1, -1, -1)))
            if sorted(perm) != list(range(len(source.shape))):
                raise node_error(node, f"attribute perm={list(perm)} is not a permutation of the {len(source.shape)} "
                                       f"axes")
            self._define(node, out, tuple(source.shape[i] for i in perm), scale, zp, dtype)
            kind = MatrixTranspose if perm == (1, 0) else Transpose
            self.graph.nodes.append(kind(node.name, node.op_type, [source.name], out, perm=perm))
        self._layout_op(node, make)


def _attributes(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
