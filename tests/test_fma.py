"""ve.setf / ve.fma: a binary32 fused multiply-add, for onnxruntime's QLinearAdd and QLinearMul.

The golden model against exact rational arithmetic (random words, cancellation, ties, overflow and
flush-to-zero), its integer results against NumPy's rint, and QLinearAdd / QLinearMul written with
the new instructions in the golden machine against onnxruntime on all 65,536 input pairs."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tcloud.firmware.binary import BinaryOperand, QLinearBinary
from tcloud.isa import Instr
from tcloud.isa.config import get_config
from tcloud.isa.cost import VE_STEPS_PER_CHUNK, encoded_field, instruction_units
from tcloud.isa.golden import fma_fp32, fp32_to_int, ve_fma
from tcloud.isa.table import UINT8_OFFSET, FmaResult, FmaSource

from conftest import new_tenant
from test_golden_ops import run_ve

F32 = np.float32
I32 = (-(1 << 31), (1 << 31) - 1)
_RANGES = {FmaResult.INT8: (-128, 127), FmaResult.UINT8: (0, 255), FmaResult.INT32: I32}


def word(value):
    return int(F32(value).view(np.uint32))


def value_of(w):
    """Exact value of a binary32 word as ve.fma reads it (exponent 0: zero; 255: a normal number)."""
    w &= 0xFFFFFFFF
    biased, fraction = (w >> 23) & 0xFF, w & ((1 << 23) - 1)
    if biased == 0:
        return Fraction(0)
    v = Fraction((1 << 23) | fraction) * Fraction(2) ** (biased - 150)
    return -v if w >> 31 else v


def round_to_word(v):
    """The binary32 word of exact v, rounded half to even, flushed below 2**-126, inf from 2**128."""
    if v == 0:
        return 0
    sign, a = int(v < 0) << 31, abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    e += 1 if Fraction(2) ** (e + 1) <= a else (-1 if Fraction(2) ** e > a else 0)
    q = a / Fraction(2) ** (e - 23)
    kept, rest = divmod(q.numerator, q.denominator)
    if 2 * rest > q.denominator or (2 * rest == q.denominator and kept & 1):
        kept += 1
    if kept == 1 << 24:
        kept, e = kept >> 1, e + 1
    if e < -126:
        return 0
    if e > 127:
        return sign | 0x7F800000
    return sign | ((e + 127) << 23) | (kept - (1 << 23))


def reference(x, kind, r, c):
    xv = value_of(x) if kind == FmaSource.FP32 else Fraction(x)
    return round_to_word(xv * value_of(r) + value_of(c))


def golden(x, kind, r, c):
    return int(fma_fp32(np.array([x]), kind, r, np.array([c]))[0])


words = st.integers(0, (1 << 32) - 1)
normal_words = st.builds(lambda s, e, f: s << 31 | e << 23 | f, st.integers(0, 1), st.integers(1, 254),
                         st.integers(0, (1 << 23) - 1))
near_words = st.builds(lambda s, e, f: s << 31 | e << 23 | f, st.integers(0, 1), st.integers(100, 150),
                       st.integers(0, (1 << 23) - 1))
sources = st.one_of(
    st.tuples(st.just(FmaSource.INT8), st.integers(-128, 127)),
    st.tuples(st.just(FmaSource.UINT8), st.integers(0, 255)),
    st.tuples(st.just(FmaSource.INT32), st.one_of(st.integers(*I32), st.sampled_from([I32[0], I32[1], 0, -1]))),
    st.tuples(st.just(FmaSource.FP32), st.one_of(words, normal_words, near_words)))


@given(src=sources, r=st.one_of(words, normal_words, near_words), c=st.one_of(words, normal_words, near_words))
@example(src=(FmaSource.INT32, (1 << 24) + 1), r=word(1.0), c=0)               # tie: to 2**24
@example(src=(FmaSource.INT32, (1 << 24) + 3), r=word(1.0), c=0)               # tie: up to 2**24 + 4
@example(src=(FmaSource.INT32, I32[0]), r=0xFF7FFFFF, c=0)                       # overflows to -inf
@example(src=(FmaSource.INT8, 1), r=0x00800000, c=0x80800000)                    # exact zero: +0
@example(src=(FmaSource.INT8, 3), r=0x00800000, c=0x81000000)                    # 3m - 2m: the minimum normal
@example(src=(FmaSource.INT8, 1), r=0x00800000, c=0x80800001)                    # a subnormal result: +0
@example(src=(FmaSource.FP32, 0x7F800000), r=word(1.0), c=0xFF800000)            # "inf - inf" reads as 0
@example(src=(FmaSource.FP32, 0x7FC00000), r=word(0.5), c=0)                     # "NaN" reads as a number
@example(src=(FmaSource.FP32, word(1.0)), r=word(1.0), c=word(2.0 ** -24))      # 1 + half ulp: tie to 1
@example(src=(FmaSource.FP32, word(1.0)), r=word(1.0 + 2.0 ** -23), c=word(-1.0))  # cancellation to 2**-23
def test_golden_fma_matches_exact_arithmetic(src, r, c):
    kind, x = src
    assert golden(x, kind, r, c) == reference(x, kind, r, c)


@given(p=st.integers(-(1 << 16), 1 << 16), r=near_words, frac=st.integers(-3, 3), kind=st.sampled_from(FmaSource))
def test_golden_fma_on_cancellation_and_near_ties(p, r, frac, kind):
    """Addends that cancel the product to within a few units of its last place, and sums that sit on or
    next to a binary32 midpoint: the single rounding decides there."""
    x = p if kind != FmaSource.FP32 else word(p)
    if kind in (FmaSource.INT8, FmaSource.UINT8):
        x = max(-128, min(127, p)) if kind == FmaSource.INT8 else max(0, min(255, p))
    xv = value_of(x) if kind == FmaSource.FP32 else Fraction(x)
    exact = xv * value_of(r)
    if exact == 0:
        return
    for c in (round_to_word(-exact) ^ frac % 4, round_to_word(exact / 3), round_to_word(exact * (1 << 24)),
              round_to_word(-exact / (1 << 25)), round_to_word(exact * Fraction(2 * frac + 1, 1 << 26))):
        assert golden(x, kind, r, c) == reference(x, kind, r, c)


def test_golden_fma_targeted_ties_and_exponent_extremes():
    """Every tie of 24 significant bits (x an int32 of 25..31 bits, R = 1 or a power of two, C = 0) and
    the largest / smallest exponents (products near 2**128 and 2**-126, addends far from the product)."""
    cases = []
    for bits in range(25, 32):
        for k in range(1, 12):
            x = (1 << (bits - 1)) + (k << (bits - 24)) + (1 << (bits - 25))  # halfway between binary32 neighbours
            for r in (word(1.0), word(-0.5), word(2.0 ** -100), word(2.0 ** 96)):
                cases.append((FmaSource.INT32, x, r, 0))
                cases.append((FmaSource.INT32, -x, r, word(2.0 ** -60)))
    for x in (I32[1], -1234567891, 987654321):  # a 55-bit product one place below its minus-power-of-two addend
        for r in (word(1.0 - 2.0 ** -24), word(0.7853982), word(-1.2345678e-5)):
            exact = Fraction(x) * value_of(r)
            top = Fraction(2) ** (abs(exact).numerator.bit_length() - abs(exact).denominator.bit_length() + 1)
            cases.append((FmaSource.INT32, x, r, round_to_word(-top if exact > 0 else top)))
    for e in (1, 2, 3, 126, 127, 253, 254, 255):
        for c in (0, word(1.0), word(-(2.0 ** 100)), 0x7F7FFFFF, 0xFF7FFFFF, 0x00800001, 0x80FFFFFF):
            cases.append((FmaSource.FP32, e << 23 | 0x7FFFFF, word(1.5), c))
            cases.append((FmaSource.INT8, -128, e << 23, c))
            cases.append((FmaSource.INT32, I32[1], e << 23 | 1, c))
    for kind, x, r, c in cases:
        assert golden(x, kind, r, c) == reference(x, kind, r, c), (kind, x, hex(r), hex(c))


@given(w=st.one_of(words, near_words), kind=st.sampled_from([FmaResult.INT8, FmaResult.UINT8, FmaResult.INT32]))
@example(w=word(2.5), kind=FmaResult.INT8)
@example(w=word(-3.5), kind=FmaResult.INT8)
@example(w=word(255.5), kind=FmaResult.UINT8)
@example(w=word(2.0 ** 31), kind=FmaResult.INT32)
@example(w=0xFF800000, kind=FmaResult.INT32)
def test_integer_results_round_half_even_and_saturate(w, kind):
    """The integer kinds round the (already binary32) result like rint and saturate; the integer
    results apply to fma results, so words are first put through the fma (x = w as binary32, R = 1)."""
    v = golden(w, FmaSource.FP32, word(1.0), 0)
    got = int(fp32_to_int(np.array([v]), kind)[0])
    low, high = _RANGES[kind]
    exact = value_of(v)
    if (v >> 23) & 0xFF == 0xFF:
        want = high if v >> 31 == 0 else low
    else:
        want = max(low, min(high, round(exact)))  # Python's round is half to even
    assert got == want


def test_integer_results_round_twice():
    """dst_kind int rounds the binary32 result, not the exact sum: 0.5 + 2**-20 + 100 is 100.5 in
    binary32, so the int8 result is 100 (the exact sum would give 101)."""
    r = word(0.5 + 2.0 ** -20)  # x = 1
    c = word(100.0)
    assert int(ve_fma(np.array([1]), FmaSource.INT8, r, np.array([c]), FmaResult.INT8)[0]) == 100
    assert round(Fraction(1) * value_of(r) + 100) == 101


def test_fma_cost_skips_the_second_read_without_addend():
    config = get_config("tiny")
    n = 3 * config.ve_lanes
    field = lambda **kw: encoded_field(Instr("ve.fma", dst=0, src1=0, src2=0, n=n, **kw))
    add = instruction_units("ve.add", encoded_field(Instr("ve.add", dst=0, src1=0, src2=0, n=n)), config, ve_rows=2)
    copy = instruction_units("ve.copy", encoded_field(Instr("ve.copy", dst=0, src=0, n=n)), config, ve_rows=2)
    assert instruction_units("ve.fma", field(), config, ve_rows=2) == add
    assert instruction_units("ve.fma", field(src2_zero=1), config, ve_rows=2) == copy
    assert instruction_units("ve.setf", encoded_field(Instr("ve.setf", value=1)), config) == \
        instruction_units("ve.shape", encoded_field(Instr("ve.shape", rows=1)), config)
    assert VE_STEPS_PER_CHUNK["ve.fma"] == VE_STEPS_PER_CHUNK["ve.add"]


def test_machine_fma_kinds_strides_and_uTOp_scoped_multiplier():
    """Every src1/dst kind through the machine (rows, broadcast addend row, absent addend), and R resets
    to +0.0 at each uTOp."""
    rng = np.random.default_rng(3)
    rows, n, stride = 3, 11, 64
    r = word(-0.3712)
    addend = np.array([word(v) for v in rng.normal(0, 50, n).astype(F32)], np.uint32)
    for kind in FmaSource:
        if kind == FmaSource.FP32:
            x = np.array([[word(v) for v in row] for row in rng.normal(0, 300, (rows, n)).astype(F32)], np.uint32)
        elif kind == FmaSource.INT32:
            x = rng.integers(*I32, (rows, n)).astype(np.int32)
        else:
            x = rng.integers(-128, 128, (rows, n)).astype(np.int8)  # uint8: the device byte q - 128
        for result in FmaResult:
            for zero in (0, 1):
                tenant = new_tenant()
                sources = {r_ * stride: x[r_] for r_ in range(rows)}
                sources[0x1000] = addend
                body = [Instr("ve.shape", rows=rows, dst_stride=stride, src1_stride=stride, src2_stride=0),
                        Instr("ve.setf", value=r),
                        Instr("ve.fma", dst=0x2000, src1=0, src2=0x1000, n=n, src1_kind=int(kind),
                              src2_zero=zero, dst_kind=int(result))]
                run_ve(tenant, body, sources)
                dtype = {FmaResult.FP32: np.uint32, FmaResult.INT8: np.int8, FmaResult.UINT8: np.int8,
                         FmaResult.INT32: np.int32}[result]
                got = np.stack([tenant.read_sram(0x2000 + i * stride, n, dtype) for i in range(rows)]).astype(np.int64)
                got += UINT8_OFFSET if result == FmaResult.UINT8 else 0
                xs = x.astype(np.int64) + (UINT8_OFFSET if kind == FmaSource.UINT8 else 0)
                c = np.zeros((rows, n), np.int64) if zero else np.broadcast_to(addend.astype(np.int64), (rows, n))
                want = [[reference(int(xs[i, j]), kind, r, int(c[i, j])) for j in range(n)] for i in range(rows)]
                if result != FmaResult.FP32:
                    want = fp32_to_int(np.array(want), result)
                assert got.tolist() == np.asarray(want).tolist(), (kind, result, zero)
    tenant = new_tenant()  # a new uTOp: R = +0.0, so the result is the addend
    run_ve(tenant, [Instr("ve.fma", dst=0x2000, src1=0, src2=0x1000, n=n, src1_kind=int(FmaSource.INT32))],
           {0: np.full(n, 12345, np.int32), 0x1000: addend})
    assert tenant.read_sram(0x2000, n, np.uint32).tolist() == [int(fma_fp32(0, 2, 0, a)) for a in addend]


# --- onnxruntime ------------------------------------------------------------------------------------

import onnxruntime as ort  # noqa: E402  (a main dependency: a missing one must fail, not skip)
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

_ONNX_TYPES = {np.int8: TensorProto.INT8, np.uint8: TensorProto.UINT8}
_KIND_IN = {np.int8: FmaSource.INT8, np.uint8: FmaSource.UINT8}
_KIND_OUT = {np.int8: FmaResult.INT8, np.uint8: FmaResult.UINT8}


def onnxruntime_qlinear(op, a, b, sa, za, sb, zb, sc, zc, dtype):
    """One com.microsoft QLinearAdd / QLinearMul node in onnxruntime (CPU, one thread)."""
    node = helper.make_node(op, ["a", "as", "az", "b", "bs", "bz", "cs", "cz"], ["c"], domain="com.microsoft")
    const = lambda name, v: numpy_helper.from_array(np.asarray(v), name)
    info = lambda name: helper.make_tensor_value_info(name, _ONNX_TYPES[dtype], list(a.shape))
    graph = helper.make_graph([node], "g", [info("a"), info("b")], [info("c")],
                              [const("as", F32(sa)), const("az", np.asarray(za, dtype)), const("bs", F32(sb)),
                               const("bz", np.asarray(zb, dtype)), const("cs", F32(sc)),
                               const("cz", np.asarray(zc, dtype))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"a": a, "b": b})[0]


def qlinear_add_constants(sa, za, sb, zb, sc, zc):
    """Host-side constants of QLinearAdd, in binary32 as onnxruntime computes them:
    rAC = sA/sC, rBC = sB/sC, K = zC - fma(rAC, zA, rBC·zB)."""
    rac, rbc = F32(sa) / F32(sc), F32(sb) / F32(sc)
    inner = fma_fp32(np.array([za]), FmaSource.INT32, word(rac), np.array([word(rbc * F32(zb))]))
    k = fma_fp32(np.array([zc]), FmaSource.INT32, word(1.0), np.array([int(inner[0]) ^ (1 << 31)]))
    return word(rac), word(rbc), int(k[0])


def _device(values):
    """int8 or uint8 values as the pNPU holds them (uint8 as q - 128 in int8)."""
    shift = UINT8_OFFSET if values.dtype == np.uint8 else 0
    return (values.astype(np.int16) - shift).astype(np.int8)


def _tcloud_blocks(a, b, rows_per_run, program):
    """Run ``program(rows, a_at, b_at, ...)`` on blocks of rows of a and b (as the pNPU holds them);
    return the output values in a's dtype."""
    out = []
    for start in range(0, a.shape[0], rows_per_run):
        tenant = new_tenant("small")
        body, sources, dst = program(_device(a[start:start + rows_per_run]), _device(b[start:start + rows_per_run]))
        run_ve(tenant, body, sources)
        rows, n = a[start:start + rows_per_run].shape
        held = tenant.read_sram(dst, rows * n, np.int8).reshape(rows, n).astype(np.int16)
        out.append((held + (UINT8_OFFSET if a.dtype == np.uint8 else 0)).astype(a.dtype))
    return np.concatenate(out)


