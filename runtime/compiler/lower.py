"""Back end: the IR of :mod:`.ir` to one program image — layouts, memory plan, kernels.

Layouts
    A 4-D activation lives in HBM as :class:`~tcloud.firmware.conv.NHWC`: channels innermost and
    padded to a DMA word, with a border as wide as the largest padding any consumer convolution
    needs, holding the zero point (written once by a data segment; stores fill only the interior).
    A 2-D activation is a row-major ``[batch, features]`` matrix with rows padded to a DMA word. A
    Flatten moves no data: its output is the producer's bytes read as ``[batch, H·W·C]``, and the
    consumer's weight rows are permuted to that order at compile time.
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
    requantization run in the GEMM's epilogue on the vector engines.
"""

import json
from dataclasses import dataclass, field

import numpy as np

from tcloud.firmware import FirmwareError, ProgramBuilder
from tcloud.firmware.conv import NHWC, Im2col, padded_channels
from tcloud.firmware.depthwise import emit_depthwise
from tcloud.firmware.lookup import emit_lookup
from tcloud.firmware.pool import emit_maxpool
from tcloud.firmware.gemm import DenseMatrix, ScaleRow, emit_gemm, plan_gemm, requantf_scale_words
from tcloud.isa import ProgramImage, Segment, Symbol, get_config
from tcloud.isa.table import INSTRUCTION_BYTES, WORD_BYTES

