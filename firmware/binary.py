"""Quantized Add and Mul of two int8/uint8 tensors on the vector engines, as onnxruntime computes them.

onnxruntime's ``QLinearAdd`` and ``QLinearMul`` (and the QDQ ``Add`` / ``Mul`` it fuses into them) do
part of the arithmetic in binary32; ``ve.setf`` / ``ve.fma`` (a fused multiply-add rounded once)
reproduce it bit for bit:

``QLinearAdd``
    ``y = sat(RNE(fl(a·rAC + fl(b·rBC + K))))`` with ``rAC = fl(sA/sC)``, ``rBC = fl(sB/sC)`` and
    ``K = fl(zC − fma(zA, rAC, fl(rBC·zB)))``: two ``ve.fma``, the first into a binary32 buffer.
``QLinearMul``
    ``y = sat(RNE(fl(fl(p·r) + zC)))`` with ``p = (a − zA)·(b − zB)`` in int32 and
    ``r = fl(fl(sA·sB)/sC)``: ``a − zA`` and ``b − zB`` by ``ve.fma`` with R = 1 into int32, ``ve.mul``,
    then two ``ve.fma``.

A constant ``b`` (one value per channel, broadcast over pixels) is folded on the host with the same
arithmetic (:func:`~tcloud.isa.golden.fma_fp32`): Add reads the row ``fl(b·rBC + K)``, Mul the int32
row ``b − zB``. Block by block, a DMA uTOp loads rows of ``a`` (and ``b``), one VE uTOp computes the
block in place into ``a``'s buffer, and a DMA uTOp stores it; buffers are double-buffered (rows that would
fit one block make two, so two VEs can share them) and the constant rows are loaded once.
"""

from dataclasses import dataclass

import numpy as np

from tcloud.isa import EngineClass, Instr
from tcloud.isa.golden import fma_fp32, ve_fma, wrap_i32
from tcloud.isa.table import FmaResult, FmaSource, WORD_BYTES, field_max

from .gemm import DenseMatrix
from .program import DeferredStores, FirmwareError

_MAX_ROWS = min(field_max("ve.shape", "rows"), field_max("dma.load", "rows"))
_KINDS = {"int8": (FmaSource.INT8, FmaResult.INT8), "uint8": (FmaSource.UINT8, FmaResult.UINT8)}


def fp32_word(value):
    """The binary32 bit pattern of ``value`` (rounded to binary32 first)."""
    return int(np.float32(value).view(np.uint32))


@dataclass(frozen=True)
class BinaryOperand:
    """One quantized operand: its scale, zero point (in its own type) and type (``"int8"``/``"uint8"``)."""

    scale: float
    zero_point: int
    dtype: str


@dataclass(frozen=True)
class QLinearBinary:
    """What :func:`emit_binary` computes: ``y = a + b`` (``op="add"``) or ``y = a · b`` (``"mul"``).

    Parameters
    ----------
    op : str
    a, b, y : BinaryOperand
    constant : numpy.ndarray, optional
        ``b``'s codes (in its own type), one per stored column, when ``b`` is a constant along the
        columns; ``None`` when ``b`` is read as rows (a tensor of ``a``'s shape, or a constant matrix
        through :class:`PeriodicMatrix`).
    """

    op: str
    a: BinaryOperand
    b: BinaryOperand
    y: BinaryOperand
    constant: np.ndarray = None

    def __post_init__(self):
        if self.op not in ("add", "mul"):
            raise FirmwareError(f"unknown binary operator {self.op!r} (add or mul)")

    def multipliers(self):
        """The binary32 multipliers as onnxruntime computes them: ``(rAC, rBC)`` for add, ``(r,)`` for mul."""
        sa, sb, sc = np.float32(self.a.scale), np.float32(self.b.scale), np.float32(self.y.scale)
        if self.op == "add":
            return sa / sc, sb / sc
        return ((sa * sb) / sc,)

    def constant_rows(self, cols):
        """The rows the VE reads, ``[rows, cols]`` int32 (binary32 bit patterns where binary32):
        add: ``[K or fl(b·rBC + K)]``; mul: ``[−zA, −zB or (b − zB), zC]``."""
        if self.op == "add":
            rac, rbc = self.multipliers()
            inner = fma_fp32([self.a.zero_point], FmaSource.INT32, fp32_word(rac),
                             [fp32_word(rbc * np.float32(self.b.zero_point))])
            k = fma_fp32([self.y.zero_point], FmaSource.INT32, fp32_word(1.0), inner ^ (1 << 31))
            row = (np.repeat(k, cols) if self.constant is None
                   else fma_fp32(self._constant_row(cols), FmaSource.INT32, fp32_word(rbc), np.repeat(k, cols)))
            return _words([row])
        b_row = (np.full(cols, fp32_word(-self.b.zero_point), np.int64) if self.constant is None
                 else self._constant_row(cols) - self.b.zero_point)
        return _words([np.full(cols, fp32_word(-self.a.zero_point), np.int64), b_row,
                       np.full(cols, fp32_word(self.y.zero_point), np.int64)])

    def reference(self, a, b=None):
        """What :func:`emit_binary` computes, on codes in their own types (uint8 as 0 .. 255).

        ``a`` and ``b`` broadcast together; without ``b`` the operator's constant is used (one value:
        ``constant`` must then hold a single code). Returns ``y``'s codes."""
        a = np.asarray(a, np.int64)
        a_kind, b_kind, y_kind = _KINDS[self.a.dtype][0], _KINDS[self.b.dtype][0], _KINDS[self.y.dtype][1]
        if (b is None) == (self.constant is None):
            raise FirmwareError("reference: give b exactly when the operator has no constant")
        rows = np.asarray(self.constant_rows(1), np.int64)[:, 0] & 0xFFFFFFFF
        if self.op == "add":
            rac, rbc = map(fp32_word, self.multipliers())
            addend = rows[0] if b is None else ve_fma(np.asarray(b, np.int64), b_kind, rbc, rows[0], FmaResult.FP32)
            return ve_fma(a, a_kind, rac, addend, y_kind)
        one = fp32_word(1.0)
        da = ve_fma(a, a_kind, one, rows[0], FmaResult.INT32)
        db = (wrap_i32(rows[1]) if b is None
              else ve_fma(np.asarray(b, np.int64), b_kind, one, rows[1], FmaResult.INT32))
        x = ve_fma(wrap_i32(da * db), FmaSource.INT32, fp32_word(self.multipliers()[0]), 0, FmaResult.FP32)
        return ve_fma(x, FmaSource.FP32, one, rows[2], y_kind)

    def _constant_row(self, cols):
        row = np.full(cols, self.b.zero_point, np.int64)  # padding channels: b = zB
        row[:len(self.constant)] = np.asarray(self.constant, np.int64)
        return row


