"""Tiled int8 GEMM with int32 accumulation, optional bias and requantization.

``C[M][N] = requant(A[M][K] @ B[K][N] + bias[N])`` for any M, N, K, lowered to uTOps for one
:class:`~tcloud.isa.ArchConfig`.

Schedule
--------
The output is computed in blocks of ``mb × nb`` int32 accumulators held in the scratchpad; K is
streamed in chunks of ``kb``. For each chunk one DMA uTOp loads the A and B chunks into one of two
buffer sets (double buffering), then one ME uTOp per ``me_cols``-wide column tile runs
``me.loadw``/``me.matmul`` pairs over the chunk's ``me_rows``-deep k tiles. The column tiles are
independent, so the hardware spreads them over all matrix engines. After the last chunk an optional
VE uTOp adds the bias and requantizes, and a DMA uTOp stores the block. Accumulator and output
buffers are double-buffered too, so the store of one block overlaps the next block's compute.
Tiles smaller than the array (M, N, K not multiples of its size) use the exact ``k`` and ``n`` of
``me.loadw``: no padding reaches the arithmetic.
"""

import math
from dataclasses import dataclass

import numpy as np

from tcloud.isa import Instr, ProgramImage, Symbol, get_config
from tcloud.isa.encoding import check_field
from tcloud.isa.cost import HARVEST_COST_DEFAULT, utop_units
from tcloud.isa.errors import EncodingError
from tcloud.isa.table import BY_MNEMONIC, INSTRUCTION_BYTES, WORD_BYTES, EngineClass
from tcloud.isa.table import field_max as _field_max

from .program import MAX_DEPENDENCIES, FirmwareError, ProgramBuilder

_ALIGN = 64
MIB = 1 << 20
_TILE_OVERHEAD = 8
"""Cycles the planner charges per k tile of an ME uTOp besides streaming its rows: the turnaround of
its two instructions (the weights load into the idle bank while the previous tile streams;
measured by ``benchmarks/me_utilization``)."""


