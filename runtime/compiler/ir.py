"""The compiler's graph IR: quantized tensors and the operators between them, after QDQ folding.

Both formats onnxruntime's quantizer writes become the same graph: every activation inside it is
a :class:`QTensor` (int8 or uint8 with a scale and a zero point), every operator carries its
integer weights and the per-channel fp32 requantization scales onnxruntime's kernels use, and the
float world appears only at the edges (:class:`QuantizeInput`, :class:`DequantizeOutput`).
"""

from dataclasses import dataclass, field

import numpy as np

from tcloud.isa.errors import TcloudError
from tcloud.isa.table import UINT8_OFFSET


class CompileError(TcloudError, ValueError):
    """A model the compiler cannot lower; the message names the node, its op type and what is wrong."""


def node_error(node, message):
    """A :class:`CompileError` naming an ONNX node (``onnx.NodeProto``) or an IR :class:`Node`."""
    name = getattr(node, "name", "") or "(unnamed)"
    op = getattr(node, "op_type", None) or getattr(node, "op", "?")
    return CompileError(f"node {name!r} ({op}): {message}")


@dataclass(frozen=True)
class QTensor:
    """A quantized activation: ``real = scale · (q − zero_point)``.

    Attributes
    ----------
    name : str
    shape : tuple of int
        The ONNX shape (NCHW for images) with the batch size filled in.
    scale : numpy.float32
    zero_point : int
        In the tensor's own type (0..255 for ``uint8``).
    dtype : str
        ``"int8"`` or ``"uint8"``; the pNPU holds a ``uint8`` tensor as ``q − 128`` in int8.
    """

    name: str
    shape: tuple
    scale: np.float32
    zero_point: int
    dtype: str = "int8"

    @property
    def offset(self):
        """What the pNPU subtracts from a uint8 value to hold it as int8 (0 for int8)."""
        return UINT8_OFFSET if self.dtype == "uint8" else 0

    @property
    def device_zero_point(self):
        """The zero point of the int8 values the pNPU holds."""
        return self.zero_point - self.offset

    def same_quantization(self, other):
        return (self.scale, self.zero_point, self.dtype) == (other.scale, other.zero_point, other.dtype)


@dataclass
class Node:
    """An operator of the IR. ``name`` and ``op`` are the ONNX node's (for messages and layers)."""

    name: str
    op: str
    inputs: list
    output: str


@dataclass
class QuantizeInput(Node):
    """A float model input quantized on the host exactly as ``QuantizeLinear`` does."""


@dataclass
class DequantizeOutput(Node):
    """A model output dequantized on the host exactly as ``DequantizeLinear`` does (``float_output``
    is ``None`` when the model returns the int8/uint8 tensor itself)."""

    float_output: str = None


@dataclass
class IdsInput(Node):
    """An integer model input of row ids (the indices of embedding Gathers): the host checks that
    every id is in ``0 .. bound - 1`` (``bound``: rows of the smallest table it indexes) and writes
    them as int32."""

    shape: tuple = None
    bound: int = None


@dataclass
class Embedding(Node):
    """``y[..., :] = table[ids[...], :]``: rows of a constant int8/uint8 table gathered by
    ``dma.gather`` (``inputs`` holds the ids); the output keeps the table's quantization."""

    table: np.ndarray = None


@dataclass
class Linear(Node):
    """``y = requant(relu?(x ⊛ w + bias))`` with int32 accumulation: a convolution (``kernel`` set)
    or a matrix product.

    Attributes
    ----------
    weight : numpy.ndarray
        int8; ``[O, C, KH, KW]`` for a convolution, ``[K, N]`` for a matrix product.
    bias : numpy.ndarray
        int32 ``[O]`` (zeros when the model has none).
    scale : numpy.ndarray
        float32 ``[O]``: the requantization scale per output channel, computed as onnxruntime's
        kernel computes it.
    kernel, stride, pads : tuple or None
        Convolution geometry (``pads`` as ``(top, left, bottom, right)``).
    relu : bool
    """

    weight: np.ndarray = None
    bias: np.ndarray = None
    scale: np.ndarray = None
    kernel: tuple = None
    stride: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    relu: bool = False


@dataclass
class DepthwiseConv(Linear):
    """A convolution with one filter per channel (``group`` = channels): ``weight`` is
    ``[C, 1, KH, KW]``. It runs on the vector engines."""


@dataclass
class Lookup(Node):
    """A quantized unary operator as a 256-entry table of output codes (see :mod:`.tables`)."""

    table: np.ndarray = None


@dataclass
class ActivationMatMul(Node):
    """``y = requant(Σ_k (a − z_a)(b − z_b))`` of two activations ``a [..., M, K]`` and ``b [..., K, N]``
    with equal leading dimensions, as onnxruntime's ``QLinearMatMul`` (``scale`` =
    ``fl(fl(a_scale · b_scale) / y_scale)``); on the MEs (see :mod:`tcloud.firmware.matmul`)."""

    scale: np.float32 = None
    scratch: list = field(default_factory=list)
    """Names of the matrices the lowering transposes operands into (``<node>/<operand>ᵀ``)."""


@dataclass
class Reshape(Node):
    """A new shape over the same elements in the same order: no data moves (the layouts of
    sequences are views: see :func:`~.lower.view_terms`)."""

    shape: tuple = None


