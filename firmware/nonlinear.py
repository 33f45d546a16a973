"""Softmax and layer normalization of int8 rows on the vector engines; GELU as a ``ve.lut`` table.

Method
------
Both kernels keep exact integers as long as they can (a row's max, its sums and sums of squares are
int32 and exact) and do the rest in binary32 with ``ve.fma`` / ``ve.fmav``, whose every rounding the ISA
specifies, so :func:`softmax_reference` and :func:`layernorm_reference` (NumPy on the golden model's
arithmetic) compute what the kernels compute bit for bit. A per-row scalar (max, mean, reciprocal sum,
inverse standard deviation) is used across its row through ``ve.shape.src2_row``.

``softmax_rows``
    ``d = max(q - max(q), d_min)`` (int32); ``t = fl(d·a)`` with ``a = fl(s_x·log2 e)``;
    ``k = rne(t)``, ``f = t - k`` (exact, |f| <= 1/2); ``2^f`` by a degree-6 Taylor polynomial in
    Horner form (one ``ve.fma``, five ``ve.fmav``; truncation below 1.7e-7 relative); ``2^k`` by adding
    ``k·2^23`` to the bit pattern (int32 ``ve.add``); ``d_min`` keeps ``k >= -124`` so every value stays
    normal. ``E = rne(e·2^m)`` in int32 with ``m = 30 - ceil(log2 n)`` (the row sum stays below 2^31),
    ``S = redsum(E)``; ``g = 1/(S·s_y)`` from the bit-pattern guess ``0x7EF311C3 - bits`` (within 5.1 %)
    and three Newton steps ``g = g·(2 - v·g)`` (relative error 2.6e-3, 6.7e-6, 4.5e-11, under the
    binary32 rounding of each step); ``y = sat(rne(fl(fl(E)·g)) + z_y)`` by ``ve.requantf``. The input zero point does not
    matter (softmax is shift invariant).
``layernorm_rows``
    ``c = rne(S1·fl(1/n))`` centres the codes: ``u = q - c`` (int32), ``S1' = Σu``, ``S2' = Σu²``
    (exact; |S1'| <= n/2 + 1, so no cancellation of large sums), ``W = fl(n·S2' + fl(ε' - S1'²))``
    with ``ε' = fl(ε·n²/s_x²)``, i.e. ``n²·(var/s_x² + ε/s_x²)``; ``ρ = 1/sqrt(W)`` from the guess
    ``0x5F3759DF - bits/2`` (within 3.5 %) and three Newton steps ``ρ = ρ·(3/2 - (W/2)·ρ²)`` (1.8e-3, 4.7e-6, 3e-11);
    ``z = fl(fl(n·u - S1')·ρ)`` (the normalised value; ``n·u - S1'`` is exact), ``w = fl(z·γ'_j)``,
    ``y = sat(rne(fl(w + β'_j)))`` with ``γ' = fl(γ/s_y)`` and ``β' = fl(β/s_y + z_y)``. The input zero
    point cancels.
GELU (and any other unary operator of int8 codes)
    ``ve.lut`` with :func:`gelu_table`: exact, the float result quantized once per code.

Why binary32 rather than I-BERT's integer polynomials: ``ve.fma`` already gives every lane a binary32
multiply-add with one specified rounding; ``ve.fmav`` only swaps which operand is the scalar (two word
multiplexers per lane), while I-BERT's integer exp and Newton square root need a per-element variable
shift and an integer divider. Binary32 keeps relative precision near 2^-23 over the whole range, so the
int8 outputs differ from float64 only where the exact value lies within ~1e-5 of a rounding boundary.
"""

import math
from dataclasses import dataclass

import numpy as np

from tcloud.isa import EngineClass, Instr, ProgramImage, Segment, Symbol, get_config
from tcloud.isa.golden import requantize, requantize_fp32, ve_fma, ve_fmav, wrap_i32
from tcloud.isa.table import LUT_BYTES, FmaResult, FmaSource, field_max

from .binary import fp32_word
from .gemm import DenseMatrix
from .program import DeferredStores, FirmwareError, ProgramBuilder