def _up(value, multiple):
    return -(-value // multiple) * multiple


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


def _sram_footprint(cfg, mb, nb, kb, bias, requant, scales=False):
    """Scratchpad bytes of a plan (the bias goes straight into the accumulators: no buffer)."""
    total = 2 * mb * _up(kb, WORD_BYTES) + 2 * kb * _up(nb, WORD_BYTES) + 2 * mb * 4 * nb
    total += 2 * 4 * nb * bool(scales)
    if requant:
        total += 2 * mb * _up(nb, WORD_BYTES)
    return total


def me_utop_cost(config, mb, kb):
    """Declared cost of the largest ME uTOp of a plan: ``kb`` deep (in array-deep tiles) over ``mb``
    rows, accumulating into a region loaded from the previous K chunk."""
    rows, cols = config.me_rows, config.me_cols
    a_stride = _up(kb, WORD_BYTES)
    body = []
    for t0 in range(0, kb, rows):
        body += [Instr("me.loadw", w=0, k=min(rows, kb - t0), n=cols, w_stride=cols),
                 Instr("me.matmul", a=t0, out=mb * a_stride, m=mb, a_stride=a_stride, out_stride=4 * cols, acc=1)]
    return utop_units(body, config)


def plan_gemm(config, m, k, n, *, bias=False, requant=False, scales=False, max_utop_cost=HARVEST_COST_DEFAULT,
              sram_bytes=None):
    """Choose block sizes for ``C[m][n] = A[m][k] @ B[k][n]`` on ``config``.

    The plan minimises a simple estimate ``max(ME cycles, HBM cycles)`` over power-of-two block
    sizes that fit the scratchpad and the ISA's field limits, and whose ME uTOps cost at most
    ``max_utop_cost`` work units (:mod:`tcloud.isa.cost`; ``None``: no limit), so that the
    ``harvest`` policy may run them on engines the tenant does not own. ``sram_bytes`` bounds the
    footprint (default: the whole scratchpad). ``scales``: the requantization reads a row of
    per-column scales (:class:`ScaleRow`).

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
    # a block's epilogue and the next loads wait for every column tile (plus a store): one wait slot's
    # worth keeps the live dependency groups within the tokens
    max_tiles = MAX_DEPENDENCIES // 3 - 1
    nb_opts = sorted({min(_up(n, cols), max_n // cols * cols, max_tiles * cols, cols << i) for i in range(0, 12)})
    kb_opts = sorted({min(_up(k, rows), max_k // rows * rows, rows << i) for i in range(0, 12)})
    hbm_a, hbm_b = m * _up(k, WORD_BYTES), k * _up(n, WORD_BYTES)
    budget = cfg.sram_bytes if sram_bytes is None else sram_bytes
    best = None
    for mb in mb_opts:
        for nb in nb_opts:
            for kb in kb_opts:
                footprint = _sram_footprint(cfg, mb, nb, kb, bias, requant, scales)
                if footprint > budget:
                    continue
                if max_utop_cost is not None and me_utop_cost(cfg, mb, kb) > max_utop_cost:
                    continue
                blocks = math.ceil(m / mb) * math.ceil(n / nb)
                col_tiles = math.ceil(nb / cols)
                # per k tile: stream mb rows; per uTOp: write the accumulators back and, for later
                # K chunks, load them first (about 2*mb scratchpad row accesses)
                utop_rows = math.ceil(kb / rows) * (mb + _TILE_OVERHEAD) + 2 * mb
                me_cycles = (blocks * math.ceil(k / kb) * math.ceil(col_tiles / cfg.me_count) * utop_rows)
                traffic = hbm_a * math.ceil(n / nb) + hbm_b * math.ceil(m / mb) + m * n * 4
                estimate = max(me_cycles, traffic / cfg.hbm_bytes_per_cycle)
                key = (estimate, footprint)
                if best is None or key < best[0]:
                    best = (key, GemmPlan(m, k, n, mb, nb, kb, footprint, estimate))
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
    plan = plan or plan_gemm(cfg, m, k, n, bias=bias, requant=requant is not None, max_utop_cost=max_utop_cost)
    out_dtype, out_item = ("i8", 1) if requant else ("i32", 4)

    stride_a, stride_b, stride_c = _up(k, WORD_BYTES), _up(n, WORD_BYTES), _up(n * out_item, WORD_BYTES)
    hbm_stride_max = _field_max("dma.load", "hbm_stride")
    if max(stride_a, stride_b, stride_c) > hbm_stride_max:
        raise FirmwareError(f"GEMM {m}x{k}x{n}: a row of A, B or C exceeds the largest DMA stride "
                            f"({hbm_stride_max} bytes)")
    off_a, off_b, off_bias, off_c, code_at = _hbm_layout(m, k, n, bias, out_item)
    count = _instruction_count(cfg, plan, bias, requant is not None)
    hbm_bytes = _up(code_at + INSTRUCTION_BYTES * count, _ALIGN)
    if hbm_bytes > cfg.hbm_bytes:
        raise FirmwareError(f"GEMM {m}x{k}x{n} needs {hbm_bytes / MIB:.1f} MiB of HBM ({code_at / MIB:.1f} MiB "
                            f"of operands and result, {(hbm_bytes - code_at) / MIB:.1f} MiB of code), but config "
                            f"{cfg.name!r} has {cfg.hbm_mib} MiB")

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
    buf_a = [0, mb * _up(kb, WORD_BYTES)]
    sa = _up(kb, WORD_BYTES)
    base = 2 * buf_a[1]
    sb = _up(nb, WORD_BYTES)
    buf_b = [base, base + kb * sb]
    base += 2 * kb * sb
    buf_acc = [base, base + mb * 4 * nb]
    base += 2 * mb * 4 * nb
    scale_row = isinstance(requant, ScaleRow)
    buf_scale = [base, base + 4 * nb]
    if scale_row:
        base += 2 * 4 * nb
    s8 = _up(nb, WORD_BYTES)
    buf_out8 = [base, base + mb * s8]
    if requant is not None:
        base += 2 * mb * s8
    assert base == plan.sram_bytes

    chunk_me = []  # ME uTOps of every K chunk, in global chunk order
    stores = []

    def finish_block(bi, m0, n0, mrows, ncols, acc, last_me):
        """Bias, requantization and the store of one output block."""
        src, src_stride = acc, 4 * nb
        store_deps = last_me
        if epilogue:
            body = []
            if relu:
                body += [Instr("ve.shape", rows=mrows, dst_stride=4 * nb, src1_stride=4 * nb, src2_stride=0),
                         Instr("ve.relu", dst=acc, src=acc, n=ncols)]
            if requant is not None:
                out8 = buf_out8[bi % 2]
                body.append(Instr("ve.shape", rows=mrows, dst_stride=s8, src1_stride=4 * nb, src2_stride=0))
                if scale_row:
                    body.append(Instr("ve.requantf", dst=out8, src1=acc, src2=buf_scale[bi % 2], n=ncols,
                                      zp=requant.zero_point))
                else:
                    body.append(Instr("ve.requant", dst=out8, src=acc, n=ncols, mult=requant.multiplier,
                                      shift=requant.shift, zp=requant.zero_point))
                src, src_stride = out8, s8
            store_deps = [prog.utop(EngineClass.VE, body, last_me)]
        stores.append(prog.utop(EngineClass.DMA, c.store(src, src_stride, m0, mrows, n0, ncols), store_deps))

    deferred = []  # the previous block's post-processing and store, emitted one block late
    blocks = [(m0, n0) for m0 in range(0, m, mb) for n0 in range(0, n, nb)]
    for bi, (m0, n0) in enumerate(blocks):
        mrows, ncols = min(mb, m - m0), min(nb, n - n0)
        acc = buf_acc[bi % 2]
        prev_store = stores[bi - 2] if bi >= 2 else None
        last_me = [None] * math.ceil(ncols / cols)
        for ci, k0 in enumerate(range(0, k, kb)):
            kdepth = min(kb, k - k0)
            g = len(chunk_me)
            s = g % 2
            body = a.load(buf_a[s], sa, m0, mrows, k0, kdepth) + b.load(buf_b[s], sb, k0, kdepth, n0, ncols)
            deps = list(chunk_me[g - 2]) if g >= 2 else []
            if ci == 0 and (bias is not None or scale_row):
                if bias is not None:  # the bias row, once per accumulator row: the MEs accumulate onto it
                    body += bias.load(acc, 4 * nb, 0, mrows, n0, ncols)
                if scale_row:
                    body += requant.scales.load(buf_scale[bi % 2], 0, 0, 1, n0, ncols)
                deps.append(prev_store)
            load = prog.utop(EngineClass.DMA, body, deps)
            refs = []
            for j, c0 in enumerate(range(0, ncols, cols)):
                width = min(cols, ncols - c0)
                body = []
                for t0 in range(0, kdepth, rows):
                    body.append(Instr("me.loadw", w=buf_b[s] + t0 * sb + c0, k=min(rows, kdepth - t0),
                                      n=width, w_stride=sb))
                    body.append(Instr("me.matmul", a=buf_a[s] + t0, out=acc + 4 * c0, m=mrows,
                                      a_stride=sa, out_stride=4 * nb, acc=int(ci > 0 or t0 > 0 or bias is not None)))
                deps = [load, last_me[j]] + ([prev_store] if ci == 0 else [])
                last_me[j] = prog.utop(EngineClass.ME, body, deps)
                refs.append(last_me[j])
            chunk_me.append(refs)
            if ci == 0:
                # uTOps issue in program order: the previous block's store waits for its last MEs, so
                # emitting it only now keeps it from holding back this block's first load.
                for emit in deferred:
                    emit()
                deferred.clear()
        deferred.append(lambda args=(bi, m0, n0, mrows, ncols, acc, last_me): finish_block(*args))
        if progress is not None:
            progress(prog.instructions)
    for emit in deferred:
        emit()
    return stores


def _hbm_layout(m, k, n, bias, out_item):
    """HBM offsets of A, B, bias, C and the code in a GEMM image."""
    off_a = 0
    off_b = _up(off_a + m * _up(k, WORD_BYTES), _ALIGN)
    off_bias = _up(off_b + k * _up(n, WORD_BYTES), _ALIGN)
    off_c = _up(off_bias + (4 * n if bias else 0), _ALIGN)
    return off_a, off_b, off_bias, off_c, _up(off_c + m * _up(n * out_item, WORD_BYTES), _ALIGN)


def _sizes(total, block):
    """Sizes of the blocks of ``block`` that cover ``total`` (the last may be shorter)."""
    return [block] * (total // block) + ([total % block] if total % block else [])


def _instruction_count(cfg, plan, bias, requant):
    """Instructions :func:`gemm` emits for ``plan`` (headers included), counted without lowering: a
    shape too large for the HBM is refused before the long part of the work."""
    count = 0
    for width in _sizes(plan.n, plan.nb):
        tiles = math.ceil(width / cfg.me_cols)
        for depth in _sizes(plan.k, plan.kb):
            count += 3 + tiles * (1 + 2 * math.ceil(depth / cfg.me_rows))  # DMA uTOp (2 loads), ME uTOps
        count += bias + (3 if requant else 0) + 2  # bias load, VE uTOp (header, shape, requant), store
    return math.ceil(plan.m / plan.mb) * count + 1  # halt
