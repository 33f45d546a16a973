"""Tiled int8 GEMM with int32 accumulation, optional bias and requantization.

``C[M][N] = requant(A[M][K] @ B[K][N] + bias[N])`` for any M, N, K, lowered to uTOps for one
:class:`~tcloud.isa.ArchConfig`.

Schedule
--------
The output is computed in blocks of ``mb × nb`` int32 accumulators held in the scratchpad; K is
streamed in chunks of ``kb``. For each chunk one DMA uTOp loads the A and B chunks into one of two
buffer sets (double buffering), then up to four ME uTOps, each over one or more ``me_cols``-wide
column tiles, run ``me.loadw``/``me.matmul`` pairs over the chunk's ``me_rows``-deep k tiles. The
column tiles are independent, so the hardware spreads them over all matrix engines. A block's
first chunk has a second DMA uTOp, on the other DMA engine, that loads its bias into the
accumulators (the MEs accumulate onto it) and its scale row. After the last chunk one VE uTOp per
vector engine, each over a share of the rows, applies ReLU and requantizes, and a DMA uTOp stores
the block. Accumulator and output buffers come in three or four (:data:`ACC_BUFFERS`), so that
a block's epilogue and store, and the next block's bias load, overlap the MEs. uTOps issue in
program order, one per HBM round trip of the front end's header fetch, so :func:`emit_gemm` emits
each where its dependencies are about to be met, and :func:`plan_gemm` charges that issue time,
the VE and DMA time as well as the MEs'.
Tiles smaller than the array (M, N, K not multiples of its size) use the exact ``k`` and ``n`` of
``me.loadw``: no padding reaches the arithmetic.
"""

import itertools
import math
from dataclasses import dataclass

import numpy as np

from tcloud.isa import Instr, ProgramImage, Symbol, get_config
from tcloud.isa.encoding import check_field
from tcloud.isa.cost import HARVEST_COST_DEFAULT, VE_STEPS_PER_CHUNK, utop_units
from tcloud.isa.errors import EncodingError
from tcloud.isa.table import BY_MNEMONIC, INSTRUCTION_BYTES, WORD_BYTES, EngineClass
from tcloud.isa.table import field_max as _field_max

from .program import FirmwareError, Footprint, ProgramBuilder

_ALIGN = 64
MIB = 1 << 20
_TILE_OVERHEAD = 8
"""Cycles the planner charges per k tile of an ME uTOp besides streaming its rows: the turnaround of
its two instructions (the weights load into the idle bank while the previous tile streams;
measured by ``benchmarks/me_utilization``)."""
_DMA_ROUND_TRIPS = 2.6
"""HBM latencies a DMA instruction costs the planner besides its beats: its fetch (DMA engines do not
prefetch), its first response and its share of the queue at the HBM (measured: about 315 cycles per
instruction on ``small``, 120 cycles of latency, in a convolution's loads and stores)."""
SPLIT_LOAD_TRANSFERS = 8
"""A step's A and B loads of at least this many DMA instructions are spread over the DMA engines: each
instruction costs a few HBM latencies (:data:`_DMA_ROUND_TRIPS`), far more than issuing a uTOp more."""
MAX_STEP_ME_UTOPS = 4
"""ME uTOps per K chunk at most (a uTOp computes several column tiles when there are more): with
eight, the schedule of :func:`emit_gemm` keeps more dependency groups live than there are tokens."""
ACC_BUFFERS = 4
"""Accumulator (and scale and int8 output) buffers a plan prefers: while one block computes, the next
block's bias loads into another, the previous block's epilogue runs on a third and the store of the
one before drains the fourth. With three, the next bias load waits for that store."""