_MAX_ROWS = min(field_max("ve.shape", "rows"), field_max("dma.load", "rows"))
_WORD = 4
_FP32, _INT32 = FmaSource.FP32, FmaSource.INT32
EXP2_COEFFICIENTS = tuple(fp32_word(math.log(2) ** i / math.factorial(i)) for i in range(7))
"""Binary32 Taylor coefficients of ``2^f = Σ (f·ln 2)^i / i!``, ``i = 0..6`` (|f| <= 1/2)."""
RECIPROCAL_GUESS = 0x7EF311C3
"""``RECIPROCAL_GUESS - bits(v)`` is the bit pattern of ``1/v`` within 5.1 % (positive normal v)."""
RECIPROCAL_STEPS = 3
RSQRT_GUESS = 0x5F3759DF
"""``RSQRT_GUESS - bits(v)/2`` is the bit pattern of ``1/sqrt(v)`` within 3.5 % (positive normal v)."""
RSQRT_STEPS = 3
EXP_MIN_EXPONENT = -124
"""``softmax_rows`` clamps ``q - max`` so that ``rne(t) >= EXP_MIN_EXPONENT``: ``2^t`` stays normal."""
_ONE, _TWO, _HALF_NEG, _THREE_HALVES, _MINUS_ONE = (fp32_word(v) for v in (1.0, 2.0, -0.5, 1.5, -1.0))


def _signed(word):
    """A 32-bit pattern as the signed value of ``ve.fill``'s field."""
    return int(np.int64(word & 0xFFFFFFFF).astype(np.uint32).view(np.int32))