def tcloud_qlinear_add(a, b, sa, za, sb, zb, sc, zc, dtype, rows_per_run=64):
    """QLinearAdd as two ve.fma: t = b·rBC + K (binary32), y = a·rAC + t (to int8/uint8)."""
    rac, rbc, k = qlinear_add_constants(sa, za, sb, zb, sc, zc)

    def program(a, b):
        rows, n = a.shape
        a_at, b_at, k_at = 0, rows * n, 2 * rows * n
        t_at = k_at + 4 * n
        y_at = t_at + 4 * rows * n
        body = [Instr("ve.shape", rows=rows, dst_stride=4 * n, src1_stride=n, src2_stride=0),
                Instr("ve.setf", value=rbc),
                Instr("ve.fma", dst=t_at, src1=b_at, src2=k_at, n=n, src1_kind=int(_KIND_IN[dtype])),
                Instr("ve.shape", rows=rows, dst_stride=n, src1_stride=n, src2_stride=4 * n),
                Instr("ve.setf", value=rac),
                Instr("ve.fma", dst=y_at, src1=a_at, src2=t_at, n=n, src1_kind=int(_KIND_IN[dtype]),
                      dst_kind=int(_KIND_OUT[dtype]))]
        return body, {a_at: a, b_at: b, k_at: np.full(n, k, np.uint32)}, y_at
    return _tcloud_blocks(a, b, rows_per_run, program)


