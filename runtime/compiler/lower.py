"""Back end: the IR of :mod:`.ir` to one program image — layouts, memory plan, kernels.

Layouts
    A 4-D activation lives in HBM as :class:`~tcloud.firmware.conv.NHWC`: channels innermost and
    padded to a DMA word, with a border as wide as the largest padding any consumer convolution
    needs, holding the zero point (written once by a data segment; stores fill only the interior).
    A 2-D activation is a row-major ``[batch, features]`` matrix with rows padded to a DMA word. A
    Flatten moves no data: its output is the producer's bytes read as ``[batch, H·W·C]``, and the
    consumer's weight rows are permuted to that order at compile time. A Transpose that keeps the
    batch first moves no data either (a feature map, read by a Flatten); a Concat writes each input
    at its channel or feature offset of the output.
Memory plan
    HBM: constants (weights, folded biases, requantization parameters), then the activations, then
    the code. Activations whose lifetimes (first writer to last reader, in operator order) do not
    overlap share addresses, first fit; inputs, outputs and bordered tensors keep their own.
    Scratchpad: each operator is tiled to fit the budget (the vNPU's window), and operators run one
    after another (a ``fence`` between them), so they reuse the whole budget.
Kernels
    Every :class:`~.ir.Linear` is one :func:`~tcloud.firmware.gemm.emit_gemm`: a convolution reads
    its input through :class:`~tcloud.firmware.conv.Im2col` (gathered by the DMA) and writes NHWC;
    the bias, the input zero point (``−z_x · Σw``, folded into the bias), ReLU and the
    requantization run in the GEMM's epilogue on the vector engines. An
    :class:`~.ir.Elementwise` Add or Mul runs on the vector engines with onnxruntime's binary32
    arithmetic (:mod:`tcloud.firmware.binary`), reading both inputs in their own layouts.
"""

import json
from dataclasses import dataclass, field

import numpy as np

from tcloud.firmware import FirmwareError, ProgramBuilder
from tcloud.firmware.avgpool import avgpool_zero_points, emit_avgpool
from tcloud.firmware.binary import BinaryOperand, PeriodicMatrix, QLinearBinary, emit_binary
from tcloud.firmware.conv import NHWC, Im2col, padded_channels
from tcloud.firmware.depthwise import emit_depthwise
from tcloud.firmware.gather import EmbeddingTable, emit_gather
from tcloud.firmware.lookup import emit_lookup
from tcloud.firmware.nonlinear import LayerNormConstants, emit_layernorm, emit_softmax, onnxruntime_softmax_scale
from tcloud.firmware.matmul import int8_parts, zero_point_bias, zero_point_operands
from tcloud.firmware.pool import emit_maxpool
from tcloud.firmware.transpose import emit_transpose
from tcloud.firmware.gemm import DenseMatrix, ScaleRow, emit_gemm, plan_gemm, requantf_scale_words
from tcloud.isa import ProgramImage, Segment, Symbol, get_config
from tcloud.isa.errors import EncodingError
from tcloud.isa.table import INSTRUCTION_BYTES, UINT8_OFFSET, WORD_BYTES, FmaResult

from .ir import (ActivationMatMul, AveragePool, CompileError, Concat, DepthwiseConv, DequantizeOutput, Elementwise,
                 Embedding, Flatten, GatherColumns, GlobalAveragePool, IdsInput, LayerNorm, Linear, Lookup,
                 MatrixTranspose, MaxPool, QuantizeInput, Reshape, SequenceReduce, Softmax, Transpose, node_error)

_ALIGN = 64
METADATA_FORMAT = "tcloud-model/1"