from .ir import (CompileError, DepthwiseConv, DequantizeOutput, Flatten, GlobalAveragePool, Linear, Lookup, MaxPool,
                 QuantizeInput, node_error)

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
        ``"nhwc"`` or ``"dense"``.
    shape : tuple
        ``(batch, height, width, padded channels)`` or ``(batch, padded features)``.
    border : tuple
        NHWC only: ``(top, left, bottom, right)`` pixels.
    feature_map : list of int, optional
        Dense only: physical column of each logical feature (``None``: the identity), for the
        output of a Flatten of an NHWC tensor.
    hbm : int
        Context-relative address, set by the memory plan.
    """

    kind: str
    shape: tuple
    border: tuple = (0, 0, 0, 0)
    feature_map: list = None
    hbm: int = None
    alias_of: str = None
    fill: str = None

    @property
    def nhwc(self):
        b, h, w, c = self.shape
        return NHWC(self.hbm, b, h, w, c, tuple(self.border))

    @property
    def nbytes(self):
        return self.nhwc.nbytes if self.kind == "nhwc" else self.shape[0] * self.shape[1]

    def symbol(self, name, kind):
        """The image symbol the host reads or writes: one row per pixel (NHWC) or per sample."""
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
    hbm_bytes = _up(code_at + len(code), _ALIGN)
    if hbm_bytes > cfg.hbm_bytes:
        raise CompileError(f"the model needs {hbm_bytes} bytes of HBM ({const_bytes} of constants, "
                           f"{arena_end - const_bytes} of activations, {len(code)} of code); config "
                           f"{cfg.name!r} has {cfg.hbm_bytes}")
    for layer in layers:
        layer.code = tuple(code_at + INSTRUCTION_BYTES * i for i in layer.code)
    segments = [Segment(offset, data) for offset, data in _segments(graph, layouts, constants)]
    symbols = _symbols(graph, layouts)
    metadata = _metadata(graph, layouts, layers)
    image = ProgramImage.for_config(cfg, code, entry=code_at, hbm_bytes=hbm_bytes, sram_bytes=max(sram_peak, 1),
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
            else:
                layouts[node.output] = Layout("dense", source.shape, feature_map=source.feature_map,
                                              alias_of=node.inputs[0])
        elif isinstance(node, Lookup) and layouts[node.inputs[0]].kind == "dense":
            source = layouts[node.inputs[0]]
            layouts[node.output] = Layout("dense", source.shape, feature_map=source.feature_map)
        elif isinstance(node, (QuantizeInput, Linear, MaxPool, GlobalAveragePool, Lookup)):
            shape = tensor.shape
            if len(shape) == 4:
                layouts[node.output] = Layout("nhwc", (shape[0], shape[2], shape[3], padded_channels(shape[1])))
            elif len(shape) == 2:
                layouts[node.output] = Layout("dense", (shape[0], _up(shape[1], WORD_BYTES)))
            else:
                raise node_error(node, f"tensors of rank {len(shape)} are not supported (2 or 4)")
        elif not isinstance(node, DequantizeOutput):
            raise node_error(node, "the compiler reads this operator but cannot lower it to the pNPU yet")
    for node in graph.nodes:
        padded = (isinstance(node, Linear) and node.kernel is not None) or isinstance(node, MaxPool)
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
        if isinstance(node, GlobalAveragePool) and any(layouts[node.inputs[0]].border):
            raise node_error(node, "a global average pool over a tensor that a padded operator also reads is not "
                                   "supported")
    return layouts


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
    if isinstance(node, GlobalAveragePool):
        _, height, width, channels = layouts[node.inputs[0]].shape
        pixels = height * width
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
        for name in [node.output] + list(node.inputs):
            if name in layouts:
                root = _root(layouts, name)
                first, last = order.get(root, (index, index))
                order[root] = (min(first, index), max(last, index))
    pinned = {_root(layouts, n.output) for n in graph.nodes if isinstance(n, (QuantizeInput, DequantizeOutput))}
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


def _emit_global_average(prog, cfg, node, graph, layouts, constants, budget, max_utop_cost):
    x, y = layouts[node.inputs[0]], layouts[node.output]
    batch, height, width, channels = x.shape
    ones_offset, ones = constants["ones"]
    bias_offset, _ = constants["bias"]
    pixels = height * width
    requant = _scale_row(graph.tensors[node.output], constants)
    plan = plan_gemm(cfg, 1, pixels, channels, bias=True, requant=True, scales=True, max_utop_cost=max_utop_cost,
                     sram_bytes=budget)
    for b in range(batch):
        emit_gemm(prog, cfg, plan, DenseMatrix(ones_offset, ones.shape[1]),
                  DenseMatrix(x.nhwc.pixel(b, 0, 0), channels), DenseMatrix(y.nhwc.pixel(b, 0, 0), channels),
                  bias=DenseMatrix(bias_offset, 0, 4), requant=requant)
    return LayerReport(node.name, node.op, graph.tensors[node.output].shape, gemm=(1, pixels, channels),
                       macs=batch * pixels * channels, ve_elements=batch * channels * 2, sram_bytes=plan.sram_bytes)


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
        elif isinstance(node, DequantizeOutput):
            symbols.append(layouts[node.inputs[0]].symbol(node.float_output or node.output, "output"))
    return symbols


def _metadata(graph, layouts, layers):
    def tensor(name):
        t = graph.tensors[name]
        return {"tensor": name, "shape": list(t.shape), "scale": float(t.scale), "zero_point": t.zero_point,
                "dtype": t.dtype, "layout": layouts[name].describe()}

    inputs = [{"name": n.inputs[0], **tensor(n.output)} for n in graph.nodes if isinstance(n, QuantizeInput)]
    outputs = [{"name": n.float_output or n.output, "dequantize": n.float_output is not None, **tensor(n.inputs[0])}
               for n in graph.nodes if isinstance(n, DequantizeOutput)]
    order = {name: i for i, name in enumerate(graph.outputs)}
    outputs.sort(key=lambda o: order.get(o["name"], len(order)))
    return {"format": METADATA_FORMAT, "batch": graph.batch, "inputs": inputs, "outputs": outputs,
            "layers": [layer.to_dict() for layer in layers]}


_EMITTERS = {Linear: _emit_linear, DepthwiseConv: _emit_depthwise, MaxPool: _emit_maxpool,
             GlobalAveragePool: _emit_global_average, Lookup: _emit_lookup}
"""The lowering of each IR operator that runs on the pNPU (the others move no data)."""