def tcloud_qlinear_mul(a, b, sa, za, sb, zb, sc, zc, dtype, rows_per_run=32):
    """QLinearMul: a - zA and b - zB as int32 (ve.fma with R = 1 and a -z row, exact; works for uint8),
    p = ve.mul, x = ve.fma(p·r) to binary32, y = ve.fma(x·1 + zC) to int8/uint8."""
    r = word((F32(sa) * F32(sb)) / F32(sc))

    def program(a, b):
        rows, n = a.shape
        a_at, b_at, z_at = 0, rows * n, 2 * rows * n
        da_at = z_at + 3 * 4 * n
        db_at = da_at + 4 * rows * n
        y_at = db_at + 4 * rows * n
        kind = int(_KIND_IN[dtype])
        int32, fp32 = int(FmaResult.INT32), int(FmaSource.FP32)
        body = [Instr("ve.shape", rows=rows, dst_stride=4 * n, src1_stride=n, src2_stride=0),
                Instr("ve.setf", value=word(1.0)),
                Instr("ve.fma", dst=da_at, src1=a_at, src2=z_at, n=n, src1_kind=kind, dst_kind=int32),
                Instr("ve.fma", dst=db_at, src1=b_at, src2=z_at + 4 * n, n=n, src1_kind=kind, dst_kind=int32),
                Instr("ve.shape", rows=rows, dst_stride=4 * n, src1_stride=4 * n, src2_stride=4 * n),
                Instr("ve.mul", dst=da_at, src1=da_at, src2=db_at, n=n),
                Instr("ve.shape", rows=rows, dst_stride=4 * n, src1_stride=4 * n, src2_stride=0),
                Instr("ve.setf", value=r),
                Instr("ve.fma", dst=da_at, src1=da_at, src2=0, n=n, src1_kind=int(FmaSource.INT32), src2_zero=1),
                Instr("ve.shape", rows=rows, dst_stride=n, src1_stride=4 * n, src2_stride=0),
                Instr("ve.setf", value=word(1.0)),
                Instr("ve.fma", dst=y_at, src1=da_at, src2=z_at + 8 * n, n=n, src1_kind=fp32,
                      dst_kind=int(_KIND_OUT[dtype]))]
        rows_of = lambda v: np.full(n, word(v), np.uint32)
        sources = {a_at: a, b_at: b, z_at: np.concatenate([rows_of(-za), rows_of(-zb), rows_of(zc)])}
        return body, sources, y_at
    return _tcloud_blocks(a, b, rows_per_run, program)