def _up(value, multiple):
    return -(-value // multiple) * multiple


@dataclass
class Layout:
    """Where and how one activation lies in HBM.

    Attributes
    ----------
    kind : str
        ``"nhwc"``, ``"dense"`` or ``"ids"`` (int32 row ids, ``shape = (count,)``).
    shape : tuple
        ``(batch, height, width, padded channels)``, or the stored matrix ``(rows, padded columns)``
        (``[N, F]``: a row per sample; a sequence ``[N, S, F]``: a row per token), or ``(count,)``.
    border : tuple
        NHWC only: ``(top, left, bottom, right)`` pixels.
    feature_map : list of int, optional
        Dense only: physical column of each logical feature (``None``: the identity), for the
        output of a Flatten of an NHWC tensor, a Concat with padding, a Gather of features.
    hbm : int
        Context-relative address, set by the memory plan.
    alias_of : str, optional
        The tensor whose bytes these are (a Flatten, Reshape, Transpose or Gather of features).
    fill : str, optional
        NHWC with a border: ``"zero_point"`` (convolution padding) or ``"min"`` (max-pool padding).
    view : tuple, optional
        Dense sequences only: ``(row_terms, col_terms)`` (see below).
    """

    kind: str
    shape: tuple
    border: tuple = (0, 0, 0, 0)
    feature_map: list = None
    hbm: int = None
    alias_of: str = None
    fill: str = None
    view: tuple = None
    """Dense sequences only: ``(row_terms, col_terms)``, the physical row and byte column of logical
    element ``i`` being ``Σ i_j·row_terms[j]`` and ``Σ i_j·col_terms[j]`` (see :func:`view_terms`)."""

    @property
    def nhwc(self):
        b, h, w, c = self.shape
        return NHWC(self.hbm, b, h, w, c, tuple(self.border))

    @property
    def nbytes(self):
        if self.kind == "ids":
            return WORD_BYTES * self.shape[0]
        return self.nhwc.nbytes if self.kind == "nhwc" else self.shape[0] * self.shape[1]

    def symbol(self, name, kind):
        """The image symbol the host reads or writes: one row per pixel (NHWC) or per sample, or the
        int32 ids."""
        if self.kind == "ids":
            return Symbol(name, kind, "i32", self.shape, self.hbm, self.nbytes)
        if self.kind == "nhwc":
            b, h, w, c = self.shape
            rows = b * (h + self.border[0] + self.border[2]) * (w + self.border[1] + self.border[3])
            return Symbol(name, kind, "i8", (rows, c), self.hbm, c)
        return Symbol(name, kind, "i8", self.shape, self.hbm, self.shape[1])

    def describe(self):
        return {"kind": self.kind, "shape": list(self.shape), "border": list(self.border),
                "feature_map": self.feature_map}


@dataclass
class LayerReport:
    """What one operator became: shapes, GEMM, work and uTOps."""

    name: str
    op: str
    output_shape: tuple
    gemm: tuple = None
    macs: int = 0
    ve_elements: int = 0
    utops: dict = field(default_factory=dict)
    code: tuple = None
    sram_bytes: int = 0

    def to_dict(self):
        return {"name": self.name, "op": self.op, "output_shape": list(self.output_shape),
                "gemm": list(self.gemm) if self.gemm else None, "macs": self.macs, "ve_elements": self.ve_elements,
                "utops": self.utops, "code": list(self.code) if self.code else None, "sram_bytes": self.sram_bytes}


def lower(graph, config, *, sram_bytes=None, max_utop_cost=None):
    """Compile ``graph`` for ``config`` into a :class:`~tcloud.isa.ProgramImage`.

    Parameters
    ----------
    graph : Graph
    config : ArchConfig or str
    sram_bytes : int, optional
        Scratchpad budget (default: the whole scratchpad of ``config``).
    max_utop_cost : int, optional
        Largest declared cost of an ME uTOp (see :func:`~tcloud.firmware.plan_gemm`; default: no
        limit, for throughput).

    Returns
    -------
    tuple
        ``(image, layers)``; the image's metadata (JSON) says how to quantize the inputs and
        dequantize the outputs.

    Raises
    ------
    CompileError
        A tensor or operator that does not fit the configuration (naming it and the sizes).
    """
    cfg = get_config(config)
    budget = cfg.sram_bytes if sram_bytes is None else sram_bytes
    layouts = _layouts(graph)
    constants, const_bytes = _constants(graph, layouts, cfg)
    arena_end = _plan_memory(graph, layouts, const_bytes)
    prog = ProgramBuilder()
    layers, sram_peak = [], 0
    for node in graph.nodes:
        emit = _EMITTERS.get(type(node))
        if emit is None:
            continue
        start, first = prog.position, prog.instructions
        try:
            report = emit(prog, cfg, node, graph, layouts, constants.get(node.name), budget, max_utop_cost)
        except FirmwareError as exc:
            raise node_error(node, str(exc)) from None
        except EncodingError as exc:  # a kernel asked for what the ISA cannot encode: a compiler gap, named
            raise node_error(node, f"the kernel cannot be encoded ({exc}); please report the model") from None
        prog.fence()
        report.utops = prog.utop_classes(start)
        report.code = (first, prog.instructions)
        sram_peak = max(sram_peak, report.sram_bytes)
        layers.append(report)
    code_at = _up(arena_end, _ALIGN)
    try:
        code = prog.build(cfg)
    except FirmwareError as exc:
        raise CompileError(f"the program cannot be synchronised: {exc}") from None
    except EncodingError as exc:  # a kernel asked for what the ISA cannot encode: a compiler gap, named
        raise CompileError(f"the program cannot be encoded ({exc}); please report the model") from None
    hbm_bytes = _up(code_at + len(code), _ALIGN)
    if hbm_bytes > cfg.hbm_bytes:
        tensor, layout = max(((name, layout) for name, layout in layouts.items() if layout.alias_of is None),
                             key=lambda item: item[1].nbytes)
        node, key, array = max(((node, key, array) for node, entry in constants.items()
                                for key, (_, array) in entry.items()), key=lambda item: item[2].nbytes,
                               default=(None, None, np.zeros(0)))
        largest = f"the largest activation is {tensor!r} ({layout.nbytes} bytes)"
        if node is not None:
            largest += f", the largest constant the {key} of {node!r} ({array.nbytes} bytes)"
        raise CompileError(f"the model needs {hbm_bytes} bytes of HBM ({const_bytes} of constants, "
                           f"{arena_end - const_bytes} of activations, {len(code)} of code); config "
                           f"{cfg.name!r} has {cfg.hbm_bytes}; {largest}")
    for layer in layers:
        layer.code = tuple(code_at + INSTRUCTION_BYTES * i for i in layer.code)
    segments = [Segment(offset, data) for offset, data in _segments(graph, layouts, constants)]
    symbols = _symbols(graph, layouts)
    metadata = _metadata(graph, layouts, layers)
    sram_bytes = _up(max(sram_peak, WORD_BYTES), WORD_BYTES)
    image = ProgramImage.for_config(cfg, code, entry=code_at, hbm_bytes=hbm_bytes, sram_bytes=sram_bytes,
                                    segments=segments, symbols=symbols, metadata=json.dumps(metadata))
    return image, layers


def _layouts(graph):
    layouts = {}
    for node in graph.nodes:
        tensor = graph.tensors.get(node.output)
        if isinstance(node, Flatten):
            source = layouts[node.inputs[0]]
            if source.kind == "nhwc":
                if any(source.border):
                    raise node_error(node, "flattening a tensor that a padded convolution also reads is "
                                           "not supported")
                b, h, w, c = source.shape
                channels = graph.tensors[node.inputs[0]].shape[1]
                feature_map = [(y * w + x) * c + ch for ch in range(channels) for y in range(h) for x in range(w)]
                layouts[node.output] = Layout("dense", (b, h * w * c), feature_map=feature_map,
                                              alias_of=node.inputs[0])
            elif _is_sequence(graph, layouts, node.inputs[0]):
                shape = graph.tensors[node.inputs[0]].shape
                if source.view is not None and not _plain_view(shape, source):
                    raise node_error(node, f"flattening {node.inputs[0]!r}, a transposed or head-split view, is not "
                                           f"supported")
                rows, features = int(np.prod(shape[1:-1])), shape[-1]
                stride = source.shape[1]
                columns = source.feature_map or range(features)
                feature_map = [r * stride + f for r in range(rows) for f in columns]
                layouts[node.output] = Layout("dense", (source.shape[0] // rows, rows * stride),
                                              feature_map=None if feature_map == list(range(rows * stride)) else
                                              feature_map, alias_of=node.inputs[0])
            else:
                layouts[node.output] = Layout("dense", source.shape, feature_map=source.feature_map,
                                              alias_of=node.inputs[0])
        elif isinstance(node, Concat):
            layouts[node.output] = _concat_layout(node, graph, layouts)
        elif isinstance(node, IdsInput):
            layouts[node.output] = Layout("ids", (int(np.prod(node.shape)),))
        elif isinstance(node, Embedding):
            shape = tensor.shape
            layouts[node.output] = Layout("dense", (int(np.prod(shape[:-1])), _up(shape[-1], WORD_BYTES)),
                                          view=view_terms(shape) if len(shape) == 3 else None)
        elif isinstance(node, GatherColumns):
            source = layouts[node.inputs[0]]
            columns = source.feature_map or list(range(graph.tensors[node.inputs[0]].shape[1]))
            layouts[node.output] = Layout("dense", source.shape, feature_map=[columns[i] for i in node.indices],
                                          alias_of=node.inputs[0])
        elif isinstance(node, (Reshape, Transpose)) and not isinstance(node, MatrixTranspose) \
                and _is_sequence(graph, layouts, node.inputs[0], isinstance(node, Reshape)):
            layouts[node.output] = _view_layout(node, graph, layouts)
        elif isinstance(node, ActivationMatMul):
            layouts[node.output] = _matmul_output_layout(node, graph)
            _transposed_operands(node, graph, layouts)
        elif isinstance(node, Reshape):
            raise node_error(node, "a Reshape of an NCHW tensor is supported only as a Flatten ([batch, -1])")
        elif isinstance(node, Transpose):
            layouts[node.output] = _transpose_layout(node, graph, layouts)
        elif isinstance(node, AveragePool):
            n, c, h, w = tensor.shape
            layouts[node.output] = Layout("nhwc", (n, h, w, padded_channels(c)))
        elif isinstance(node, (Softmax, LayerNorm)):
            source = layouts[node.inputs[0]]
            if source.kind != "dense" or source.feature_map is not None:
                raise node_error(node, f"normalises the last axis of {node.inputs[0]!r}, which is not stored as "
                                       f"plain rows (an NCHW image or a tensor with a feature map)")
            layouts[node.output] = Layout("dense", source.shape)
        elif isinstance(node, (Lookup, Elementwise)) and layouts[node.inputs[0]].kind == "dense":
            source = layouts[node.inputs[0]]
            layouts[node.output] = Layout("dense", source.shape, feature_map=source.feature_map)
        elif isinstance(node, (QuantizeInput, Linear, MaxPool, GlobalAveragePool, Lookup, Elementwise)):
            shape = tensor.shape
            if len(shape) == 4:
                layouts[node.output] = Layout("nhwc", (shape[0], shape[2], shape[3], padded_channels(shape[1])))
            elif len(shape) in (2, 3):
                layouts[node.output] = Layout("dense", (int(np.prod(shape[:-1])), _up(shape[-1], WORD_BYTES)))
            else:
                raise node_error(node, f"tensors of rank {len(shape)} are not supported (2, 3 or 4)")
        elif not isinstance(node, DequantizeOutput):
            raise node_error(node, "the compiler reads this operator but cannot lower it to the pNPU yet")
        if isinstance(node, Elementwise):
            _check_elementwise_layouts(node, graph, layouts)
    for node in graph.nodes:
        padded = (isinstance(node, Linear) and node.kernel is not None) or isinstance(node, (MaxPool, AveragePool))
        if not padded:
            continue
        source = layouts[node.inputs[0]]
        if source.alias_of is not None or source.kind != "nhwc":
            raise node_error(node, "a convolution or pooling over a flattened tensor is not supported")
        if any(node.pads):
            fill = "min" if isinstance(node, MaxPool) else "zero_point"
            if source.fill not in (None, fill) and graph.tensors[node.inputs[0]].device_zero_point != -128:
                raise node_error(node, f"{node.inputs[0]!r} is read by a padded convolution and a padded max "
                                       f"pool, which need different borders (its zero point and -128)")
            source.fill = fill
        source.border = tuple(max(b, p) for b, p in zip(source.border, node.pads))
    for node in graph.nodes:
        if isinstance(node, (Reshape, Transpose, ActivationMatMul)):
            continue
        for name in node.inputs:
            layout = layouts.get(name)
            if layout is not None and layout.view is not None and not _plain_view(graph.tensors[name].shape, layout):
                raise node_error(node, f"reads {name!r}, a view of another tensor's elements in another order "
                                       f"(a transposed or head-split sequence); only matrix products read those")
        if isinstance(node, GlobalAveragePool) and any(layouts[node.inputs[0]].border):
            raise node_error(node, "a global average pool over a tensor that a padded operator also reads is not "
                                   "supported")
    return layouts


def _check_elementwise_layouts(node, graph, layouts):
    """Both inputs in the same layout; a constant along the axis the layout stores in its columns."""
    a = layouts[node.inputs[0]]
    if len(node.inputs) == 2:
        b = layouts[node.inputs[1]]
        if (a.kind, a.shape, a.feature_map, a.view) != (b.kind, b.shape, b.feature_map, b.view):
            raise node_error(node, f"inputs {node.inputs[0]!r} and {node.inputs[1]!r} lie in different "
                                   f"layouts ({a.describe()} and {b.describe()})")
    columns_axis = 1 if a.kind == "nhwc" else -1
    if node.constant_axis not in (None, columns_axis) or (node.constant_matrix is not None and a.kind == "nhwc"):
        raise node_error(node, f"a constant along axis {node.constant_axis if node.constant_matrix is None else -2} "
                               f"of {list(graph.tensors[node.inputs[0]].shape)}: the stored rows hold axis "
                               f"{columns_axis} of this tensor in their columns, and only a constant along that axis "
                               f"(or over the last axes of a sequence) is supported")


def view_terms(shape):
    """The plain view of a tensor stored as rows: all axes but the last make the row, row-major.

    Logical element ``i`` of a view lies in stored row ``Σ i_j·row_terms[j]`` and byte column
    ``Σ i_j·col_terms[j]``.

    Parameters
    ----------
    shape : tuple of int
        ``[d0, .., dk]``, stored as ``[d0·..·d(k-1), dk]``.

    Returns
    -------
    tuple
        ``(row_terms, col_terms)``.
    """
    row_terms = [int(np.prod(shape[j + 1:-1])) for j in range(len(shape) - 1)] + [0]
    return tuple(row_terms), tuple([0] * (len(shape) - 1) + [1])


def _is_sequence(graph, layouts, name, reshape=False):
    """Whether ``name`` is a matrix of rows whose Reshape/Transpose is a view: a sequence (rank 3 or
    a view), or for a Reshape any dense ``[N, F]`` without a feature map."""
    layout = layouts[name]
    shape = graph.tensors[name].shape
    if layout.kind != "dense" or layout.feature_map is not None:
        return False
    if layout.view is not None:
        return True
    rows_per_token = layout.shape[0] == int(np.prod(shape[:-1]))  # not an NCHW tensor flattened per sample
    return rows_per_token and (len(shape) >= 3 or reshape)


def _terms(graph, layouts, name):
    layout = layouts[name]
    return layout.view if layout.view is not None else view_terms(graph.tensors[name].shape)


def _plain_view(shape, layout):
    """Whether a view reads its stored matrix as the plain rows of ``shape`` (axes of size 1 aside)."""
    kept = [j for j, d in enumerate(shape) if d > 1]
    same = all(layout.view[k][j] == view_terms(shape)[k][j] for k in (0, 1) for j in kept)
    return same and layout.shape[0] == int(np.prod(shape[:-1]))


def _view_layout(node, graph, layouts):
    """A Reshape or Transpose of a sequence: the same bytes under new view terms."""
    source = layouts[node.inputs[0]]
    old_shape, new_shape = graph.tensors[node.inputs[0]].shape, graph.tensors[node.output].shape
    rows, cols = (np.asarray(t) for t in _terms(graph, layouts, node.inputs[0]))
    if isinstance(node, Transpose):
        perm = list(node.perm)
        return Layout("dense", source.shape, alias_of=node.inputs[0],
                      view=(tuple(int(t) for t in rows[perm]), tuple(int(t) for t in cols[perm])))
    terms = reshape_terms(old_shape, list(zip(rows.tolist(), cols.tolist())), new_shape)
    if terms is None:
        raise node_error(node, f"reshaping {list(old_shape)} to {list(new_shape)} mixes rows and columns of the "
                               f"stored matrix; not supported")
    return Layout("dense", source.shape, alias_of=node.inputs[0],
                  view=(tuple(r for r, _ in terms), tuple(c for _, c in terms)))


def reshape_terms(old_shape, old_terms, new_shape):
    """The view terms of a Reshape, exactly, or ``None`` when no affine view exists.

    A Reshape keeps the row-major order of the elements, so it splits and merges runs of axes: each
    run of old axes and the run of new axes with the same element count form a group. The old axes
    of a group (those longer than 1) must nest (each one's term the next one's times its length),
    so the group is one strided axis; the new axes of the group split that axis.

    Parameters
    ----------
    old_shape, new_shape : tuple of int
    old_terms : list of (int, int)
        ``(row term, column term)`` of each old axis.

    Returns
    -------
    list of (int, int) or None
    """
    new_terms, i, j = [], 0, 0
    while j < len(new_shape) or i < len(old_shape):
        group_old, group_new, count_old, count_new = [], [], 1, 1
        while True:
            if count_old <= count_new and i < len(old_shape) and (count_old < count_new or not group_old
                                                                  or old_shape[i] == 1):
                group_old.append(i)
                count_old *= old_shape[i]
                i += 1
            elif j < len(new_shape) and (count_new < count_old or not group_new or new_shape[j] == 1):
                group_new.append(j)
                count_new *= new_shape[j]
                j += 1
            else:
                break
        if count_old != count_new:
            return None
        long_axes = [a for a in group_old if old_shape[a] > 1]
        for outer, inner in zip(long_axes, long_axes[1:]):
            if old_terms[outer] != tuple(old_shape[inner] * t for t in old_terms[inner]):
                return None
        unit = old_terms[long_axes[-1]] if long_axes else (0, 0)
        for position, axis in enumerate(group_new):
            step = int(np.prod([new_shape[k] for k in group_new[position + 1:]]))
            new_terms.append((0, 0) if new_shape[axis] == 1 else (unit[0] * step, unit[1] * step))
    return new_terms if len(new_terms) == len(new_shape) else None


def _matmul_output_layout(node, graph):
    """Rows ``[.., M]`` × ``N`` columns; a rank-4 product whose only reader transposes the head and
    sequence axes (attention's ``P·V`` before the heads merge) is written head by head into the
    columns of a ``[batch·M, heads·N]`` matrix, so the transpose and the merge move no data."""
    shape = graph.tensors[node.output].shape
    readers = graph.consumers(node.output)
    if len(shape) == 4 and shape[-1] % WORD_BYTES == 0 and len(readers) == 1 \
            and isinstance(readers[0], Transpose) and tuple(readers[0].perm) == (0, 2, 1, 3):
        batch, heads, m, n = shape
        return Layout("dense", (batch * m, heads * n), view=((m, 0, 1, 0), (0, n, 0, 1)))
    return Layout("dense", (int(np.prod(shape[:-1])), _up(shape[-1], WORD_BYTES)), view=view_terms(shape))


def _orientation(terms):
    """``"normal"`` if the last two axes are rows and byte columns, ``"transposed"`` if the other way round."""
    rows, cols = terms
    if rows[-1] == 0 and cols[-1] == 1 and cols[-2] == 0 and rows[-2] > 0:
        return "normal"
    if rows[-2] == 0 and cols[-2] == 1 and cols[-1] == 0 and rows[-1] > 0:
        return "transposed"
    return None


def _transposed_operands(node, graph, layouts):
    """An operand stored the other way round (``Kᵀ`` of attention, ``Xᵀ`` of DLRM's interaction) is
    transposed block by block into a scratch matrix first, each block ``[K, N]`` on word-aligned rows;
    the scratch is registered as ``<node>/<operand>ᵀ`` with plain block-major terms."""
    for name in node.inputs + [node.output]:
        if layouts[name].feature_map is not None:
            raise node_error(node, f"operand {name!r} is read through a feature map (its stored columns include "
                                   f"padding or are reordered); a matrix product needs plain rows")
        rows, cols = _terms(graph, layouts, name)
        if any(term % WORD_BYTES for term in cols[:-2]):
            raise node_error(node, f"the blocks of {name!r} start at byte columns {list(cols[:-2])} × index, not "
                                   f"on {WORD_BYTES}-byte words (e.g. attention heads of a width that is not a "
                                   f"multiple of {WORD_BYTES})")
    for name in node.inputs:
        orientation = _orientation(_terms(graph, layouts, name))
        if orientation is None:
            raise node_error(node, f"operand {name!r} is a view whose last two axes are not the rows and columns "
                                   f"of a stored matrix")
        if orientation == "transposed":
            shape = graph.tensors[name].shape
            scratch = f"{node.name}/{name}ᵀ"
            layouts[scratch] = Layout("dense", (int(np.prod(shape[:-1])), _up(shape[-1], WORD_BYTES)),
                                      view=view_terms(shape))
            node.scratch.append(scratch)


def _concat_layout(node, graph, layouts):
    """NCHW inputs fill consecutive channels of the output's pixels, so each but the last must end on
    a DMA word; ``[N, F]`` inputs lie side by side with their padding, which the feature map skips."""
    sources = [layouts[name] for name in node.inputs]
    shape = graph.tensors[node.output].shape
    if len(shape) == 3 and node.axis == 1:  # [N, k_i, F] inputs: rows of each batch one after another
        for name, source in zip(node.inputs, sources):
            if source.feature_map is not None or (source.view is not None and
                                                  not _plain_view(graph.tensors[name].shape, source)):
                raise node_error(node, f"input {name!r} is a view or has a feature map; join stored rows only")
        return Layout("dense", (shape[0] * shape[1], _up(shape[2], WORD_BYTES)), view=view_terms(shape))
    if sources[0].kind == "nhwc" or len(graph.tensors[node.output].shape) == 4:
        offset = 0
        for name, source in zip(node.inputs, sources):
            channels = graph.tensors[name].shape[1]
            if source.kind != "nhwc":
                raise node_error(node, f"input {name!r} is not an NHWC activation (a flattened or transposed "
                                       f"tensor cannot be joined along channels)")
            if offset % WORD_BYTES:
                raise node_error(node, f"input {name!r} would start at output channel {offset}, which is not a "
                                       f"multiple of {WORD_BYTES} (the DMA moves whole {WORD_BYTES}-byte words); "
                                       f"channel counts {[graph.tensors[i].shape[1] for i in node.inputs]}")
            offset += channels
        n, c, h, w = graph.tensors[node.output].shape
        return Layout("nhwc", (n, h, w, padded_channels(c)))
    feature_map, width = [], 0
    for name, source in zip(node.inputs, sources):
        features = graph.tensors[name].shape[-1]
        columns = np.arange(features) if source.feature_map is None else np.asarray(source.feature_map)
        feature_map += [int(column) + width for column in columns]
        width += source.shape[1]
    identity = feature_map == list(range(len(feature_map)))
    return Layout("dense", (sources[0].shape[0], width), feature_map=None if identity else feature_map)


def _transpose_layout(node, graph, layouts):
    """A transpose that keeps the batch first is a new feature order over the producer's bytes."""
    perm, source = node.perm, layouts[node.inputs[0]]
    shape = graph.tensors[node.inputs[0]].shape
    if isinstance(node, MatrixTranspose):
        return Layout("dense", (shape[1], _up(shape[0], WORD_BYTES)))
    if perm[0] != 0:
        raise node_error(node, f"attribute perm={list(perm)} moves the batch axis of a rank-{len(perm)} tensor; "
                               f"only [N, F] → [F, N] (perm=[1, 0]) moves data")
    if len(perm) > 2 and any(not isinstance(c, Flatten) for c in graph.consumers(node.output)):
        raise node_error(node, f"attribute perm={list(perm)}: a transposed rank-{len(perm)} tensor is supported "
                               f"only when a Flatten (or a Reshape to [batch, -1]) reads it")
    if source.kind == "nhwc":
        if any(source.border):
            raise node_error(node, "transposing a tensor that a padded operator also reads is not supported")
        _, height, width, padded = source.shape
        c, y, x = np.meshgrid(np.arange(shape[1]), np.arange(height), np.arange(width), indexing="ij")
        columns = (y * width + x) * padded + c
        physical = (source.shape[0], height * width * padded)
    else:
        columns = np.arange(shape[1]) if source.feature_map is None else np.asarray(source.feature_map)
        columns = columns.reshape(shape[1:])
        physical = source.shape
    feature_map = columns.transpose([axis - 1 for axis in perm[1:]]).ravel().tolist()
    identity = feature_map == list(range(len(feature_map)))
    return Layout("dense", physical, feature_map=None if identity else feature_map, alias_of=node.inputs[0])


def _scratch(node, layouts):
    """Matrices an operator writes and reads only itself (transposed operands)."""
    return list(getattr(node, "scratch", ()))


def _root(layouts, name):
    while layouts[name].alias_of is not None:
        name = layouts[name].alias_of
    return name


def _weight_matrix(node, graph, layouts):
    """``B[k][n]`` in the physical order of the input (int8) and the folded int32 bias."""
    x = graph.tensors[node.inputs[0]]
    source = layouts[node.inputs[0]]
    w = node.weight.astype(np.int64)
    if node.kernel is not None:
        o, c, kh, kw = w.shape
        cp = source.shape[3]
        n = padded_channels(o)
        b = np.zeros((kh, kw, cp, n), np.int64)
        b[:, :, :c, :o] = w.transpose(2, 3, 1, 0)
        b = b.reshape(kh * kw * cp, n)
        column_sums = w.reshape(o, -1).sum(axis=1)
    else:
        k, o = w.shape
        n = _up(o, WORD_BYTES)
        b = np.zeros((source.shape[1], n), np.int64)
        rows = np.arange(k) if source.feature_map is None else np.asarray(source.feature_map)
        b[rows, :o] = w
        column_sums = w.sum(axis=0)
    bias = np.zeros(n, np.int64)
    bias[:o] = node.bias.astype(np.int64) - x.device_zero_point * column_sums
    bias = ((bias + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)  # int32 wrap-around, as the accumulators
    return b.astype(np.int8), bias


def _node_constants(node, graph, layouts):
    """The constant arrays an operator reads from HBM, by name (``None``: it reads none)."""
    if isinstance(node, DepthwiseConv):
        return _depthwise_constants(node, graph, layouts)
    if isinstance(node, Linear):
        b, bias = _weight_matrix(node, graph, layouts)
        return {"b": b, "bias": bias, "scales": _scale_words(node.scale, b.shape[1])}
    if isinstance(node, Lookup):
        return {"table": node.table.astype(np.int8)}
    if isinstance(node, Elementwise):
        cols = layouts[node.output].shape[-1]
        arrays = {"rows": _binary_spec(node, graph, layouts).constant_rows(cols)}
        if node.constant_matrix is not None:
            offset = UINT8_OFFSET if node.constant_quant[2] == "uint8" else 0
            matrix = np.zeros((node.constant_matrix.shape[0], cols), np.int8)
            matrix[:, _physical_columns(graph, layouts, node.inputs[0])] = node.constant_matrix.astype(np.int16) - offset
            arrays["b_matrix"] = matrix
        return arrays
    if isinstance(node, LayerNorm):
        c = _layernorm_constants(node, graph)
        return {"vectors": np.concatenate((c.gamma, c.beta)).astype("<u4")}
    if isinstance(node, Embedding):
        rows, features = node.table.shape
        offset = UINT8_OFFSET if graph.tensors[node.output].dtype == "uint8" else 0
        table = np.zeros((rows, _up(features, WORD_BYTES)), np.int8)
        table[:, :features] = node.table.astype(np.int16) - offset
        return {"table": table}
    if isinstance(node, ActivationMatMul):
        a, b = (graph.tensors[name] for name in node.inputs)
        depth, n = a.shape[-1], b.shape[-1]
        width = max(_up(depth, WORD_BYTES), _up(n, WORD_BYTES))
        values = set(int8_parts(-a.device_zero_point)) | set(int8_parts(-b.device_zero_point))
        arrays = {f"const{v}": np.full((1, width), v, np.int8) for v in sorted(values)}
        arrays["bias"] = np.full(_up(n, WORD_BYTES), zero_point_bias(depth, a.device_zero_point, b.device_zero_point),
                                 np.int32)
        arrays["scales"] = _scale_words(np.full(n, node.scale, np.float32), _up(n, WORD_BYTES))
        return arrays
    if isinstance(node, Concat):
        return {f"table{i}": table for i, table in enumerate(node.tables) if table is not None} or None
    if isinstance(node, AveragePool):
        x, y = graph.tensors[node.inputs[0]], graph.tensors[node.output]
        out_width = graph.tensors[node.output].shape[3]
        return {"zero_points": avgpool_zero_points(x.device_zero_point, y.zero_point, layouts[node.inputs[0]].shape[3],
                                                   node.kernel, node.stride, out_width)}
    if isinstance(node, GlobalAveragePool):
        pixels, channels = _pooled_extent(graph, layouts, node.inputs[0])
        zero = graph.tensors[node.inputs[0]].device_zero_point
        return {"ones": np.ones((1, _up(pixels, WORD_BYTES)), np.int8),
                "bias": np.full(channels, -zero * pixels, np.int32),
                "scales": _scale_words(np.full(channels, node.scale, np.float32), channels)}
    return None


def _scale_words(scale, columns):
    """The ``ve.requantf`` scale row for ``columns`` outputs (padding columns get scale 0: the zero point)."""
    row = np.zeros(columns, np.float32)
    row[:len(scale)] = scale
    return requantf_scale_words(row)


def _constants(graph, layouts, cfg):
    """HBM offsets and arrays of every operator's constants: ``{node: {name: (offset, array)}}``."""
    constants, offset = {}, 0
    for node in graph.nodes:
        arrays = _node_constants(node, graph, layouts)
        if arrays is None:
            continue
        entry = {}
        for key, array in arrays.items():
            entry[key] = (offset, array)
            offset = _up(offset + array.nbytes, _ALIGN)
        constants[node.name] = entry
    return constants, offset


def _plan_memory(graph, layouts, start):
    """Give every activation an HBM address at or after ``start``; return the end of the arena."""
    order = {}
    for index, node in enumerate(graph.nodes):
        for name in [node.output] + list(node.inputs) + _scratch(node, layouts):
            if name in layouts:
                root = _root(layouts, name)
                first, last = order.get(root, (index, index))
                order[root] = (min(first, index), max(last, index))
    pinned = {_root(layouts, n.output) for n in graph.nodes
              if isinstance(n, (QuantizeInput, IdsInput, DequantizeOutput))}
    placed, end = [], start  # (offset, size, first, last)
    for name, (first, last) in sorted(order.items(), key=lambda item: item[1]):
        layout = layouts[name]
        size = _up(layout.nbytes, _ALIGN)
        shared = name not in pinned and not any(layout.border)
        offset = start
        for other_offset, other_size, other_first, other_last, other_shared in sorted(placed):
            conflicts = not (shared and other_shared and (last < other_first or other_last < first))
            if conflicts and offset < other_offset + other_size and other_offset < offset + size:
                offset = _up(other_offset + other_size, _ALIGN)
        layout.hbm = offset
        placed.append((offset, size, first, last, shared))
        end = max(end, offset + size)
    for name, layout in layouts.items():
        if layout.alias_of is not None:
            layout.hbm = layouts[_root(layouts, name)].hbm
    return end


def _emit_linear(prog, cfg, node, graph, layouts, constants, budget, max_utop_cost):
    x, y = layouts[node.inputs[0]], layouts[node.output]
    b_offset, weights = constants["b"]
    bias_offset, _ = constants["bias"]
    k, n = weights.shape
    if node.kernel is not None:
        a = Im2col(x.nhwc, node.kernel, node.stride, node.pads)
        c = y.nhwc
        m = a.rows
        if a.depth != k:
            raise node_error(node, f"im2col depth {a.depth} differs from the weight rows {k}")
    else:
        a = DenseMatrix(x.hbm, x.shape[1])
        c = DenseMatrix(y.hbm, y.shape[1])
        m = x.shape[0]
    requant = _scale_row(graph.tensors[node.output], constants)
    plan = plan_gemm(cfg, m, k, n, bias=True, requant=True, scales=True, max_utop_cost=max_utop_cost,
                     sram_bytes=budget, a=a)
    emit_gemm(prog, cfg, plan, a, DenseMatrix(b_offset, n), c, bias=DenseMatrix(bias_offset, 0, 4), relu=node.relu,
              requant=requant)
    macs = m * int(np.prod(node.weight.shape))  # per output row: O·C·KH·KW (convolution) or K·N
    return LayerReport(node.name, node.op, graph.tensors[node.output].shape, gemm=(m, k, n), macs=macs,
                       ve_elements=m * n * (3 if node.relu else 2), sram_bytes=plan.sram_bytes)


def _depthwise_constants(node, graph, layouts):
    """Per-tap int32 weight rows ``[KH·KW, C]`` and the bias with the input zero point folded in."""
    channels, _, kh, kw = node.weight.shape
    cp = layouts[node.inputs[0]].shape[3]
    w = node.weight.astype(np.int64).reshape(channels, kh * kw)
    rows = np.zeros((kh * kw, cp), np.int32)
    rows[:, :channels] = w.T
    bias = np.zeros(cp, np.int64)
    bias[:channels] = node.bias.astype(np.int64) - graph.tensors[node.inputs[0]].device_zero_point * w.sum(axis=1)
    return {"weights": rows, "bias": ((bias + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32),
            "scales": _scale_words(node.scale, cp)}


def _emit_depthwise(prog, cfg, node, graph, layouts, constants, budget, max_utop_cost):
    x, y = layouts[node.inputs[0]], layouts[node.output]
    w_offset, weights = constants["weights"]
    bias_offset, _ = constants["bias"]
    requant = _scale_row(graph.tensors[node.output], constants)
    used = emit_depthwise(prog, x.nhwc, y.nhwc, DenseMatrix(w_offset, weights.shape[1] * 4, 4),
                          DenseMatrix(bias_offset, 0, 4), node.kernel, node.stride, node.pads, requant, budget,
                          relu=node.relu)
    out = graph.tensors[node.output].shape
    pixels = out[0] * out[2] * out[3]
    return LayerReport(node.name, node.op, out, macs=pixels * int(np.prod(node.weight.shape)),
                       ve_elements=pixels * y.shape[3] * (2 * weights.shape[0] + 2), sram_bytes=used)


def _emit_lookup(prog, cfg, node, graph, layouts, constants, budget, max_utop_cost):
    x, y = layouts[node.inputs[0]], layouts[node.output]
    if x.kind == "nhwc":
        source, dest = x.nhwc, y.nhwc
        rows, cols = x.shape[0] * x.shape[1] * x.shape[2], x.shape[3]
    else:
        source, dest = DenseMatrix(x.hbm, x.shape[1]), DenseMatrix(y.hbm, y.shape[1])
        rows, cols = x.shape
    table_offset, _ = constants["table"]
    used = emit_lookup(prog, source, dest, rows, cols, DenseMatrix(table_offset, 0), budget)
    return LayerReport(node.name, node.op, graph.tensors[node.output].shape, ve_elements=rows * cols, sram_bytes=used)


def _emit_maxpool(prog, cfg, node, graph, layouts, constants, budget, max_utop_cost):
    x, y = layouts[node.inputs[0]], layouts[node.output]
    used = emit_maxpool(prog, x.nhwc, y.nhwc, node.kernel, node.stride, node.pads, budget)
    out = graph.tensors[node.output].shape
    elements = out[0] * out[2] * out[3] * y.shape[3] * node.kernel[0] * node.kernel[1]
    return LayerReport(node.name, node.op, out, ve_elements=elements, sram_bytes=used)


def _pooled_extent(graph, layouts, name):
    """``(rows pooled per sample, padded channels)`` of a global pool's input: the pixels of an NHWC
    image or the rows of a sequence."""
    x = layouts[name]
    if x.kind == "nhwc":
        _, height, width, channels = x.shape
        return height * width, channels
    return graph.tensors[name].shape[1], x.shape[1]


def _emit_global_average(prog, cfg, node, graph, layouts, constants, budget, max_utop_cost):
    x, y = layouts[node.inputs[0]], layouts[node.output]
    batch = graph.tensors[node.inputs[0]].shape[0]
    pixels, channels = _pooled_extent(graph, layouts, node.inputs[0])
    ones_offset, ones = constants["ones"]
    bias_offset, _ = constants["bias"]
    requant = _scale_row(graph.tensors[node.output], constants)
    plan = plan_gemm(cfg, 1, pixels, channels, bias=True, requant=True, scales=True, max_utop_cost=max_utop_cost,
                     sram_bytes=budget)
    for b in range(batch):
        if b:
            prog.fence()  # the images share the plan's scratchpad buffers
        if x.kind == "nhwc":
            source, dest = DenseMatrix(x.nhwc.pixel(b, 0, 0), channels), DenseMatrix(y.nhwc.pixel(b, 0, 0), channels)
        else:
            source, dest = DenseMatrix(x.hbm + b * pixels * channels, channels), DenseMatrix(y.hbm + b * y.shape[1],
                                                                                             y.shape[1])
        emit_gemm(prog, cfg, plan, DenseMatrix(ones_offset, ones.shape[1]), source, dest,
                  bias=DenseMatrix(bias_offset, 0, 4), requant=requant)
    return LayerReport(node.name, node.op, graph.tensors[node.output].shape, gemm=(1, pixels, channels),
                       macs=batch * pixels * channels, ve_elements=batch * channels * 2, sram_bytes=plan.sram_bytes)


def _physical_columns(graph, layouts, name):
    """The stored column (byte) of each logical channel or feature of ``name``."""
    layout = layouts[name]
    if layout.kind == "dense" and layout.feature_map is not None:
        return list(layout.feature_map)
    shape = graph.tensors[name].shape
    return list(range(shape[1] if layout.kind == "nhwc" else shape[-1]))


def _binary_spec(node, graph, layouts):
    def operand(tensor):
        return BinaryOperand(tensor.scale, tensor.zero_point, tensor.dtype)

    tensors = [graph.tensors[name] for name in node.inputs]
    b = operand(tensors[1]) if node.constant_quant is None else BinaryOperand(*node.constant_quant)
    constant = None
    if node.constant is not None:  # one code per stored column: padding columns get b's zero point
        constant = np.full(layouts[node.output].shape[-1], b.zero_point, np.int64)
        if node.constant_axis is None:
            constant[:] = node.constant[0]
        else:
            columns = _physical_columns(graph, layouts, node.inputs[0])
            constant[columns] = node.constant
            if not np.array_equal(constant[columns], node.constant):
                raise node_error(node, "a constant along features that share a stored column (a repeated Gather "
                                       "index) with different values is not supported")
    return QLinearBinary(node.kind, operand(tensors[0]), b, operand(graph.tensors[node.output]), constant)


def _emit_elementwise(prog, cfg, node, graph, layouts, constants, budget, max_utop_cost):
    a, y = layouts[node.inputs[0]], layouts[node.output]
    b = layouts[node.inputs[1]] if len(node.inputs) == 2 else None
    if a.kind == "nhwc":
        operands = [a.nhwc, b.nhwc if b else None, y.nhwc]
        rows, cols = a.shape[0] * a.shape[1] * a.shape[2], a.shape[3]
    else:
        rows, cols = a.shape
        if "b_matrix" in constants:
            matrix_offset, matrix = constants["b_matrix"]
            b_operand = PeriodicMatrix(matrix_offset, cols, matrix.shape[0])
        else:
            b_operand = DenseMatrix(b.hbm, b.shape[1]) if b else None
        operands = [DenseMatrix(a.hbm, a.shape[1]), b_operand, DenseMatrix(y.hbm, y.shape[1])]
    rows_offset, _ = constants["rows"]
    used = emit_binary(prog, _binary_spec(node, graph, layouts), *operands, rows, cols,
                       DenseMatrix(rows_offset, WORD_BYTES * cols), budget)
    passes = {"add": 1, "mul": 4}[node.kind] + (operands[1] is not None)
    return LayerReport(node.name, node.op, graph.tensors[node.output].shape, ve_elements=rows * cols * passes,
                       sram_bytes=used)


def _emit_concat(prog, cfg, node, graph, layouts, constants, budget, max_utop_cost):
    y = layouts[node.output]
    used, elements, offset = 0, 0, 0
    for index, name in enumerate(node.inputs):
        x = layouts[name]
        if index:
            prog.fence()  # the inputs reuse the same scratchpad buffers
        table = constants.get(f"table{index}") if constants else None
        table = None if table is None else DenseMatrix(table[0], 0)
        if y.kind == "nhwc":
            rows, cols = x.shape[0] * x.shape[1] * x.shape[2], x.shape[3]
            used = max(used, emit_lookup(prog, x.nhwc, y.nhwc, rows, cols, table, budget, column=offset))
            offset += graph.tensors[name].shape[1]
        elif node.axis == 1 and len(graph.tensors[node.output].shape) == 3:
            batch, joined, _ = graph.tensors[node.output].shape
            rows, cols = x.shape
            count = graph.tensors[name].shape[1]
            for b in range(batch if count > 1 else 1):  # one input row per batch: one strided copy
                if b:
                    prog.fence()
                first = (b * joined + offset) * y.shape[1]
                source = DenseMatrix(x.hbm + b * count * cols, cols)
                dest = DenseMatrix(y.hbm + first, y.shape[1] * (joined if count == 1 else 1))
                used = max(used, emit_lookup(prog, source, dest, rows if count == 1 else count, cols, table, budget))
            offset += count
        else:
            rows, cols = x.shape
            used = max(used, emit_lookup(prog, DenseMatrix(x.hbm, cols), DenseMatrix(y.hbm, y.shape[1]), rows, cols,
                                         table, budget, column=offset))
            offset += cols
        elements += rows * cols if table is not None else 0
    return LayerReport(node.name, node.op, graph.tensors[node.output].shape, ve_elements=elements, sram_bytes=used)


def _emit_average_pool(prog, cfg, node, graph, layouts, constants, budget, max_utop_cost):
    x, y = layouts[node.inputs[0]], layouts[node.output]
    source, out = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    zero_offset, _ = constants["zero_points"]
    kind = FmaResult.UINT8 if out.dtype == "uint8" else FmaResult.INT8
    used = emit_avgpool(prog, x.nhwc, y.nhwc, node.kernel, node.stride, node.pads, node.count_include_pad,
                        source.scale, out.scale, DenseMatrix(zero_offset, 4 * x.shape[3], 4), kind, budget)
    pixels = out.shape[0] * out.shape[2] * out.shape[3]
    return LayerReport(node.name, node.op, out.shape, ve_elements=pixels * y.shape[3] * node.kernel[0] * node.kernel[1],
                       sram_bytes=used)


def _emit_matrix_transpose(prog, cfg, node, graph, layouts, constants, budget, max_utop_cost):
    x, y = layouts[node.inputs[0]], layouts[node.output]
    features = graph.tensors[node.inputs[0]].shape[1]
    columns = range(features) if x.feature_map is None else x.feature_map
    used = emit_transpose(prog, DenseMatrix(x.hbm, x.shape[1]), DenseMatrix(y.hbm, y.shape[1]), x.shape[0], x.shape[1],
                          columns, budget)
    return LayerReport(node.name, node.op, graph.tensors[node.output].shape, ve_elements=3 * x.shape[0] * features,
                       sram_bytes=used)


def _layernorm_constants(node, graph):
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    try:
        return LayerNormConstants.of(x.shape[-1], x.scale, node.gamma, node.beta, node.epsilon, y.scale,
                                     y.device_zero_point)
    except FirmwareError as exc:
        raise node_error(node, str(exc)) from None


def _emit_normalisation(prog, cfg, node, graph, layouts, constants, budget, max_utop_cost):
    x, y = layouts[node.inputs[0]], layouts[node.output]
    tensor, out = graph.tensors[node.inputs[0]], graph.tensors[node.output]
    rows, n = x.shape[0], tensor.shape[-1]
    source, dest = DenseMatrix(x.hbm, x.shape[1]), DenseMatrix(y.hbm, y.shape[1])
    if isinstance(node, Softmax):
        try:
            y_scale = onnxruntime_softmax_scale(out.scale)
        except FirmwareError as exc:
            raise node_error(node, str(exc)) from None
        used = emit_softmax(prog, source, dest, rows, n, tensor.scale, y_scale, out.device_zero_point, budget)
    else:
        offset, _ = constants["vectors"]
        used = emit_layernorm(prog, source, dest, rows, n, _layernorm_constants(node, graph), DenseMatrix(offset, 0),
                              budget)
    return LayerReport(node.name, node.op, out.shape, ve_elements=rows * n * (24 if isinstance(node, Softmax) else 12),
                       sram_bytes=used)


def _emit_embedding(prog, cfg, node, graph, layouts, constants, budget, max_utop_cost):
    ids, y = layouts[node.inputs[0]], layouts[node.output]
    table_offset, table = constants["table"]
    count = ids.shape[0]
    emit_gather(prog, EmbeddingTable(table_offset, *table.shape), ids.hbm, DenseMatrix(y.hbm, y.shape[1]), count,
                budget)
    block = min(count, budget // (2 * (table.shape[1] + WORD_BYTES)))
    return LayerReport(node.name, node.op, graph.tensors[node.output].shape,
                       sram_bytes=2 * block * (table.shape[1] + WORD_BYTES))


def _block(layout, terms, index, stride):
    """The matrix of leading index ``index`` of an operand or result in its stored matrix."""
    rows, cols = terms
    row0 = sum(i * t for i, t in zip(index, rows))
    col0 = sum(i * t for i, t in zip(index, cols))
    return DenseMatrix(layout.hbm + row0 * stride + col0, rows[-2] * stride)


def _emit_activation_matmul(prog, cfg, node, graph, layouts, constants, budget, max_utop_cost):
    a_name, b_name = node.inputs
    a, b, y = (graph.tensors[name] for name in (a_name, b_name, node.output))
    operands, used = [], 0
    leading = y.shape[:-2]
    for name in node.inputs:
        scratch = f"{node.name}/{name}ᵀ"
        if scratch in node.scratch:
            source, target = layouts[name], layouts[scratch]
            rows_terms, cols_terms = _terms(graph, layouts, name)
            k, n_logical = graph.tensors[name].shape[-2:]
            for count, index in enumerate(np.ndindex(*leading)):
                if count:
                    prog.fence()  # the blocks share the transpose's scratchpad buffers
                block = _block(source, (rows_terms[:-2] + (rows_terms[-1], 0), cols_terms[:-2] + (0, 1)), index,
                               source.shape[1])
                dest = _block(target, target.view, index, target.shape[1])
                used = max(used, emit_transpose(prog, block, dest, n_logical, _up(k, WORD_BYTES), range(k), budget))
            prog.fence()
            operands.append((target, target.view))
        else:
            operands.append((layouts[name], _terms(graph, layouts, name)))
    depth, n, m = a.shape[-1], b.shape[-1], a.shape[-2]
    plan = None
    out_layout = layouts[node.output]
    out_terms = _terms(graph, layouts, node.output)
    requant = _scale_row(y, constants)
    bias_offset, _ = constants["bias"]
    for count, index in enumerate(np.ndindex(*leading)):
        (a_layout, a_terms), (b_layout, b_terms) = operands
        a_block = _block(a_layout, a_terms, index, a_layout.shape[1])
        b_block = _block(b_layout, b_terms, index, b_layout.shape[1])
        c_block = _block(out_layout, out_terms, index, out_layout.shape[1])
        ext_a, ext_b, ext_depth = zero_point_operands(
            a_block, b_block, depth, a.device_zero_point, b.device_zero_point, lambda v: constants[f"const{v}"][0])
        if plan is None:
            plan = plan_gemm(cfg, m, ext_depth, n, bias=True, requant=True, scales=True,
                             max_utop_cost=max_utop_cost, sram_bytes=budget)
        if count:
            prog.fence()  # the blocks share the plan's scratchpad buffers
        emit_gemm(prog, cfg, plan, ext_a, ext_b, c_block, bias=DenseMatrix(bias_offset, 0, 4), requant=requant)
    blocks = int(np.prod(leading)) if leading else 1
    return LayerReport(node.name, node.op, y.shape, gemm=(m, plan.k, n), macs=blocks * m * depth * n,
                       ve_elements=blocks * m * n * 2, sram_bytes=max(plan.sram_bytes, used))


def _scale_row(y, constants):
    """The epilogue's requantization into ``y``: the operator's binary32 scale row (``ve.requantf``)."""
    offset, _ = constants["scales"]
    return ScaleRow(DenseMatrix(offset, 0, 4), y.device_zero_point)


def _segments(graph, layouts, constants):
    for entry in constants.values():
        for offset, array in entry.values():
            yield offset, array.tobytes()
    for name, layout in layouts.items():
        if layout.alias_of is None and any(layout.border) and not _is_input(graph, name):
            value = -128 if layout.fill == "min" else graph.tensors[name].device_zero_point
            yield layout.hbm, np.full(layout.nbytes, value, np.int8).tobytes()


def _is_input(graph, name):
    return any(isinstance(n, QuantizeInput) and n.output == name for n in graph.nodes)


def _symbols(graph, layouts):
    symbols = []
    for node in graph.nodes:
        if isinstance(node, QuantizeInput):
            symbols.append(layouts[node.output].symbol(node.inputs[0], "input"))
        elif isinstance(node, IdsInput):
            symbols.append(layouts[node.output].symbol(node.output, "input"))
        elif isinstance(node, DequantizeOutput):
            symbols.append(layouts[node.inputs[0]].symbol(node.float_output or node.output, "output"))
    return symbols


def _metadata(graph, layouts, layers):
    def tensor(name):
        t = graph.tensors[name]
        return {"tensor": name, "shape": list(t.shape), "scale": float(t.scale), "zero_point": t.zero_point,
                "dtype": t.dtype, "layout": layouts[name].describe()}

    inputs = [{"name": n.inputs[0], **tensor(n.output)} if isinstance(n, QuantizeInput) else
              {"name": n.output, "ids": True, "shape": list(n.shape), "bound": n.bound, "dtype": "int32",
               "layout": layouts[n.output].describe()}
              for n in graph.nodes if isinstance(n, (QuantizeInput, IdsInput))]
    outputs = [{"name": n.float_output or n.output, "dequantize": n.float_output is not None, **tensor(n.inputs[0])}
               for n in graph.nodes if isinstance(n, DequantizeOutput)]
    order = {name: i for i, name in enumerate(graph.outputs)}
    outputs.sort(key=lambda o: order.get(o["name"], len(order)))
    return {"format": METADATA_FORMAT, "batch": graph.batch, "inputs": inputs, "outputs": outputs,
            "layers": [layer.to_dict() for layer in layers]}


_EMITTERS = {Linear: _emit_linear, DepthwiseConv: _emit_depthwise, MaxPool: _emit_maxpool,
             GlobalAveragePool: _emit_global_average, Lookup: _emit_lookup, Elementwise: _emit_elementwise,
             Concat: _emit_concat, AveragePool: _emit_average_pool, MatrixTranspose: _emit_matrix_transpose,
             ActivationMatMul: _emit_activation_matmul, Embedding: _emit_embedding,
             SequenceReduce: _emit_global_average, Softmax: _emit_normalisation, LayerNorm: _emit_normalisation}
"""The lowering of each IR operator that runs on the pNPU (the others move no data)."""