@dataclass
class GatherColumns(Node):
    """``y[:, j] = x[:, indices[j]]`` of an ``[N, F]`` activation (ONNX Gather on axis 1 with constant
    indices, e.g. DLRM's lower triangle of the interactions): no data moves, the consumer reads the
    producer's bytes through a feature map."""

    indices: tuple = None


@dataclass
class Softmax(Node):
    """Softmax over the last axis of an int8 tensor into int8 (onnxruntime computes it in float, as
    ``QLinearSoftmax`` or between a DequantizeLinear and a QuantizeLinear); on the vector engines
    with ``ve.fma``/``ve.fmav`` (see :mod:`tcloud.firmware.nonlinear`)."""


@dataclass
class LayerNorm(Node):
    """``LayerNormalization`` over the last axis (float in onnxruntime, between a DequantizeLinear and
    a QuantizeLinear), with float32 ``gamma`` and ``beta`` per feature."""

    gamma: np.ndarray = None
    beta: np.ndarray = None
    epsilon: float = 1e-5


@dataclass
class Elementwise(Node):
    """``y = a + b`` (``kind="add"``) or ``y = a · b`` (``"mul"``) of quantized tensors, as onnxruntime's
    ``QLinearAdd`` / ``QLinearMul`` compute them (see :mod:`tcloud.firmware.binary`).

    ``inputs`` holds ``a`` and, unless ``constant`` is set, ``b`` (same shape as ``a``).

    Attributes
    ----------
    kind : str
    constant : numpy.ndarray, optional
        ``b``'s codes when ``b`` is a constant along one axis of ``a`` (``constant_axis``: 1 for the
        channels of NCHW, -1 for the last axis), or a single code (``constant_axis`` None), in ``b``'s
        own type.
    constant_quant : tuple, optional
        ``(scale, zero_point, dtype)`` of the constant ``b``.
    """

    kind: str = "add"
    constant: np.ndarray = None
    constant_axis: int = None
    constant_quant: tuple = None
    constant_matrix: np.ndarray = None
    """``b``'s codes ``[period, features]`` when ``b`` is a constant over the last two or more axes of a
    sequence (row ``r`` of ``a``'s stored matrix meets row ``r mod period``); ``inputs`` holds ``a`` only."""


@dataclass
class MaxPool(Node):
    """Max over ``kernel`` windows of an int8 NCHW tensor (quantization unchanged)."""

    kernel: tuple = None
    stride: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)


@dataclass
class GlobalAveragePool(Node):
    """``[N, C, H, W] → [N, C, 1, 1]``: ``requant(Σx − z_x·H·W)`` with ``scale`` =
    ``fl(x_scale / fl(y_scale · H·W))``, as onnxruntime's ``QLinearGlobalAveragePool``."""

    scale: np.float32 = None


@dataclass
class SequenceReduce(GlobalAveragePool):
    """``[N, S, F] → [N, F]`` (or ``[N, 1, F]``): ``ReduceSum`` or ``ReduceMean`` over the sequence,
    ``requant(Σx − z_x·S)`` with ``scale`` = ``fl(x_scale / y_scale)`` (sum) or
    ``fl(x_scale / fl(y_scale · S))`` (mean). onnxruntime computes it in float; the integer sum is
    exact, so the result is within one step of it."""


@dataclass
class Flatten(Node):
    """``[N, C, H, W] → [N, C·H·W]`` (or a Reshape to that shape): no data moves; the consumer
    reads the producer's layout."""


@dataclass
class Graph:
    """A model after the front end: tensors, operators in execution order, and the edges.

    Attributes
    ----------
    tensors : dict
        Name → :class:`QTensor`.
    nodes : list of Node
    inputs : dict
        ONNX input name → its float shape (batch filled in), for the :class:`QuantizeInput` nodes.
    outputs : list of str
        ONNX output names in order.
    batch : int
    """

    tensors: dict = field(default_factory=dict)
    nodes: list = field(default_factory=list)
    inputs: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    batch: int = 1

    def consumers(self, name):
        return [n for n in self.nodes if name in n.inputs]


@dataclass
class Concat(Node):
    """Inputs joined along the channels of NCHW tensors or the features of ``[N, F]`` ones.

    Attributes
    ----------
    tables : list
        Per input: ``None`` when its codes are the output's (a copy), else the 256-entry table of
        :func:`~.tables.concat_tables` that maps them into the output's quantization.
    axis : int
        1, or 2 for the features of ``[N, S, F]`` (axis 1 of a rank-3 tensor joins rows).
    """

    tables: list = None
    axis: int = 1


@dataclass
class AveragePool(Node):
    """Average over ``kernel`` windows of an NCHW tensor, in onnxruntime's binary32 arithmetic
    (``QLinearAveragePool``; see :mod:`tcloud.firmware.avgpool`)."""

    kernel: tuple = None
    stride: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)
    count_include_pad: bool = False


@dataclass
class Transpose(Node):
    """A permutation of the axes that keeps the batch first: no data moves; the result is read as
    the producer's bytes with a feature map (only a Flatten may read a transposed NCHW tensor)."""

    perm: tuple = None


@dataclass
class MatrixTranspose(Transpose):
    """``[N, F] → [F, N]`` (``perm = (1, 0)``): the bytes move (see :mod:`tcloud.firmware.transpose`)."""