_ADD_TIES = [(F32((0.5 + 2.0 ** -20) / 16), 3, F32(1 / 16), -5, F32(1 / 16), 7),
             (F32((0.5 + 2.0 ** -18) / 8), -1, F32(3 / 8), 2, F32(1 / 8), -20),
             (F32(0.0375), 0, F32(0.0125), 0, F32(0.025), 0)]
"""QLinearAdd parameters whose binary32 sums often land on (or next to) k + 1/2: a single exact rounding
differs from onnxruntime on hundreds of pairs, and so (for uint8) does a sum without the FMA."""
_MUL_TIES = [(F32(0.25 * (1 + 2.0 ** -21)), 0, F32(0.25), 0, F32(0.125), 3),
             (F32(0.5 + 2.0 ** -22), 1, F32(1), -2, F32(1), -5),
             (F32(0.1), 3, F32(0.3), -7, F32(0.7), 9)]
"""QLinearMul parameters where fl(p·r) + zC rounded twice differs from a fused p·r + zC (and from
rint(p·r) + zC) on some pairs."""


def _parameter_sets(dtype, count, seed, mul):
    """The tie-prone sets above (zero points + 128 for uint8), then ``count`` random ones."""
    shift = 128 if dtype == np.uint8 else 0
    for sa, za, sb, zb, sc, zc in _MUL_TIES if mul else _ADD_TIES:
        yield sa, za + shift, sb, zb + shift, sc, zc + shift
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    for _ in range(count):
        sa, sb = (F32(np.exp(rng.uniform(-5, -1))) for _ in range(2))
        sc = F32(sa * sb * 65025.0 / rng.uniform(100, 400)) if mul else F32(np.exp(rng.uniform(-5, -1)))
        za, zb, zc = (int(rng.integers(info.min, info.max + 1)) for _ in range(3))
        yield sa, za, sb, zb, sc, zc