@dataclass(frozen=True)
class PeriodicMatrix:
    """A constant ``[period, cols]`` matrix read as the rows of a taller one: row ``r`` is row
    ``r mod period`` (a mask ``[S, S]`` added to every head's scores, for example).

    Parameters
    ----------
    hbm : int
    stride : int
        Bytes between rows.
    period : int
    """

    hbm: int
    stride: int
    period: int

    def load(self, sram, sram_stride, r0, rows, c0, cols):
        """``dma.load`` instructions for rows ``r0..r0+rows``, columns ``c0..c0+cols``."""
        out, r = [], r0
        while r < r0 + rows:
            count = min(self.period - r % self.period, r0 + rows - r)
            out += DenseMatrix(self.hbm, self.stride).load(sram + (r - r0) * sram_stride, sram_stride,
                                                           r % self.period, count, c0, cols)
            r += count
        return out


def _words(rows):
    return (np.asarray(rows, np.int64) & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


def binary_footprint(spec, cols, rows):
    """Scratchpad bytes of :func:`emit_binary` with blocks of ``rows`` rows of ``cols`` bytes."""
    constants = len(spec.constant_rows(cols)) * WORD_BYTES * cols
    return constants + 2 * rows * _row_bytes(spec, cols)


def _row_bytes(spec, cols):
    tensor_b = spec.constant is None
    if spec.op == "add":
        return cols * (1 + tensor_b * (1 + WORD_BYTES))  # a (and b, and the binary32 t)
    return cols * (1 + WORD_BYTES + tensor_b * (1 + WORD_BYTES))  # a, a - zA (and b, b - zB)


def emit_binary(prog, spec, a, b, dest, rows, cols, constants, sram_bytes):
    """Append ``dest = spec(a, b)`` (elementwise over ``rows × cols`` int8 bytes) to ``prog``.

    Parameters
    ----------
    prog : ProgramBuilder
    spec : QLinearBinary
    a, b, dest : layouts with ``load`` / ``store`` (``DenseMatrix``, ``NHWC``, ``PeriodicMatrix`` for ``b``)
        ``b`` is ``None`` exactly when ``spec.constant`` is set.
    rows, cols : int
        ``cols`` is a multiple of ``WORD_BYTES`` (padded channels).
    constants : DenseMatrix
        Where :meth:`QLinearBinary.constant_rows` lies in HBM.
    sram_bytes : int

    Returns
    -------
    int
        The scratchpad bytes used.

    Raises
    ------
    FirmwareError
        If one row's buffers exceed the budget.
    """
    if (b is None) != (spec.constant is not None):
        raise FirmwareError("a quantized binary operator needs either a tensor b or a constant b, not both or neither")
    const_rows = len(spec.constant_rows(cols))
    const_bytes = const_rows * WORD_BYTES * cols
    per_row = _row_bytes(spec, cols)
    block = min(-(-rows // 2), _MAX_ROWS, max(1, (sram_bytes - const_bytes) // (2 * per_row)))
    used = binary_footprint(spec, cols, block)
    if used > sram_bytes:
        raise FirmwareError(f"a quantized {spec.op} over rows of {cols} bytes needs {used} bytes of scratchpad, "
                            f"the budget is {sram_bytes}")
    setup = prog.utop(EngineClass.DMA, constants.load(0, WORD_BYTES * cols, 0, const_rows, 0, WORD_BYTES * cols))
    stores = DeferredStores(prog)
    for index, r0 in enumerate(range(0, rows, block)):
        count = min(block, rows - r0)
        base = const_bytes + (index % 2) * block * per_row
        buffers = _buffers(spec, base, block, cols)
        body = [] if b is None else b.load(buffers["b"], cols, r0, count, 0, cols)
        load = prog.utop(EngineClass.DMA, a.load(buffers["a"], cols, r0, count, 0, cols) + body, [stores.reuse(index)])
        compute = prog.utop(EngineClass.VE, _ve_body(spec, buffers, count, cols), [setup, load])
        stores.add(dest.store(buffers["a"], cols, r0, count, 0, cols), [compute])
    stores.flush()
    return used


def _buffers(spec, base, block, cols):
    """Scratchpad addresses of one block's buffers, from ``base``."""
    sizes = {"a": cols}
    if spec.op == "mul":
        sizes["da"] = WORD_BYTES * cols
    if spec.constant is None:
        sizes["b"] = cols
        sizes["t" if spec.op == "add" else "db"] = WORD_BYTES * cols
    addresses, offset = {}, base
    for name, size in sorted(sizes.items(), key=lambda item: -item[1]):  # words first: they stay aligned
        addresses[name] = offset
        offset += block * size
    return addresses


def _ve_body(spec, buf, rows, cols):
    words = WORD_BYTES * cols
    a_kind, y_kind = _KINDS[spec.a.dtype][0], _KINDS[spec.y.dtype][1]
    b_kind = _KINDS[spec.b.dtype][0]
    tensor_b = spec.constant is None
    shape = lambda dst, src1, src2: Instr("ve.shape", rows=rows, dst_stride=dst, src1_stride=src1,  # noqa: E731
                                          src2_stride=src2)
    setf = lambda word: Instr("ve.setf", value=word)  # noqa: E731
    if spec.op == "add":
        rac, rbc = map(fp32_word, spec.multipliers())
        body = []
        addend, addend_stride = 0, 0  # the constant row: K (b a tensor) or fl(b·rBC + K)
        if tensor_b:
            body += [shape(words, cols, 0), setf(rbc),
                     Instr("ve.fma", dst=buf["t"], src1=buf["b"], src2=0, n=cols, src1_kind=int(b_kind),
                           dst_kind=int(FmaResult.FP32))]
            addend, addend_stride = buf["t"], words
        return body + [shape(cols, cols, addend_stride), setf(rac),
                       Instr("ve.fma", dst=buf["a"], src1=buf["a"], src2=addend, n=cols, src1_kind=int(a_kind),
                             dst_kind=int(y_kind))]
    minus_za, b_row, zc = 0, words, 2 * words
    int32, fp32 = int(FmaResult.INT32), int(FmaSource.FP32)
    body = [shape(words, cols, 0), setf(fp32_word(1.0)),
            Instr("ve.fma", dst=buf["da"], src1=buf["a"], src2=minus_za, n=cols, src1_kind=int(a_kind),
                  dst_kind=int32)]
    if tensor_b:
        body += [Instr("ve.fma", dst=buf["db"], src1=buf["b"], src2=b_row, n=cols, src1_kind=int(b_kind),
                       dst_kind=int32),
                 shape(words, words, words), Instr("ve.mul", dst=buf["da"], src1=buf["da"], src2=buf["db"], n=cols)]
    else:
        body += [shape(words, words, 0), Instr("ve.mul", dst=buf["da"], src1=buf["da"], src2=b_row, n=cols)]
    r = fp32_word(spec.multipliers()[0])
    return body + [shape(words, words, 0), setf(r),
                   Instr("ve.fma", dst=buf["da"], src1=buf["da"], src2=0, n=cols, src1_kind=int(FmaSource.INT32),
                         src2_zero=1, dst_kind=int(FmaResult.FP32)),
                   shape(cols, words, 0), setf(fp32_word(1.0)),
                   Instr("ve.fma", dst=buf["a"], src1=buf["da"], src2=zc, n=cols, src1_kind=fp32,
                         dst_kind=int(y_kind))]