def _up(value, multiple):
    return -(-value // multiple) * multiple


def _load_utops(cfg, transfers):
    """DMA uTOps a step's ``transfers`` A and B load instructions are spread over."""
    return min(cfg.dma_count, transfers) if transfers >= SPLIT_LOAD_TRANSFERS else 1


@dataclass(frozen=True)
class Requant:
    """Fixed-point requantization ``round_half_even(x * multiplier / 2**shift) + zero_point``.

    Raises
    ------
    FirmwareError
        If a parameter does not fit the ``ve.requant`` fields.
    """

    multiplier: int
    shift: int
    zero_point: int = 0

    def __post_init__(self):
        spec = BY_MNEMONIC["ve.requant"]
        for name, value in (("mult", self.multiplier), ("shift", self.shift), ("zp", self.zero_point)):
            try:
                check_field(spec, spec.field(name), value)
            except EncodingError as exc:
                raise FirmwareError(f"requantization parameter out of range: {exc}") from None

    @classmethod
    def from_scale(cls, scale, zero_point=0):
        """Closest multiplier/shift pair to a positive real ``scale`` (multiplier < 2**31).

        Raises
        ------
        FirmwareError
            If ``scale`` is not positive or cannot be represented.
        """
        if not scale > 0 or not math.isfinite(scale):
            raise FirmwareError(f"requantization scale must be a positive finite number, got {scale!r}")
        mantissa, exponent = math.frexp(scale)
        mult, shift = round(mantissa * (1 << 31)), 31 - exponent
        if mult == 1 << 31:
            mult, shift = mult >> 1, shift - 1
        max_shift = _field_max("ve.requant", "shift")
        if shift > max_shift:
            mult, shift = round(mult / (1 << (shift - max_shift))), max_shift
        if shift < 0 or mult == 0:
            raise FirmwareError(f"requantization scale {scale!r} is outside the representable range "
                                f"[2**-{max_shift}, 2**31)")
        return cls(mult, shift, zero_point)

    @property
    def scale(self):
        return self.multiplier / (1 << self.shift)


def requantf_scale_words(scales):
    """The ``ve.requantf`` scale words of binary32 ``scales``: their bit patterns, as int32.

    The instruction reads a scale word as the IEEE-754 binary32 value it is, so the word is the scale's
    own bit pattern: store the returned array (one word per output column, a row of identical words
    for a per-tensor scale) and broadcast it over rows with ``ve.shape`` ``src2_stride=0``.

    Parameters
    ----------
    scales : array_like of numpy.float32
        Requantization scales computed in binary32 as onnxruntime does (for QLinearConv/QLinearMatMul/
        QGemm, ``np.float32(x_scale * w_scale) / y_scale`` per output channel). Other dtypes are
        accepted only where every value converts to binary32 exactly.

    Returns
    -------
    numpy.ndarray of int32

    Raises
    ------
    FirmwareError
        If a scale is not finite (the instruction defines those words, onnxruntime does not match them)
        or is not exactly a binary32 value.
    """
    values = np.asarray(scales)
    single = values.astype(np.float32)
    if not np.all(np.isfinite(single)):
        raise FirmwareError(f"requantization scales must be finite, got {values[~np.isfinite(single)][:4]}")
    if values.dtype != np.float32 and not np.array_equal(single.astype(values.dtype), values):
        raise FirmwareError("requantization scales must be binary32 values (compute them in np.float32 as "
                            "onnxruntime does); rounding them here would change results")
    return single.view(np.int32).copy()


def requantf_reference(acc, scales, zero_point=0, dst_i8=True):
    """What ``ve.requantf`` computes, in NumPy binary32 arithmetic as onnxruntime's CPU kernels do.

    ``saturate(rint(np.float32(acc) * np.float32(scale)) + zero_point)``: the accumulator converts to
    binary32, the product rounds to binary32, ``rint`` rounds half to even, and the zero point is added
    after rounding (MLAS's requantization; clamping before or after rounding is the same for integer
    bounds). :func:`tcloud.isa.golden.requantize_fp32` is the integer-only equivalent the hardware runs.

    Parameters
    ----------
    acc : array_like of int
        int32 accumulators.
    scales : array_like of numpy.float32
        Finite scales, broadcast with ``acc`` (per column: shape ``(n,)`` against ``(rows, n)``).
    zero_point : int
    dst_i8 : bool
        Saturate to int8 (else to int32).

    Returns
    -------
    numpy.ndarray of int64
    """
    with np.errstate(over="ignore"):  # a product beyond binary32 is inf, which saturates as it should
        product = np.asarray(acc, np.int64).astype(np.int32).astype(np.float32) * np.asarray(scales, np.float32)
    far = float(1 << 40)  # saturates like any larger magnitude (and like binary32 overflow to inf)
    rounded = np.clip(np.rint(product).astype(np.float64), -far, far).astype(np.int64)
    low, high = (-128, 127) if dst_i8 else (-(1 << 31), (1 << 31) - 1)
    return np.clip(rounded + int(zero_point), low, high)


@dataclass(frozen=True)
class ScaleRow:
    """Requantization by one IEEE-754 binary32 scale per output column (``ve.requantf``):
    ``saturate(round_half_even(fl32(fl32(x) · scale[j])) + zero_point)``, onnxruntime's arithmetic.

    Attributes
    ----------
    scales : DenseMatrix
        One row of ``n`` float32 words in HBM (``item`` 4).
    zero_point : int
    """

    scales: object
    zero_point: int = 0


@dataclass(frozen=True)
class GemmPlan:
    """Block sizes chosen for one GEMM and their scratchpad footprint."""

    m: int
    k: int
    n: int
    mb: int
    nb: int
    kb: int
    sram_bytes: int
    estimated_cycles: float
    tiles_per_utop: int = 1
    """Column tiles one ME uTOp computes, one after another (fewer, longer uTOps)."""
    acc_buffers: int = ACC_BUFFERS
    """Accumulator, scale and output buffers (3 or 4, see :data:`ACC_BUFFERS`)."""


def _sram_footprint(cfg, mb, nb, kb, bias, requant, scales=False, acc_buffers=ACC_BUFFERS):
    """Scratchpad bytes of a plan (the bias goes straight into the accumulators: no buffer)."""
    total = 2 * mb * _up(kb, WORD_BYTES) + 2 * kb * _up(nb, WORD_BYTES) + acc_buffers * mb * 4 * nb
    total += acc_buffers * 4 * nb * bool(scales)
    if requant:
        total += acc_buffers * mb * _up(nb, WORD_BYTES)
    return total


def me_utop_cost(config, mb, kb, tiles=1):
    """Declared cost of the largest ME uTOp of a plan: ``tiles`` column tiles, each ``kb`` deep (in
    array-deep tiles) over ``mb`` rows, accumulating into a region loaded from the previous K chunk."""
    rows, cols = config.me_rows, config.me_cols
    a_stride = _up(kb, WORD_BYTES)
    body = []
    for j in range(tiles):
        for t0 in range(0, kb, rows):
            body += [Instr("me.loadw", w=4 * cols * j, k=min(rows, kb - t0), n=cols, w_stride=cols * tiles),
                     Instr("me.matmul", a=t0, out=mb * a_stride + 4 * cols * j, m=mb, a_stride=a_stride,
                           out_stride=4 * cols * tiles, acc=1)]
    return utop_units(body, config)


def plan_gemm(config, m, k, n, *, bias=False, requant=False, scales=False, max_utop_cost=HARVEST_COST_DEFAULT,
              sram_bytes=None, a=None):
    """Choose block sizes for ``C[m][n] = A[m][k] @ B[k][n]`` on ``config``.

    The plan minimises an estimate of the busiest of the matrix engines, the vector engines (the
    requantization), the DMA engines (a round trip per DMA instruction, then a beat per cycle), the
    front end (an HBM round trip per uTOp header) and the HBM's bandwidth, over power-of-two block
    sizes that fit the scratchpad and the ISA's field limits, and whose ME uTOps cost at most
    ``max_utop_cost`` work units (:mod:`tcloud.isa.cost`; ``None``: no limit), so that the
    ``harvest`` policy may run them on engines the tenant does not own. ``sram_bytes`` bounds the
    footprint (default: the whole scratchpad). ``scales``: the requantization reads a row of
    per-column scales (:class:`ScaleRow`). ``a``: the layout :func:`emit_gemm` will read A through
    (default: a dense matrix), whose ``load`` says how many DMA instructions a block of A takes.

    Raises
    ------
    FirmwareError
        If a dimension or ``max_utop_cost`` is not a positive integer, or no blocking fits the
        scratchpad and the cost.
    """
    cfg = get_config(config)
    for name, value in (("M", m), ("K", k), ("N", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FirmwareError(f"GEMM dimension {name} must be a positive integer, got {value!r}")
    if max_utop_cost is not None and (isinstance(max_utop_cost, bool) or not isinstance(max_utop_cost, int)
                                      or max_utop_cost < 1):
        raise FirmwareError(f"max_utop_cost must be a positive integer or None, got {max_utop_cost!r}")
    rows, cols = cfg.me_rows, cfg.me_cols
    max_m = min(_field_max("me.matmul", "m"), _field_max("dma.load", "rows"))
    max_n = min(_field_max("dma.load", "row_bytes") // 4, _field_max("ve.add", "n"))
    max_k = min(_field_max("dma.load", "rows"), _field_max("dma.load", "row_bytes"))
    mb_opts = sorted({min(m, max_m, 1 << i) for i in range(4, 13)})
    nb_opts = sorted({min(_up(n, cols), max_n // cols * cols, cols << i) for i in range(0, 12)})
    kb_opts = sorted({min(_up(k, rows), max_k // rows * rows, rows << i) for i in range(0, 12)})
    hbm_a, hbm_b = m * _up(k, WORD_BYTES), k * _up(n, WORD_BYTES)
    budget = cfg.sram_bytes if sram_bytes is None else sram_bytes
    latency = cfg.hbm_latency
    a_transfers = {}  # DMA instructions loading an mb x kb block of A
    ve_steps = (VE_STEPS_PER_CHUNK["ve.requantf"] if scales else VE_STEPS_PER_CHUNK["ve.requant"]) if requant else 0
    best = None
    for mb in mb_opts:
        for nb in nb_opts:
            col_tiles = math.ceil(nb / cols)
            per = math.ceil(col_tiles / min(cfg.me_count, MAX_STEP_ME_UTOPS))
            utops = math.ceil(col_tiles / per)
            for kb, acc_buffers in itertools.product(kb_opts, (ACC_BUFFERS, 3)):
                footprint = _sram_footprint(cfg, mb, nb, kb, bias, requant, scales, acc_buffers)
                if footprint > budget:
                    continue
                if max_utop_cost is not None and me_utop_cost(cfg, mb, kb, per) > max_utop_cost:
                    continue
                blocks = math.ceil(m / mb) * math.ceil(n / nb)
                steps = blocks * math.ceil(k / kb)
                # an ME uTOp streams mb rows per k tile and writes its accumulators back (loading them
                # first: they hold the bias or the previous chunk's sums), after its first fetch
                me_utop = per * (math.ceil(kb / rows) * (mb + _TILE_OVERHEAD) + 2 * mb) + latency
                me_cycles = steps * math.ceil(utops / cfg.me_count) * me_utop
                epilogue = math.ceil(mb / cfg.ve_count) * math.ceil(nb / cfg.ve_lanes) * ve_steps + latency
                ve_cycles = blocks * epilogue
                # the front end fetches each uTOp header from HBM before it issues the uTOp; with three
                # buffers, it also waits for a store per block
                block_utops = (bias or scales) + (cfg.ve_count if requant else 0) + 1
                issue_cycles = latency * (steps * (1 + utops) + blocks * block_utops)
                if acc_buffers < ACC_BUFFERS:
                    store_beats = mb * math.ceil(nb * (1 if requant else 4) / cfg.hbm_port_bytes)
                    issue_cycles += blocks * (2 * latency + store_beats)
                traffic = hbm_a * math.ceil(n / nb) + hbm_b * math.ceil(m / mb) + m * n * 4
                if (mb, kb) not in a_transfers:
                    a_transfers[mb, kb] = 1 if a is None else len(a.load(0, _up(kb, WORD_BYTES), 0, mb, 0, kb))
                # per step the A and B loads, on one DMA engine while the previous step computes; per
                # block also the bias and scale loads and the store
                transfer = _DMA_ROUND_TRIPS * latency
                ab_cycles = steps * (transfer * (a_transfers[mb, kb] + 1)
                                     + (mb * _up(kb, WORD_BYTES) + kb * _up(nb, WORD_BYTES)) / cfg.hbm_port_bytes
                                     ) / _load_utops(cfg, a_transfers[mb, kb] + 1)
                transfers = steps * (a_transfers[mb, kb] + 1) + blocks * (bias + scales + 1)
                dma_cycles = (transfer * transfers + traffic / cfg.hbm_port_bytes) / cfg.dma_count
                # the pipeline fills with the first step's loads and drains with the last epilogue and store
                fill = ab_cycles / steps + epilogue + transfer + mb * _up(nb, WORD_BYTES) / cfg.hbm_port_bytes
                estimate = fill + max(me_cycles, ve_cycles, issue_cycles, ab_cycles, dma_cycles,
                                      traffic / cfg.hbm_bytes_per_cycle)
                key = (estimate, -acc_buffers, footprint)
                if best is None or key < best[0]:
                    best = (key, GemmPlan(m, k, n, mb, nb, kb, footprint, estimate, per, acc_buffers))
    if best is None:
        limit = "" if max_utop_cost is None else f" with ME uTOps of at most {max_utop_cost} work units"
        raise FirmwareError(f"no GEMM blocking of {m}x{k}x{n} fits {budget // 1024} KiB of the scratchpad "
                            f"of config {cfg.name!r}{limit}")
    return best[1]


def gemm(config, m, k, n, *, bias=False, requant=None, plan=None, max_utop_cost=HARVEST_COST_DEFAULT, progress=None):
    """Lower a GEMM to a program image.

    Parameters
    ----------
    config : ArchConfig or str
        Target configuration.
    m, k, n : int
        ``C[m][n] = A[m][k] @ B[k][n]``.
    bias : bool
        Add an int32 ``bias[n]`` input to every row before requantization.
    requant : Requant, optional
        Requantize the int32 result to int8; without it ``C`` is int32.
    plan : GemmPlan, optional
        Block sizes (default: :func:`plan_gemm`).
    max_utop_cost : int or None
        Passed to :func:`plan_gemm`: the largest declared cost of an ME uTOp (default: the
        ``HARVEST_COST`` register's reset value, so the harvest policy may share its uTOps).
    progress : callable, optional
        Called now and then as ``progress(done, total)``: each instruction counts once when it is
        lowered and once when it is encoded (for a progress bar; large shapes take minutes).

    Returns
    -------
    ProgramImage
        With inputs ``A`` (i8, m×k), ``B`` (i8, k×n), optionally ``bias`` (i32, n) and output
        ``C`` (i32 or i8, m×n).

    Raises
    ------
    FirmwareError
        For shapes the ISA cannot address or that do not fit the configuration.
    """
    cfg = get_config(config)
    if requant is not None and not isinstance(requant, Requant):
        raise FirmwareError(f"requant must be a Requant, got {requant!r}")
    layout = _layout(cfg, m, k, n, bias, requant is not None, plan, max_utop_cost)
    plan, count, hbm_bytes = layout.plan, layout.count, layout.hbm_bytes
    stride_a, stride_b, stride_c = layout.strides
    off_a, off_b, off_bias, off_c, code_at = layout.offsets
    out_dtype, out_item = ("i8", 1) if requant else ("i32", 4)

    prog = ProgramBuilder()
    emit_gemm(prog, cfg, plan, DenseMatrix(off_a, stride_a), DenseMatrix(off_b, stride_b),
              DenseMatrix(off_c, stride_c, out_item), bias=DenseMatrix(off_bias, 0, 4) if bias else None,
              requant=requant, progress=None if progress is None else lambda done: progress(done, 2 * count))
    code = prog.build(cfg, progress=None if progress is None else lambda done: progress(count + done, 2 * count))
    symbols = [Symbol("A", "input", "i8", (m, k), off_a, stride_a),
               Symbol("B", "input", "i8", (k, n), off_b, stride_b)]
    if bias:
        symbols.append(Symbol("bias", "input", "i32", (n,), off_bias, 4 * n))
    symbols.append(Symbol("C", "output", out_dtype, (m, n), off_c, stride_c))
    return ProgramImage.for_config(cfg, code, entry=code_at, hbm_bytes=hbm_bytes, sram_bytes=plan.sram_bytes,
                                   symbols=symbols)


def gemm_footprint(config, m, k, n, *, bias=False, requant=False, max_utop_cost=HARVEST_COST_DEFAULT):
    """The :class:`~.program.Footprint` of :func:`gemm`'s image, without building its code (which
    takes seconds to minutes for large shapes); ``requant`` says whether it requantizes.

    Raises
    ------
    FirmwareError
        As :func:`gemm` does for the shape.
    """
    layout = _layout(get_config(config), m, k, n, bias, bool(requant), None, max_utop_cost)
    return Footprint(layout.plan.sram_bytes, layout.hbm_bytes)


@dataclass(frozen=True)
class _Layout:
    plan: "GemmPlan"
    strides: tuple
    offsets: tuple
    count: int
    hbm_bytes: int


def _layout(cfg, m, k, n, bias, requant, plan, max_utop_cost):
    """Everything of a GEMM image but its code: the plan, the row strides of A, B and C, the HBM
    offsets (:func:`_hbm_layout`), the instruction count and the HBM bytes, checked against the ISA
    and ``cfg``."""
    plan = plan or plan_gemm(cfg, m, k, n, bias=bias, requant=requant, max_utop_cost=max_utop_cost)
    out_item = 1 if requant else 4
    strides = _up(k, WORD_BYTES), _up(n, WORD_BYTES), _up(n * out_item, WORD_BYTES)
    hbm_stride_max = _field_max("dma.load", "hbm_stride")
    if max(strides) > hbm_stride_max:
        raise FirmwareError(f"GEMM {m}x{k}x{n}: a row of A, B or C exceeds the largest DMA stride "
                            f"({hbm_stride_max} bytes)")
    offsets = _hbm_layout(m, k, n, bias, out_item)
    code_at = offsets[-1]
    count = _instruction_count(cfg, plan, bias, requant)
    hbm_bytes = _up(code_at + INSTRUCTION_BYTES * count, _ALIGN)
    if hbm_bytes > cfg.hbm_bytes:
        raise FirmwareError(f"GEMM {m}x{k}x{n} needs {hbm_bytes / MIB:.1f} MiB of HBM ({code_at / MIB:.1f} MiB "
                            f"of operands and result, {(hbm_bytes - code_at) / MIB:.1f} MiB of code), but config "
                            f"{cfg.name!r} has {cfg.hbm_mib} MiB")
    return _Layout(plan, strides, offsets, count, hbm_bytes)


@dataclass(frozen=True)
class DenseMatrix:
    """A row-major matrix in HBM: element ``(r, c)`` at ``hbm + r * stride + c * item``.

    :func:`emit_gemm` reads its operands and writes its result through ``load`` and ``store``; other
    layouts (an im2col view of an activation, an output with a padded border) provide the same two
    methods.
    """

    hbm: int
    stride: int
    item: int = 1

    def _transfer(self, op, sram, sram_stride, r0, rows, c0, cols):
        return [Instr(op, sram=sram, hbm=self.hbm + r0 * self.stride + c0 * self.item, rows=rows,
                      row_bytes=_up(cols * self.item, WORD_BYTES), hbm_stride=self.stride, sram_stride=sram_stride)]

    def load(self, sram, sram_stride, r0, rows, c0, cols):
        """DMA instructions copying rows ``r0..r0+rows`` × columns ``c0..c0+cols`` to the scratchpad."""
        return self._transfer("dma.load", sram, sram_stride, r0, rows, c0, cols)

    def store(self, sram, sram_stride, r0, rows, c0, cols):
        """DMA instructions copying that block from the scratchpad back to HBM."""
        return self._transfer("dma.store", sram, sram_stride, r0, rows, c0, cols)


def emit_gemm(prog, config, plan, a, b, c, *, bias=None, relu=False, requant=None, progress=None):
    """Append the uTOps of ``C = requant(relu(A @ B + bias))`` to ``prog``.

    Parameters
    ----------
    prog : ProgramBuilder
    config : ArchConfig
    plan : GemmPlan
        Block sizes; its scratchpad footprint starts at scratchpad address 0.
    a, b : DenseMatrix or a layout with the same ``load``
        int8 ``A[m][k]`` and ``B[k][n]``.
    c : DenseMatrix or a layout with the same ``store``
        The result: int8 with ``requant``, else int32.
    bias : DenseMatrix, optional
        One int32 row of ``n`` values added to every row of the product.
    relu : bool
        Clamp the int32 sums at 0 before requantization (with a positive scale this is the
        requantized ReLU: ``max(q, zero_point)``).
    requant : Requant or ScaleRow, optional
        Fixed-point (``ve.requant``) or per-column binary32 scales (``ve.requantf``); the plan must
        have been made with ``scales=True`` for a :class:`ScaleRow`.
    progress : callable, optional
        Called as ``progress(instructions_emitted)`` once per output block.

    Returns
    -------
    list of UtopRef
        The stores of the output blocks (the uTOps a consumer of ``C`` depends on).
    """
    cfg = config
    rows, cols = cfg.me_rows, cfg.me_cols
    m, k, n, mb, nb, kb = plan.m, plan.k, plan.n, plan.mb, plan.nb, plan.kb
    epilogue = relu or requant is not None
    scale_row = isinstance(requant, ScaleRow)
    bias_load = bias is not None or scale_row  # a block's first chunk loads its bias or scale row
    sa, sb, s8 = _up(kb, WORD_BYTES), _up(nb, WORD_BYTES), _up(nb, WORD_BYTES)
    buf_a = [0, mb * sa]
    base = 2 * buf_a[1]
    buf_b = [base, base + kb * sb]
    base += 2 * kb * sb
    buf_acc = [base + i * mb * 4 * nb for i in range(plan.acc_buffers)]
    base += plan.acc_buffers * mb * 4 * nb
    buf_scale = [base + i * 4 * nb for i in range(plan.acc_buffers)]
    if scale_row:
        base += plan.acc_buffers * 4 * nb
    buf_out8 = [base + i * mb * s8 for i in range(plan.acc_buffers)]
    if requant is not None:
        base += plan.acc_buffers * mb * s8
    assert base == plan.sram_bytes

    blocks = [(m0, n0, min(mb, m - m0), min(nb, n - n0)) for m0 in range(0, m, mb) for n0 in range(0, n, nb)]
    steps = [(bi, ci, k0, min(kb, k - k0)) for bi in range(len(blocks)) for ci, k0 in enumerate(range(0, k, kb))]
    loads, me, stores = [], [], []  # per step, per step (one uTOp per column tile), per block

    def freed(bi):
        """The store after which block ``bi`` may reuse its accumulator, scale and output buffers."""
        return stores[bi - plan.acc_buffers] if bi >= plan.acc_buffers else None

    def emit_load(g):
        """The DMA uTOps loading the A and B chunks of step ``g``: one, or one per DMA engine when
        there are many transfers (an im2col gather)."""
        bi, ci, k0, kdepth = steps[g]
        m0, n0, mrows, ncols = blocks[bi]
        body = a.load(buf_a[g % 2], sa, m0, mrows, k0, kdepth) + b.load(buf_b[g % 2], sb, k0, kdepth, n0, ncols)
        size = -(-len(body) // _load_utops(cfg, len(body)))
        loads.append([prog.utop(EngineClass.DMA, body[i:i + size], me[g - 2] if g >= 2 else [])
                      for i in range(0, len(body), size)])

    def emit_bias_load(g):
        """With a block's first chunk, a DMA uTOp (the other DMA engine can run it beside the A and B
        loads) loading the block's bias, onto which the MEs accumulate, and its scale row."""
        bi, ci, _, _ = steps[g]
        m0, n0, mrows, ncols = blocks[bi]
        if ci > 0 or not bias_load:
            return
        body = []
        if bias is not None:
            body += bias.load(buf_acc[bi % plan.acc_buffers], 4 * nb, 0, mrows, n0, ncols)
        if scale_row:
            body += requant.scales.load(buf_scale[bi % plan.acc_buffers], 0, 0, 1, n0, ncols)
        loads[g].append(prog.utop(EngineClass.DMA, body, [freed(bi)]))

    def emit_me(g):
        """The ME uTOps of step ``g``, each over ``plan.tiles_per_utop`` column tiles, accumulating onto
        the previous chunk's."""
        bi, ci, k0, kdepth = steps[g]
        m0, n0, mrows, ncols = blocks[bi]
        acc = buf_acc[bi % plan.acc_buffers]
        tiles = list(range(0, ncols, cols))
        refs = []
        for u, first in enumerate(range(0, len(tiles), plan.tiles_per_utop)):
            body = []
            for c0 in tiles[first:first + plan.tiles_per_utop]:
                for t0 in range(0, kdepth, rows):
                    body.append(Instr("me.loadw", w=buf_b[g % 2] + t0 * sb + c0, k=min(rows, kdepth - t0),
                                      n=min(cols, ncols - c0), w_stride=sb))
                    body.append(Instr("me.matmul", a=buf_a[g % 2] + t0, out=acc + 4 * c0, m=mrows, a_stride=sa,
                                      out_stride=4 * nb, acc=int(ci > 0 or t0 > 0 or bias is not None)))
            # the first chunk writes the accumulators, free once their store is (a bias load waited for it)
            deps = loads[g] + [me[g - 1][u] if ci > 0 else None if bias_load else freed(bi)]
            refs.append(prog.utop(EngineClass.ME, body, deps))
        me.append(refs)

    def emit_epilogue(bi, last_me):
        """ReLU and requantization of one output block, its rows split over the vector engines; the
        uTOps its store waits for."""
        m0, n0, mrows, ncols = blocks[bi]
        if not epilogue:
            return last_me
        acc, out8 = buf_acc[bi % plan.acc_buffers], buf_out8[bi % plan.acc_buffers]
        part = -(-mrows // cfg.ve_count)
        refs = []
        for r0 in range(0, mrows, part):
            body, rs = [], min(part, mrows - r0)
            a_r, o_r = acc + r0 * 4 * nb, out8 + r0 * s8
            if relu:
                body += [Instr("ve.shape", rows=rs, dst_stride=4 * nb, src1_stride=4 * nb, src2_stride=0),
                         Instr("ve.relu", dst=a_r, src=a_r, n=ncols)]
            if requant is not None:
                body.append(Instr("ve.shape", rows=rs, dst_stride=s8, src1_stride=4 * nb, src2_stride=0))
                if scale_row:
                    body.append(Instr("ve.requantf", dst=o_r, src1=a_r, src2=buf_scale[bi % plan.acc_buffers],
                                      n=ncols, zp=requant.zero_point))
                else:
                    body.append(Instr("ve.requant", dst=o_r, src=a_r, n=ncols, mult=requant.multiplier,
                                      shift=requant.shift, zp=requant.zero_point))
            refs.append(prog.utop(EngineClass.VE, body, last_me))
        return refs

    def emit_store(bi, deps):
        m0, n0, mrows, ncols = blocks[bi]
        buf = bi % plan.acc_buffers
        src, src_stride = (buf_acc[buf], 4 * nb) if requant is None else (buf_out8[buf], s8)
        stores.append(prog.utop(EngineClass.DMA, c.store(src, src_stride, m0, mrows, n0, ncols), deps))

    # uTOps issue in program order, each once the one before it has issued, so each is emitted where
    # its dependencies are about to be met: a step's MEs, then the next step's A and B (their buffers
    # are free once the previous step's MEs are, as they must be for these to start), the epilogue of
    # the previous block and the store of the one before, whose waits overlap the MEs. The next
    # block's bias goes with its A and B when it waits for an older store (four buffers), else after
    # the store it waits for.
    epilogues = {}
    emit_load(0)
    emit_bias_load(0)
    for g, (bi, ci, _, _) in enumerate(steps):
        emit_me(g)
        if g + 1 < len(steps):
            emit_load(g + 1)
            if plan.acc_buffers > 3:
                emit_bias_load(g + 1)
        if ci == 0 and bi >= 1:
            epilogues[bi - 1] = emit_epilogue(bi - 1, me[g - 1])
        if ci == 0 and bi >= 2:
            emit_store(bi - 2, epilogues.pop(bi - 2))
            if progress is not None:
                progress(prog.instructions)
        if g + 1 < len(steps) and plan.acc_buffers == 3:
            emit_bias_load(g + 1)
    epilogues[len(blocks) - 1] = emit_epilogue(len(blocks) - 1, me[-1])
    for bi in sorted(epilogues):
        emit_store(bi, epilogues.pop(bi))
    if progress is not None:
        progress(prog.instructions)
    return stores


def _hbm_layout(m, k, n, bias, out_item):
    """HBM offsets of A, B, bias, C and the code in a GEMM image."""
    off_a = 0
    off_b = _up(off_a + m * _up(k, WORD_BYTES), _ALIGN)
    off_bias = _up(off_b + k * _up(n, WORD_BYTES), _ALIGN)
    off_c = _up(off_bias + (4 * n if bias else 0), _ALIGN)
    return off_a, off_b, off_bias, off_c, _up(off_c + m * _up(n * out_item, WORD_BYTES), _ALIGN)


def _sizes(total, block):
    """``(size, how many)`` of the blocks of ``block`` that cover ``total`` (the last may be shorter)."""
    return [(block, total // block)] + ([(total % block, 1)] if total % block else [])


def _instruction_count(cfg, plan, bias, requant):
    """Instructions :func:`gemm` emits for ``plan`` (headers included), counted without lowering (and
    per distinct block size, so in constant time): a shape too large for the HBM is refused before the
    long part of the work."""
    count = 1  # halt
    for height, rows_of_blocks in _sizes(plan.m, plan.mb):
        ve_utops = math.ceil(height / math.ceil(height / cfg.ve_count))
        for width, columns_of_blocks in _sizes(plan.n, plan.nb):
            tiles = math.ceil(width / cfg.me_cols)
            per_block = 2 * bias + 3 * ve_utops * bool(requant) + 2  # bias uTOp, VE uTOps (header, shape, requant), store
            for depth, depths in _sizes(plan.k, plan.kb):  # DMA uTOp (2 loads), ME uTOps
                per_block += depths * (3 + math.ceil(tiles / plan.tiles_per_utop)
                                       + 2 * tiles * math.ceil(depth / cfg.me_rows))
            count += rows_of_blocks * columns_of_blocks * per_block
    return count