def _all_pairs(dtype):
    info = np.iinfo(dtype)
    values = np.arange(info.min, info.max + 1)
    return np.repeat(values, 256).astype(dtype).reshape(256, 256), np.tile(values, 256).astype(dtype).reshape(256, 256)


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_qlinear_op_matches_onnxruntime_on_all_pairs(op, dtype):
    """Tie-prone and random scales / zero points; every (a, b) pair of the type."""
    a, b = _all_pairs(dtype)
    mul = op == "QLinearMul"
    tcloud = tcloud_qlinear_mul if mul else tcloud_qlinear_add
    for sa, za, sb, zb, sc, zc in _parameter_sets(dtype, 2, 7 + 2 * mul + (dtype == np.uint8), mul):
        want = onnxruntime_qlinear(op, a, b, sa, za, sb, zb, sc, zc, dtype)
        got = tcloud(a, b, sa, za, sb, zb, sc, zc, dtype)
        assert int((got != want).sum()) == 0, (sa, za, sb, zb, sc, zc)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_other_roundings_would_differ_from_onnxruntime(dtype):
    """The tests above can fail: on the tie-prone sets an exact single rounding of QLinearAdd, and a
    QLinearMul that fuses its add (one ve.fma p·r + zC) or rounds before adding zC, differ from
    onnxruntime; for uint8 so does QLinearAdd without the FMA contraction."""
    a, b = _all_pairs(dtype)
    info = np.iinfo(dtype)
    exact_add = no_fma = fused_mul = rint_mul = 0
    for sa, za, sb, zb, sc, zc in list(_parameter_sets(dtype, 0, 0, mul=False)):
        want = onnxruntime_qlinear("QLinearAdd", a, b, sa, za, sb, zb, sc, zc, dtype).astype(np.int64)
        exact = (float(sa) * (a.astype(np.float64) - za) + float(sb) * (b.astype(np.float64) - zb)) / float(sc)
        exact_add += int((np.clip(np.rint(exact + zc), info.min, info.max) != want).sum())
        rac, rbc, k = qlinear_add_constants(sa, za, sb, zb, sc, zc)
        t = fma_fp32(b.astype(np.int64), int(FmaSource.INT32), rbc, np.full(b.shape, k))
        unfused = t.astype(np.uint32).view(F32) + a.astype(F32) * np.uint32(rac).view(F32)
        no_fma += int((np.clip(np.rint(unfused), info.min, info.max) != want).sum())
    for sa, za, sb, zb, sc, zc in list(_parameter_sets(dtype, 0, 0, mul=True)):
        want = onnxruntime_qlinear("QLinearMul", a, b, sa, za, sb, zb, sc, zc, dtype).astype(np.int64)
        p = (a.astype(np.int64) - za) * (b.astype(np.int64) - zb)
        r = (F32(sa) * F32(sb)) / F32(sc)
        fused = ve_fma(p, FmaSource.INT32, word(r), np.full(p.shape, word(zc)), FmaResult.INT32)
        fused_mul += int((np.clip(fused, info.min, info.max) != want).sum())
        rint_mul += int((np.clip(np.rint(p.astype(F32) * r) + zc, info.min, info.max) != want).sum())
    assert exact_add > 0 and fused_mul > 0 and rint_mul > 0
    assert no_fma > 0 or dtype == np.int8


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_the_binary_reference_matches_onnxruntime_on_all_pairs(op, dtype):
    """QLinearBinary.reference (the compiler folds elementwise regions of one tensor into a table with
    it) is the kernel's arithmetic: every pair, tensor b and constant b, on the tie-prone sets."""
    a, b = _all_pairs(dtype)
    mul = op == "QLinearMul"
    name = "uint8" if dtype == np.uint8 else "int8"
    for sa, za, sb, zb, sc, zc in _parameter_sets(dtype, 2, 11 + mul + 2 * (dtype == np.uint8), mul):
        want = onnxruntime_qlinear(op, a, b, sa, za, sb, zb, sc, zc, dtype).astype(np.int64)
        operands = [BinaryOperand(float(s), int(z), name) for s, z in ((sa, za), (sb, zb), (sc, zc))]
        spec = QLinearBinary("mul" if mul else "add", *operands)
        assert np.array_equal(spec.reference(a, b), want), (sa, za, sb, zb, sc, zc)
        for column in (0, 77, 255):
            constant = QLinearBinary(spec.op, *operands, constant=np.array([int(b[0, column])]))
            assert np.array_equal(constant.reference(a[:, column]), want[:, column])