def _up4(value):
    return -(-value // _WORD) * _WORD


def _check_shape(kernel, rows, n):
    for name, value in (("rows", rows), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FirmwareError(f"{kernel}: {name} must be a positive integer, got {value!r}")
    if n > field_max("ve.add", "n"):
        raise FirmwareError(f"{kernel}: rows of {n} elements exceed one VE instruction's {field_max('ve.add', 'n')}")


@dataclass(frozen=True)
class SoftmaxConstants:
    """The constants of :func:`softmax_rows` for rows of ``n`` codes (binary32 values as bit patterns)."""

    a: int
    """``fl(s_x · log2 e)``."""
    d_min: int
    """Smallest ``q - max`` kept: ``rne(fl(d_min·a)) >= EXP_MIN_EXPONENT``."""
    scale_m: int
    """``2^m``: ``E = rne(e · 2^m)``, ``m = 30 - ceil(log2 n)``."""
    minus_y_scale: int
    """``-s_y``."""

    @classmethod
    def of(cls, n, x_scale, y_scale):
        if not (x_scale > 0 and y_scale > 0):
            raise FirmwareError(f"softmax: scales must be positive, got x_scale={x_scale!r}, y_scale={y_scale!r}")
        a = np.float32(x_scale / math.log(2))
        d_min = -min(255, math.floor(-EXP_MIN_EXPONENT / float(a)))
        m = 30 - math.ceil(math.log2(n))
        return cls(int(a.view(np.uint32)), d_min, fp32_word(2.0 ** m), fp32_word(-y_scale))


def onnxruntime_softmax_scale(y_scale):
    """The output scale onnxruntime's ``QLinearSoftmax`` really applies: ``1 / floor(1 / y_scale)``.

    Its CPU kernel multiplies each exponential by ``floor(1.0f / y_scale)`` (binary32) before dividing by
    the row's sum, so an output scale of 1/255 (the quantizer's choice for QDQ models, which onnxruntime
    runs as ``QLinearSoftmax`` too) becomes 1/254: binary32 ``1/255`` is a
    little above 1/255, its reciprocal a little below 255. The compiler passes this scale to
    :func:`emit_softmax` so the pNPU computes what onnxruntime computes.

    Raises
    ------
    FirmwareError
        If ``y_scale`` is not positive, ``1 / y_scale`` is below 1, or it overflows binary32.
    """
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        reciprocal = np.float32(1.0) / np.float32(y_scale)
    multiplier = math.floor(reciprocal) if np.isfinite(reciprocal) and reciprocal > 0 else 0
    if multiplier < 1:
        raise FirmwareError(f"softmax: output scale {y_scale!r} leaves onnxruntime no output step "
                            f"(floor(1 / y_scale) = {multiplier})")
    return 1.0 / multiplier


def softmax_reference(q, x_scale, y_scale, y_zero_point):
    """What :func:`softmax_rows` computes: int8 softmax of each row of ``q`` (rows × n int8 codes)."""
    q = np.asarray(q, dtype=np.int64)
    c = SoftmaxConstants.of(q.shape[-1], x_scale, y_scale)
    d = np.maximum(q - q.max(axis=-1, keepdims=True), c.d_min)
    t = ve_fma(d, _INT32, c.a, 0, FmaResult.FP32)
    k = ve_fma(t, _FP32, _ONE, 0, FmaResult.INT32)
    f = ve_fma(k, _INT32, _MINUS_ONE, t, FmaResult.FP32)
    p = ve_fma(f, _FP32, EXP2_COEFFICIENTS[6], EXP2_COEFFICIENTS[5], FmaResult.FP32)
    for coefficient in EXP2_COEFFICIENTS[4::-1]:
        p = ve_fmav(p, _FP32, f, coefficient, FmaResult.FP32)
    e = wrap_i32(p + ve_fma(k, _INT32, fp32_word(2.0 ** 23), 0, FmaResult.INT32))
    big = ve_fma(e, _FP32, c.scale_m, 0, FmaResult.INT32)
    total = wrap_i32(big.sum(axis=-1))
    minus_v = ve_fma(total, _INT32, c.minus_y_scale, 0, FmaResult.FP32)
    g = reciprocal_of_negated(minus_v)
    return requantize_fp32(big, g[..., None], y_zero_point, True)


def reciprocal_of_negated(minus_v):
    """``1/v`` for binary32 words ``-v`` (v positive normal) as :func:`softmax_rows` computes it."""
    g = wrap_i32(_signed(RECIPROCAL_GUESS | 1 << 31) - wrap_i32(minus_v))
    for _ in range(RECIPROCAL_STEPS):
        g = ve_fmav(g, _FP32, ve_fmav(minus_v, _FP32, g, _TWO, FmaResult.FP32), 0, FmaResult.FP32)
    return g


def rsqrt(w):
    """``1/sqrt(w)`` for binary32 words ``w`` (positive normal) as :func:`layernorm_rows` computes it."""
    g = wrap_i32(_signed(RSQRT_GUESS) - requantize(w, 1, 1, 0, False))
    minus_half = ve_fma(w, _FP32, _HALF_NEG, 0, FmaResult.FP32)
    for _ in range(RSQRT_STEPS):
        square = ve_fmav(g, _FP32, g, 0, FmaResult.FP32)
        g = ve_fmav(g, _FP32, ve_fmav(square, _FP32, minus_half, _THREE_HALVES, FmaResult.FP32), 0, FmaResult.FP32)
    return g


@dataclass(frozen=True)
class LayerNormConstants:
    """The constants of :func:`layernorm_rows` (binary32 values as bit patterns)."""

    inverse_n: int
    n: int
    epsilon: int
    """``ε' = fl(ε · n² / s_x²)``."""
    gamma: np.ndarray
    """``fl(γ_j / s_y)`` per feature."""
    beta: np.ndarray
    """``fl(β_j / s_y + z_y)`` per feature."""

    @classmethod
    def of(cls, n, x_scale, gamma, beta, epsilon, y_scale, y_zero_point):
        if not (x_scale > 0 and y_scale > 0 and epsilon > 0):
            raise FirmwareError(f"layernorm: scales and epsilon must be positive, got x_scale={x_scale!r}, "
                                f"y_scale={y_scale!r}, epsilon={epsilon!r}")
        gamma, beta = (np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for v in (gamma, beta))
        eps = np.float32(epsilon * n * n / (x_scale * x_scale))
        if not 2.0 ** -126 <= eps < 2.0 ** 100:
            raise FirmwareError(f"layernorm: epsilon·n²/x_scale² = {epsilon * n * n / x_scale ** 2!r} is outside "
                                "the binary32 range the kernel supports")
        words = [np.asarray(v, np.float32).view(np.uint32).astype(np.int64)
                 for v in (gamma / y_scale, beta / y_scale + y_zero_point)]
        return cls(fp32_word(1.0 / n), fp32_word(n), int(eps.view(np.uint32)), *words)


def layernorm_reference(q, x_scale, gamma, beta, epsilon, y_scale, y_zero_point):
    """What :func:`layernorm_rows` computes: int8 layer normalization of each row of ``q``."""
    q = np.asarray(q, dtype=np.int64)
    n = q.shape[-1]
    c = LayerNormConstants.of(n, x_scale, gamma, beta, epsilon, y_scale, y_zero_point)
    centre = ve_fma(q.sum(axis=-1), _INT32, c.inverse_n, 0, FmaResult.INT32)
    u = q - centre[..., None]
    s1, s2 = u.sum(axis=-1), (u * u).sum(axis=-1)
    minus_s1 = ve_fma(s1, _INT32, _MINUS_ONE, 0, FmaResult.FP32)
    w = ve_fma(s2, _INT32, c.n, ve_fmav(s1, _INT32, minus_s1, c.epsilon, FmaResult.FP32), FmaResult.FP32)
    w = np.maximum(wrap_i32(w), c.epsilon)  # ve.max on the bit patterns
    rho = rsqrt(w)
    z = ve_fmav(ve_fma(u, _INT32, c.n, minus_s1[..., None], FmaResult.FP32), _FP32, rho[..., None], 0, FmaResult.FP32)
    scaled = ve_fmav(z, _FP32, c.gamma, 0, FmaResult.FP32)
    return ve_fma(scaled, _FP32, _ONE, c.beta, FmaResult.INT8)


def gelu_table(x_scale, x_zero_point, y_scale, y_zero_point):
    """``ve.lutload`` table of the int8 GELU ``y = x·Φ(x)`` (erf form), computed in float64 and quantized
    once (round half to even, saturated): exact for every code."""
    q = np.arange(LUT_BYTES, dtype=np.int64)
    q = np.where(q >= 128, q - LUT_BYTES, q)  # byte i is the output for input byte i
    x = x_scale * (q - x_zero_point)
    y = 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    return np.clip(np.rint(y / y_scale) + y_zero_point, -128, 127).astype(np.int8)


class _Scratch:
    """Word-aligned scratchpad allocation."""

    def __init__(self):
        self.end = 0

    def take(self, nbytes):
        start, self.end = self.end, self.end + _up4(nbytes)
        return start


def emit_rows(prog, kernel, source, dest, rows, n, row_words, columns, body, sram_bytes, vectors=None):
    """Append a row kernel to ``prog``: for each block of rows, DMA the int8 rows in, run ``body`` on them in
    one VE uTOp and DMA them out. Blocks alternate between two sets of buffers (when two fit), so one
    block's transfers overlap another's computation and two vector engines can work at once; even rows that
    fit one block are split in two for that. Stores are appended one block late
    (:class:`~tcloud.firmware.program.DeferredStores`).

    Parameters
    ----------
    prog : ProgramBuilder
    kernel : str
        Its name, for messages.
    source, dest : layouts with ``load`` / ``store`` (``DenseMatrix``)
        ``rows`` rows of ``n`` int8 codes.
    rows, n : int
    row_words, columns : int
        Word buffers the body needs per element and per row.
    body : callable
        ``body(rows, n, row_stride, x, words, cols, scalars)`` → VE instructions.
    sram_bytes : int
        Scratchpad budget from address 0.
    vectors : DenseMatrix, optional
        Two rows of ``n`` binary32 words (gamma, beta) side by side, loaded once.

    Returns
    -------
    int
        The scratchpad bytes used.

    Raises
    ------
    FirmwareError
        Bad sizes, or a row that does not fit the budget.
    """
    _check_shape(kernel, rows, n)
    stride = _up4(n)
    shared = 2 * _WORD * n if vectors is not None else 0
    per_row = stride + row_words * _WORD * n + columns * _WORD
    sets = 2 if rows > 1 and sram_bytes - shared - 2 * _SET_WORDS * _WORD >= 2 * per_row else 1
    block = min(-(-rows // sets), _MAX_ROWS, (sram_bytes - shared - sets * _SET_WORDS * _WORD) // (sets * per_row))
    if block < 1:
        raise FirmwareError(f"{kernel}: a row of {n} elements needs {shared + _SET_WORDS * _WORD + per_row} bytes of "
                            f"scratchpad, the budget is {sram_bytes}")
    sram = _Scratch()
    buffers = [_RowBuffers.take(sram, block, stride, n, row_words, columns) for _ in range(sets)]
    table = gamma_beta = None
    if vectors is not None:
        gamma_beta = sram.take(shared)
        table = prog.utop(EngineClass.DMA, vectors.load(gamma_beta, 0, 0, 1, 0, shared))
    stores = DeferredStores(prog, sets)
    for index, r0 in enumerate(range(0, rows, block)):
        count, buf = min(block, rows - r0), buffers[index % sets]
        scalars = buf.scalars + ([gamma_beta] if gamma_beta is not None else [])
        load = prog.utop(EngineClass.DMA, source.load(buf.x, stride, r0, count, 0, n), [stores.reuse(index)])
        compute = prog.utop(EngineClass.VE, body(count, n, stride, buf.x, buf.words, buf.cols, scalars), [load, table])
        stores.add(dest.store(buf.x, stride, r0, count, 0, n), [compute])
    stores.flush()
    return sram.end


_SET_WORDS = 2
"""Scalar words of each buffer set (constants a body fills in)."""


@dataclass(frozen=True)
class _RowBuffers:
    """The scratchpad of one block of :func:`emit_rows`: the int8 rows, word buffers, per-row words, scalars."""

    x: int
    words: list
    cols: list
    scalars: list

    @classmethod
    def take(cls, sram, block, stride, n, row_words, columns):
        return cls(sram.take(block * stride), [sram.take(block * _WORD * n) for _ in range(row_words)],
                   [sram.take(block * _WORD) for _ in range(columns)], [sram.take(_WORD) for _ in range(_SET_WORDS)])


def _rows_image(kernel, config, rows, n, row_words, columns, body, gamma_beta=None):
    """Program image of :func:`emit_rows` over input ``X`` and output ``Y`` (``gamma_beta``: the vectors)."""
    cfg = get_config(config)
    _check_shape(kernel, rows, n)
    stride = _up4(n)
    x_at, y_at = 0, _up4(rows * stride)
    data_at = 2 * y_at
    segments, vectors = [], None
    if gamma_beta is not None:
        segments = [Segment(data_at, np.concatenate(gamma_beta).astype("<u4").tobytes())]
        vectors = DenseMatrix(data_at, 0)
    code_at = data_at + _up4(2 * _WORD * n if gamma_beta is not None else 0)
    prog = ProgramBuilder()
    used = emit_rows(prog, kernel, DenseMatrix(x_at, stride), DenseMatrix(y_at, stride), rows, n, row_words, columns,
                     body, cfg.sram_bytes, vectors)
    code = prog.build(cfg)
    symbols = [Symbol("X", "input", "i8", (rows, n), x_at, stride), Symbol("Y", "output", "i8", (rows, n), y_at, stride)]
    return ProgramImage.for_config(cfg, code, entry=code_at, hbm_bytes=_up4(code_at + len(code)),
                                   sram_bytes=used, symbols=symbols, segments=segments)


def _shape(rows, dst=0, src1=0, src2=0, src2_row=0):
    return Instr("ve.shape", rows=rows, dst_stride=dst, src1_stride=src1, src2_stride=src2, src2_row=src2_row)


def _fma(dst, src1, kind, n, result, src2=None):
    extra = {"src2": 0, "src2_zero": 1} if src2 is None else {"src2": src2}
    return Instr("ve.fma", dst=dst, src1=src1, n=n, src1_kind=int(kind), dst_kind=int(result), **extra)


def _fmav(dst, src1, src2, n, kind=_FP32):
    return Instr("ve.fmav", dst=dst, src1=src1, src2=src2, n=n, src1_kind=int(kind), dst_kind=int(FmaResult.FP32))


def _setf(word):
    return Instr("ve.setf", value=word & 0xFFFFFFFF)


def softmax_rows(config, rows, n, x_scale, y_scale, y_zero_point):
    """Program image of the int8 softmax of each row (:func:`softmax_reference` gives its result).

    Parameters
    ----------
    config : ArchConfig or str
    rows, n : int
        Rows of ``n`` int8 codes.
    x_scale : float
        Input scale (the input zero point does not change the result).
    y_scale, y_zero_point : float, int
        Output quantization (int8).

    Returns
    -------
    ProgramImage
        Input ``X`` and output ``Y`` (i8, rows × n; rows 4-byte aligned in HBM).

    Raises
    ------
    FirmwareError
        Non-positive sizes or scales, or a row that does not fit the scratchpad.
    """
    return _rows_image("softmax", config, rows, n, 3, 6, _softmax_body(SoftmaxConstants.of(n, x_scale, y_scale),
                                                                        y_zero_point))


def emit_softmax(prog, source, dest, rows, n, x_scale, y_scale, y_zero_point, sram_bytes):
    """Append the int8 softmax of each row (:func:`softmax_reference`) to ``prog``; ``source``/``dest``
    hold ``rows`` rows of ``n`` codes (a uint8 output passes its zero point minus 128). Returns the
    scratchpad bytes used."""
    body = _softmax_body(SoftmaxConstants.of(n, x_scale, y_scale), y_zero_point)
    return emit_rows(prog, "softmax", source, dest, rows, n, 3, 6, body, sram_bytes)


def _softmax_body(c, y_zero_point):
    def body(r, n, sx, x, words, cols, scalars):
        d, t, k = words
        row_max, total, minus_v, g, step, guess = cols
        d_min, c5 = scalars
        wide = 4 * n
        out = [_shape(1), Instr("ve.fill", dst=d_min, n=1, value=c.d_min),
               Instr("ve.fill", dst=c5, n=1, value=_signed(EXP2_COEFFICIENTS[5])),
               Instr("ve.fill", dst=guess, n=r, value=_signed(RECIPROCAL_GUESS | 1 << 31)),
               _shape(r, _WORD, sx), Instr("ve.redmax", dst=row_max, src=x, n=n, src_i8=1),
               _shape(r, wide, sx, _WORD, src2_row=1), Instr("ve.sub", dst=d, src1=x, src2=row_max, n=n, src1_i8=1),
               _shape(r, wide, wide, 0, src2_row=1), Instr("ve.max", dst=d, src1=d, src2=d_min, n=n),
               _setf(c.a), _fma(t, d, _INT32, n, FmaResult.FP32),
               _setf(_ONE), _fma(k, t, _FP32, n, FmaResult.INT32),
               _shape(r, wide, wide, wide), _setf(_MINUS_ONE), _fma(d, k, _INT32, n, FmaResult.FP32, src2=t),
               _shape(r, wide, wide, 0, src2_row=1), _setf(EXP2_COEFFICIENTS[6]),
               _fma(t, d, _FP32, n, FmaResult.FP32, src2=c5), _shape(r, wide, wide, wide)]
        for coefficient in EXP2_COEFFICIENTS[4::-1]:
            out += [_setf(coefficient), _fmav(t, t, d, n)]
        out += [_setf(fp32_word(2.0 ** 23)), _fma(k, k, _INT32, n, FmaResult.INT32),
                Instr("ve.add", dst=t, src1=t, src2=k, n=n),
                _setf(c.scale_m), _fma(k, t, _FP32, n, FmaResult.INT32),
                _shape(r, _WORD, wide), Instr("ve.redsum", dst=total, src=k, n=n),
                _shape(1), _setf(c.minus_y_scale), _fma(minus_v, total, _INT32, r, FmaResult.FP32),
                Instr("ve.sub", dst=g, src1=guess, src2=minus_v, n=r)]
        for _ in range(RECIPROCAL_STEPS):
            out += [_setf(_TWO), _fmav(step, minus_v, g, r), _setf(0), _fmav(g, g, step, r)]
        return out + [_shape(r, sx, wide, _WORD, src2_row=1),
                      Instr("ve.requantf", dst=x, src1=k, src2=g, n=n, zp=y_zero_point, dst_i8=1)]

    return body


def layernorm_rows(config, rows, n, x_scale, gamma, beta, epsilon, y_scale, y_zero_point):
    """Program image of int8 LayerNormalization over each row (:func:`layernorm_reference` gives its
    result): ``y = (x - mean)/sqrt(var + epsilon)·gamma + beta`` with per-feature ``gamma``, ``beta``.

    Parameters
    ----------
    config : ArchConfig or str
    rows, n : int
        Rows of ``n`` int8 codes (the normalised axis is the last).
    x_scale : float
        Input scale (the input zero point cancels).
    gamma, beta : array_like of float
        Scale and bias per feature (``n`` values or one).
    epsilon : float
    y_scale, y_zero_point : float, int
        Output quantization (int8).

    Returns
    -------
    ProgramImage
        Input ``X`` and output ``Y`` (i8, rows × n; rows 4-byte aligned in HBM).

    Raises
    ------
    FirmwareError
        Non-positive sizes, scales or epsilon, or a row that does not fit the scratchpad.
    """
    c = LayerNormConstants.of(n, x_scale, gamma, beta, epsilon, y_scale, y_zero_point)
    return _rows_image("layernorm", config, rows, n, 2, 11, _layernorm_body(c), gamma_beta=(c.gamma, c.beta))


def emit_layernorm(prog, source, dest, rows, n, constants, vectors, sram_bytes):
    """Append int8 LayerNormalization of each row (:func:`layernorm_reference`) to ``prog``.

    ``constants`` is :class:`LayerNormConstants`; ``vectors`` the HBM row of its ``gamma`` then ``beta``
    words (``np.concatenate((c.gamma, c.beta))`` as ``<u4``). Returns the scratchpad bytes used."""
    return emit_rows(prog, "layernorm", source, dest, rows, n, 2, 11, _layernorm_body(constants), sram_bytes,
                     vectors)


def _layernorm_body(c):
    def body(r, n, sx, x, words, cols, scalars):
        u, v = words
        s1, centre, a1, a2, minus_s1, w, half, g, minus_half, step, guess = cols
        eps, _, vectors = scalars
        wide = 4 * n
        out = [_shape(1), Instr("ve.fill", dst=eps, n=1, value=_signed(c.epsilon)),
               Instr("ve.fill", dst=guess, n=r, value=_signed(RSQRT_GUESS)),
               _shape(r, _WORD, sx), Instr("ve.redsum", dst=s1, src=x, n=n, src_i8=1),
               _shape(1), _setf(c.inverse_n), _fma(centre, s1, _INT32, r, FmaResult.INT32),
               _shape(r, wide, sx, _WORD, src2_row=1), Instr("ve.sub", dst=u, src1=x, src2=centre, n=n, src1_i8=1),
               _shape(r, wide, wide, wide), Instr("ve.mul", dst=v, src1=u, src2=u, n=n),
               _shape(r, _WORD, wide), Instr("ve.redsum", dst=a1, src=u, n=n), Instr("ve.redsum", dst=a2, src=v, n=n),
               _shape(1), _setf(_MINUS_ONE), _fma(minus_s1, a1, _INT32, r, FmaResult.FP32),
               _setf(c.epsilon), _fmav(w, a1, minus_s1, r, _INT32),
               _setf(c.n), _fma(w, a2, _INT32, r, FmaResult.FP32, src2=w),
               _shape(1, src2_row=1), Instr("ve.max", dst=w, src1=w, src2=eps, n=r),
               _shape(1), Instr("ve.requant", dst=half, src=w, n=r, mult=1, shift=1, zp=0, dst_i8=0),
               Instr("ve.sub", dst=g, src1=guess, src2=half, n=r),
               _setf(_HALF_NEG), _fma(minus_half, w, _FP32, r, FmaResult.FP32)]
        for _ in range(RSQRT_STEPS):
            out += [_setf(0), _fmav(step, g, g, r), _setf(_THREE_HALVES), _fmav(step, step, minus_half, r),
                    _setf(0), _fmav(g, g, step, r)]
        return out + [_shape(r, wide, wide, _WORD, src2_row=1), _setf(c.n),
                      _fma(v, u, _INT32, n, FmaResult.FP32, src2=minus_s1),
                      _setf(0), _fmav(v, v, g, n),
                      _shape(r, wide, wide, 0), _fmav(v, v, vectors, n),
                      _shape(r, sx, wide, 0), _setf(_ONE), _fma(x, v, _FP32, n, FmaResult.INT8, src2=vectors + wide)]

    return body
