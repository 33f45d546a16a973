"""ve.requantf: onnxruntime's binary32 requantization in integers. The golden model against NumPy's
binary32 arithmetic (random and targeted accumulators and scales), in the machine with a broadcast
per-column scale row, and against onnxruntime itself (QGemm and QLinearConv with per-channel scales)."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tcloud.firmware import FirmwareError, requantf_reference, requantf_scale_words
from tcloud.isa import Instr, requantize_fp32
from tcloud.isa.config import get_config
from tcloud.isa.cost import VE_STEPS_PER_CHUNK, encoded_field, instruction_units

from conftest import new_tenant
from test_golden_ops import run_ve

I32 = (-(1 << 31), (1 << 31) - 1)
F32 = np.float32


def word(scale):
    return int(F32(scale).view(np.int32))


def golden_one(acc, scale, zp, dst_i8):
    return int(requantize_fp32(np.array([acc]), np.array([word(scale)]), zp, dst_i8)[0])


def numpy_one(acc, scale, zp, dst_i8):
    return int(requantf_reference(np.array([acc]), np.array([scale], F32), zp, dst_i8)[0])


finite_scales = st.floats(width=32, allow_nan=False, allow_infinity=False)
"""Every finite binary32 value: zero, subnormal, negative, tiny and huge."""
typical_scales = st.floats(2.0 ** -30, 2.0 ** 8, width=32)
accumulators = st.one_of(st.integers(*I32), st.integers(-(1 << 12), 1 << 12),
                         st.integers(1 << 24, I32[1]),  # rounded by the int -> fp32 conversion
                         st.sampled_from([I32[0], I32[1], I32[0] + 1, -1, 0, 1, (1 << 24) + 1, -(1 << 24) - 1,
                                          (1 << 25) + 2, (1 << 24) + 3]))


@given(acc=accumulators, scale=st.one_of(finite_scales, typical_scales), zp=st.integers(-128, 127),
       dst_i8=st.booleans())
@example(acc=5, scale=0.5, zp=0, dst_i8=True)          # 2.5 -> 2
@example(acc=7, scale=0.5, zp=0, dst_i8=True)          # 3.5 -> 4
@example(acc=-5, scale=0.5, zp=3, dst_i8=True)         # -2.5 -> -2, then + zp
@example(acc=I32[0], scale=1.0, zp=-1, dst_i8=False)   # -2**31 - 1 saturates
@example(acc=I32[1], scale=1.0, zp=-128, dst_i8=False)  # fp32(2**31 - 1) = 2**31, - 128 fits
@example(acc=16777217, scale=1.0, zp=0, dst_i8=False)  # 2**24 + 1 converts to 2**24
@example(acc=1, scale=3.4028235e38, zp=0, dst_i8=False)  # largest scale
@example(acc=I32[0], scale=3.4028235e38, zp=0, dst_i8=False)  # the product overflows binary32
@example(acc=I32[1], scale=1e-45, zp=7, dst_i8=True)   # smallest subnormal scale
def test_golden_matches_numpy_binary32(acc, scale, zp, dst_i8):
    assert golden_one(acc, scale, zp, dst_i8) == numpy_one(acc, scale, zp, dst_i8)


def tie_accumulator(scale, k):
    """An int32 whose binary32 product with ``scale`` lands exactly on k + 1/2 after both roundings,
    or None: searched around (k + 1/2) / scale."""
    centre = int(round((k + 0.5) / float(scale)))
    for acc in range(centre - 40, centre + 41):
        if I32[0] <= acc <= I32[1] and F32(F32(acc) * F32(scale)) == F32(k + 0.5):
            return acc
    return None


@given(scale=typical_scales, k=st.integers(-300, 300), zp=st.integers(-128, 127), dst_i8=st.booleans())
def test_golden_matches_numpy_on_binary32_ties(scale, k, zp, dst_i8):
    acc = tie_accumulator(scale, k)
    if acc is None:
        return
    got = golden_one(acc, scale, zp, dst_i8)
    assert got == numpy_one(acc, scale, zp, dst_i8)
    exact = Fraction(acc) * Fraction(float(F32(scale)))
    if exact != Fraction(2 * k + 1, 2):  # a tie made by the binary32 product rounding: once would differ
        assert got == max(-128 if dst_i8 else I32[0], min(127 if dst_i8 else I32[1], k + (k & 1) + zp))


@given(acc=st.integers(*I32), fraction=st.integers(0, (1 << 23) - 1), sign=st.booleans(), zp=st.integers(-128, 127))
def test_infinite_and_nan_words_saturate_every_nonzero_accumulator(acc, fraction, sign, zp):
    scale_word = np.array([((0xFF << 23) | fraction | (sign << 31)) - (sign << 32)])
    for dst_i8, (low, high) in ((True, (-128, 127)), (False, I32)):
        got = int(requantize_fp32(np.array([acc]), scale_word, zp, dst_i8)[0])
        assert got == (zp if acc == 0 else high if (acc < 0) == sign else low)


def test_scale_words_are_the_binary32_bit_patterns():
    scales = np.array([0.0, 1.5, -2.0 ** -20, 3.0e-9, 1.0e30], F32)
    assert requantf_scale_words(scales).tolist() == scales.view(np.int32).tolist()
    assert requantf_scale_words(np.float64(0.25)).tolist() == word(0.25)  # exactly binary32
    with pytest.raises(FirmwareError, match="binary32"):
        requantf_scale_words(np.array([0.1]))  # a float64 that binary32 would round
    with pytest.raises(FirmwareError, match="finite"):
        requantf_scale_words(np.array([1.0, np.nan], F32))


def test_machine_broadcasts_one_scale_row_over_rows():
    """Per-channel requantization of a rows x n int32 block: ve.shape src2_stride=0 reuses the scale row."""
    rng = np.random.default_rng(4)
    rows, n, stride = 3, 13, 64
    scales = (F32(0.02) * np.exp(rng.uniform(-8, -2, n)).astype(F32)) / F32(0.05)
    acc = rng.integers(-(1 << 20), 1 << 20, (rows, n)).astype(np.int32)
    acc[0, :4] = [I32[0], I32[1], 0, (1 << 24) + 1]
    sources = {0x1000: requantf_scale_words(scales)}
    sources.update({r * stride: acc[r] for r in range(rows)})
    for dst_i8, dtype in ((1, np.int8), (0, np.int32)):
        tenant = new_tenant()
        body = [Instr("ve.shape", rows=rows, dst_stride=stride, src1_stride=stride, src2_stride=0),
                Instr("ve.requantf", dst=0x2000, src1=0x0, src2=0x1000, n=n, zp=-9, dst_i8=dst_i8)]
        run_ve(tenant, body, sources)
        got = np.stack([tenant.read_sram(0x2000 + r * stride, n, dtype) for r in range(rows)])
        assert got.tolist() == requantf_reference(acc, scales, -9, dst_i8).tolist()


def test_cost_is_that_of_a_two_source_instruction():
    config = get_config("tiny")
    instr = Instr("ve.requantf", dst=0, src1=0, src2=0, n=3 * config.ve_lanes, zp=0)
    assert VE_STEPS_PER_CHUNK["ve.requantf"] == VE_STEPS_PER_CHUNK["ve.add"]
    assert instruction_units("ve.requantf", encoded_field(instr), config, ve_rows=2) == \
        instruction_units("ve.add", encoded_field(Instr("ve.add", dst=0, src1=0, src2=0, n=3 * config.ve_lanes)),
                          config, ve_rows=2)


# --- onnxruntime ------------------------------------------------------------------------------------

import onnxruntime as ort  # noqa: E402  (a main dependency: a missing one must fail, not skip)
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

_ONNX_TYPES = {np.int8: TensorProto.INT8, np.uint8: TensorProto.UINT8}


def _model(nodes, inputs, outputs, initializers, microsoft=False):
    opsets = [helper.make_opsetid("", 21)] + ([helper.make_opsetid("com.microsoft", 1)] if microsoft else [])
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, initializers), opset_imports=opsets)
    model.ir_version = 10
    return model


def _session(nodes, inputs, outputs, initializers, microsoft=False):
    model = _model(nodes, inputs, outputs, initializers, microsoft)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _info(name, dtype, shape):
    return helper.make_tensor_value_info(name, _ONNX_TYPES[dtype], shape)


def hard_accumulators(rng, scales, zp, dtype, count):
    """Accumulators per column (``count`` rows): half of them binary32 ties (accumulators whose binary32
    product is exactly k + 1/2; mostly not exact ties, so a single exact rounding differs), the rest
    random, all within the range that does not saturate."""
    info = np.iinfo(dtype)
    out = np.empty((count, scales.size), np.int64)
    for c, scale in enumerate(scales):
        ks = rng.integers(info.min - zp, info.max - zp, 400)
        centres = np.round((ks + 0.5) / float(scale)).astype(np.int64)
        candidates = np.clip(centres[:, None] + np.arange(-60, 61), *I32)
        hits = candidates.astype(np.int32).astype(F32) * scale == (ks + 0.5).astype(F32)[:, None]
        ties = candidates[hits.any(axis=1), hits[hits.any(axis=1)].argmax(axis=1)] if hits.any() else candidates[:0, 0]
        limit = int(min(I32[1], (info.max - info.min + 2) / float(scale)))
        column = np.concatenate([ties[:max(1, count // 2)], rng.integers(-limit, limit, count)])[:count]
        if count >= 4:
            column[-2:] = [(1 << 24) | 1, -(1 << 24) - 3]
        out[:, c] = column
    return np.clip(out, *I32)


def tcloud_requantf(acc, scales, zp, dtype):
    """ve.requantf in the golden machine: accumulators (rows x n), one broadcast scale row. uint8
    outputs use zero point zp - 128 and flip bit 7 (saturate_s8(q + zp - 128) + 128 == saturate_u8(q + zp))."""
    rows, n = acc.shape
    tenant = new_tenant()
    stride, pitch = 4 * n, n + (-n % 4)
    scale_at = rows * stride
    dst = scale_at + stride
    bias = 128 if dtype == np.uint8 else 0
    body = [Instr("ve.shape", rows=rows, dst_stride=pitch, src1_stride=stride, src2_stride=0),
            Instr("ve.requantf", dst=dst, src1=0, src2=scale_at, n=n, zp=int(zp) - bias, dst_i8=1)]
    run_ve(tenant, body, {0: acc.astype(np.int32), scale_at: requantf_scale_words(scales)})
    got = np.stack([tenant.read_sram(dst + r * pitch, n, np.int8) for r in range(rows)])
    return (got.view(np.uint8) ^ np.uint8(bias)).astype(dtype) if bias else got


def single_rounding(acc, scales, zp, dtype):
    """round_half_even(acc * scale) + zp with one exact rounding (ve.requant's rule with scale's exact value)."""
    info = np.iinfo(dtype)
    flat = [max(info.min, min(info.max, round(Fraction(int(a)) * Fraction(float(s))) + int(zp)))
            for a, s in zip(acc.flat, np.broadcast_to(scales, acc.shape).flat)]
    return np.array(flat, np.int64).reshape(acc.shape)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_qgemm_per_column_scales_match_onnxruntime(dtype):
    """QGemm with A == its zero point and an int32 C: the accumulators are C, chosen at binary32 ties."""
    rng = np.random.default_rng(21 if dtype == np.int8 else 22)
    mismatches = single_mismatches = total = 0
    for trial in range(6):
        n, rows = 24, 64
        a_scale, y_scale = F32(np.exp(rng.uniform(-6, -1))), F32(np.exp(rng.uniform(-3, 1)))
        b_scale = np.exp(rng.uniform(-9, -4, n)).astype(F32)
        scales = (a_scale * b_scale) / y_scale  # binary32, as onnxruntime computes them
        info = np.iinfo(dtype)
        y_zp = int(rng.integers(info.min, info.max + 1))
        acc = hard_accumulators(rng, scales, y_zp, dtype, rows)
        a_zp = dtype(rng.integers(info.min, info.max + 1))
        node = helper.make_node("QGemm", ["a", "as", "az", "b", "bs", "bz", "c", "ys", "yz"], ["y"],
                                domain="com.microsoft")
        b = rng.integers(-128, 128, (1, n)).astype(np.int8)
        session = _session([node], [_info("a", dtype, [rows, 1])], [_info("y", dtype, [rows, n])],
                           [_const("as", a_scale), _const("az", a_zp), _const("b", b), _const("bs", b_scale),
                            _const("bz", np.zeros(n, np.int8)), _const("c", acc.astype(np.int32)),
                            _const("ys", y_scale), _const("yz", dtype(y_zp))], microsoft=True)
        expected = session.run(None, {"a": np.full((rows, 1), a_zp, dtype)})[0].astype(np.int64)
        got = tcloud_requantf(acc, scales, y_zp, dtype).astype(np.int64)
        mismatches += int((got != expected).sum())
        single_mismatches += int((single_rounding(acc, scales, y_zp, dtype) != expected).sum())
        total += expected.size
    print(f"QGemm {dtype.__name__}: {mismatches} of {total} differ from onnxruntime ({single_mismatches} with one "
          "exact rounding)")
    assert mismatches == 0, f"{mismatches} of {total} outputs differ from onnxruntime"
    assert single_mismatches > 0, "the data never separates binary32 from exact rounding: the test cannot fail"


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_qlinearconv_per_channel_matches_onnxruntime(dtype):
    """1x1 QLinearConv, X == its zero point: each output channel's accumulator is its int32 bias.
    (Where onnxruntime's uint8 x int8 kernels saturate, the uint8 model runs as its int8 twin.)"""
    from test_compiler import onnxruntime_outputs

    rng = np.random.default_rng(31 if dtype == np.int8 else 32)
    info = np.iinfo(dtype)
    mismatches = single_mismatches = total = 0
    for trial in range(8):
        channels = 48
        x_scale, y_scale = F32(np.exp(rng.uniform(-6, -1))), F32(np.exp(rng.uniform(-3, 1)))
        w_scale = np.exp(rng.uniform(-9, -4, channels)).astype(F32)
        scales = (x_scale * w_scale) / y_scale
        y_zp = int(rng.integers(info.min, info.max + 1))
        bias = hard_accumulators(rng, scales, y_zp, dtype, 1)[0]
        x_zp = dtype(rng.integers(info.min, info.max + 1))
        w = rng.integers(-128, 128, (channels, 3, 1, 1)).astype(np.int8)
        node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"])
        model = _model([node], [_info("x", dtype, [1, 3, 2, 2])], [_info("y", dtype, [1, channels, 2, 2])],
                       [_const("xs", x_scale), _const("xz", x_zp), _const("w", w), _const("ws", w_scale),
                        _const("wz", np.zeros(channels, np.int8)), _const("ys", y_scale),
                        _const("yz", dtype(y_zp)), _const("b", bias.astype(np.int32))])
        expected = onnxruntime_outputs(model, {"x": np.full((1, 3, 2, 2), x_zp, dtype)})["y"]
        # NCHW: one row of channels per pixel, as a compiler lays the output channels along a row
        acc = np.broadcast_to(bias, (4, channels)).copy()
        got = tcloud_requantf(acc, scales, y_zp, dtype)
        expected = expected.reshape(channels, 4).T
        mismatches += int((got.astype(np.int64) != expected.astype(np.int64)).sum())
        single_mismatches += int((single_rounding(acc, scales, y_zp, dtype) != expected).sum())
        total += expected.size
    print(f"QLinearConv {dtype.__name__}: {mismatches} of {total} differ from onnxruntime ({single_mismatches} "
          "with one exact rounding)")
    assert single_mismatches > 0, "the data never separates binary32 from exact rounding: the test cannot fail"
    assert mismatches == 0, f"{mismatches} of {total} outputs differ from onnxruntime"
