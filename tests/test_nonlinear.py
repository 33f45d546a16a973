"""ve.fmav and ve.shape.src2_row in the golden model, and the softmax / layer normalization kernels built on
them (tcloud.firmware.nonlinear): golden machine = NumPy reference bit for bit, and the int8 outputs
against float64 softmax / LayerNormalization quantized once (>= 99.9 % within 1 LSB, none off by more
than 2)."""

import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tcloud.firmware import FirmwareError
from tcloud.firmware.nonlinear import (gelu_table, layernorm_reference, layernorm_rows, onnxruntime_softmax_scale,
                                       reciprocal_of_negated, rsqrt, softmax_reference, softmax_rows)
from tcloud.isa import Instr
from tcloud.isa.golden import requantize_fp32, ve_fma, ve_fmav, wrap_i32
from tcloud.isa.table import FmaResult, FmaSource
from tcloud.runtime import FunctionalDevice, run_image

from conftest import new_tenant
from test_fma import near_words, normal_words, reference, sources, word, words
from test_golden_ops import run_ve

LSB_BAR = 0.999
"""Fraction of int8 outputs within 1 LSB of float64-then-quantize the kernels must reach; none may be
off by more than 2."""


@given(src=sources, y=st.one_of(words, normal_words, near_words), r=st.one_of(words, normal_words, near_words))
@example(src=(FmaSource.INT32, (1 << 24) + 1), y=word(1.0), r=0)           # tie: to 2**24
@example(src=(FmaSource.FP32, word(1.0)), y=word(1.0 + 2.0 ** -23), r=word(-1.0))  # cancellation
@example(src=(FmaSource.INT8, 3), y=0x00800000, r=0x81000000)               # 3m - 2m: the minimum normal
def test_golden_fmav_matches_exact_arithmetic(src, y, r):
    """fl32(X·Y + R): ve.fma's exact rounding with the per-element word multiplying and R added."""
    kind, x = src
    assert int(ve_fmav(np.array([x]), kind, np.array([y]), r, FmaResult.FP32)[0]) == reference(x, kind, y, r)


def test_fmav_and_src2_row_in_the_golden_machine():
    """ve.fmav with per-element and per-row multipliers, and src2_row for ve.sub (int8 and int32 elements),
    ve.fma's addend and ve.requantf's scale; a ve.shape without the flag clears it."""
    rng = np.random.default_rng(3)
    rows, n = 3, 12
    x = rng.normal(0, 50, (rows, n)).astype(np.float32)
    y = rng.normal(0, 2, (rows, n)).astype(np.float32)
    per_row = rng.normal(0, 2, rows).astype(np.float32)
    q = rng.integers(-128, 128, (rows, n)).astype(np.int8)
    r = word(0.375)
    body = [Instr("ve.setf", value=r),
            Instr("ve.shape", rows=rows, dst_stride=4 * n, src1_stride=4 * n, src2_stride=4 * n),
            Instr("ve.fmav", dst=0x400, src1=0, src2=0x100, n=n, src1_kind=3, dst_kind=0),
            Instr("ve.shape", rows=rows, dst_stride=n, src1_stride=4 * n, src2_stride=4, src2_row=1),
            Instr("ve.fmav", dst=0x500, src1=0, src2=0x200, n=n, src1_kind=3, dst_kind=1),
            Instr("ve.fma", dst=0x540, src1=0, src2=0x200, n=n, src1_kind=3, dst_kind=1),
            Instr("ve.shape", rows=rows, dst_stride=4 * n, src1_stride=n, src2_stride=n, src2_row=1),
            Instr("ve.sub", dst=0x600, src1=0x300, src2=0x300, n=n, src1_i8=1, src2_i8=1),
            Instr("ve.shape", rows=rows, dst_stride=n, src1_stride=4 * n, src2_stride=4, src2_row=1),
            Instr("ve.requantf", dst=0x700, src1=0x100, src2=0x200, n=n, zp=-3),
            Instr("ve.shape", rows=rows, dst_stride=4 * n, src1_stride=n, src2_stride=0),
            Instr("ve.sub", dst=0x800, src1=0x300, src2=0x200, n=n, src1_i8=1)]
    tenant = new_tenant()
    run_ve(tenant, body, {0: x, 0x100: y, 0x200: per_row, 0x300: q})
    xw, yw, rw = (a.view(np.uint32).astype(np.int64) for a in (x, y, per_row))
    got = lambda addr, dtype: tenant.read_sram(addr, rows * n, dtype).reshape(rows, n)
    assert np.array_equal(got(0x400, np.uint32), ve_fmav(xw, FmaSource.FP32, yw, r, FmaResult.FP32))
    assert np.array_equal(got(0x500, np.int8), ve_fmav(xw, FmaSource.FP32, rw[:, None], r, FmaResult.INT8))
    assert np.array_equal(got(0x540, np.int8), ve_fma(xw, FmaSource.FP32, r, rw[:, None], FmaResult.INT8))
    assert np.array_equal(got(0x600, np.int32), q.astype(np.int64) - q[:, :1])
    assert np.array_equal(got(0x700, np.int8), requantize_fp32(wrap_i32(yw), rw[:, None], -3, True))
    row = np.zeros(n, np.int64)
    row[:rows] = wrap_i32(rw)  # without src2_row: a row of n words, the per-row words then zeros
    assert np.array_equal(got(0x800, np.int32), q.astype(np.int64) - row)


def test_src2_row_reads_one_element_per_row_within_the_window():
    """With src2_row the second source's region is one element per row: a row of n elements may start
    at the last word of the window."""
    tenant = new_tenant()
    last = tenant.state.sram.size - 4  # the window's last word
    body = [Instr("ve.shape", rows=1, src2_row=1),
            Instr("ve.add", dst=0, src1=0, src2=last, n=8)]
    state = run_ve(tenant, body, {0: np.arange(8, dtype=np.int32), last: np.array([100], np.int32)})
    assert state.counters.ve_elements == 8
    assert np.array_equal(tenant.read_sram(0, 8, np.int32), np.arange(8) + 100)


def test_newton_reciprocal_and_inverse_square_root_are_within_a_few_ulps():
    """The kernels' reciprocal and 1/sqrt (3 Newton steps each) over binary32 values of every binade
    they meet: within 4 units in the last place of the correctly rounded results."""
    rng = np.random.default_rng(5)
    v = np.exp2(rng.uniform(-60, 60, 20000)).astype(np.float32)
    words_ = v.view(np.uint32).astype(np.int64)
    recip = reciprocal_of_negated((-v).view(np.uint32).astype(np.int64)).astype(np.uint32).view(np.float32)
    root = rsqrt(words_).astype(np.uint32).view(np.float32)
    for got, exact in ((recip, 1 / v.astype(np.float64)), (root, 1 / np.sqrt(v.astype(np.float64)))):
        ulps = np.abs(got.astype(np.float64) - exact) / np.spacing(exact.astype(np.float32)).astype(np.float64)
        assert ulps.max() <= 4, ulps.max()


@pytest.mark.parametrize("rows, n", [(1, 1), (5, 37), (40, 64), (3, 250)])
def test_kernels_in_the_golden_machine_equal_their_references(rows, n):
    rng = np.random.default_rng(rows * 1000 + n)
    q = rng.integers(-128, 128, (rows, n)).astype(np.int8)
    q[0, :] = q[0, 0]  # a constant row: variance 0, every softmax output equal
    device = FunctionalDevice("tiny")
    out, _ = run_image(device, softmax_rows("tiny", rows, n, 0.07, 1 / 256, -128), {"X": q})
    assert np.array_equal(out["Y"], softmax_reference(q, 0.07, 1 / 256, -128))
    gamma, beta = rng.normal(1, 0.3, n), rng.normal(0, 0.3, n)
    out, _ = run_image(device, layernorm_rows("tiny", rows, n, 0.05, gamma, beta, 1e-5, 0.025, 4), {"X": q})
    assert np.array_equal(out["Y"], layernorm_reference(q, 0.05, gamma, beta, 1e-5, 0.025, 4))


def quantize(y, scale, zero_point):
    return np.clip(np.rint(y / scale) + zero_point, -128, 127)


def softmax_float(q, x_scale, y_scale, y_zero_point):
    """onnxruntime's operator semantics in float64: Softmax over the last axis, then QuantizeLinear."""
    x = x_scale * q.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return quantize(e / e.sum(axis=-1, keepdims=True), y_scale, y_zero_point)


def layernorm_float(q, x_scale, x_zero_point, gamma, beta, epsilon, y_scale, y_zero_point):
    """LayerNormalization (last axis, epsilon) in float64 on the dequantized input, then QuantizeLinear."""
    x = x_scale * (q.astype(np.float64) - x_zero_point)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return quantize((x - mean) / np.sqrt(var + epsilon) * gamma + beta, y_scale, y_zero_point)


def int8_codes(rng, rows, n, style):
    """Random int8 rows: uniform, Gaussian with a random spread and offset per row, or mostly small
    with a few large (peaky) values."""
    if style == "uniform":
        return rng.integers(-128, 128, (rows, n))
    if style == "normal":
        spread = rng.uniform(0.3, 40, (rows, 1))
        return np.clip(np.rint(rng.normal(rng.uniform(-60, 60, (rows, 1)), spread, (rows, n))), -128, 127)
    codes = np.rint(rng.normal(0, 6, (rows, n)))
    peaks = rng.random((rows, n)) < 0.02
    return np.clip(np.where(peaks, rng.integers(40, 128, (rows, n)), codes), -128, 127)


def error_table(seed=0, rows=256):
    """``(operator, case, outputs, fraction within 1 LSB, max LSB error)`` of the kernels' int8 outputs
    against float64-then-quantize, over random inputs."""
    rng = np.random.default_rng(seed)
    table = []
    for n in (16, 128, 768):
        for x_scale in (0.02, 0.08, 0.3):
            for style in ("uniform", "normal", "peaky"):
                q = int8_codes(rng, rows, n, style).astype(np.int8)
                got = softmax_reference(q, x_scale, 1 / 256, -128)
                diff = np.abs(got - softmax_float(q, x_scale, 1 / 256, -128))
                table.append(("softmax", f"n={n} s_x={x_scale} {style}", diff.size, (diff <= 1).mean(), diff.max()))
    for n in (32, 256, 768):
        for x_scale, epsilon in ((0.01, 1e-5), (0.1, 1e-5), (0.05, 1e-2)):
            for style in ("uniform", "normal", "peaky"):
                q = int8_codes(rng, rows, n, style).astype(np.int8)
                gamma, beta = rng.normal(1, 0.3, n), rng.normal(0, 0.3, n)
                x_zero_point = int(rng.integers(-20, 20))
                y_scale, y_zero_point = 5.0 / 127, int(rng.integers(-10, 10))
                got = layernorm_reference(q, x_scale, gamma, beta, epsilon, y_scale, y_zero_point)
                diff = np.abs(got - layernorm_float(q, x_scale, x_zero_point, gamma, beta, epsilon, y_scale,
                                                    y_zero_point))
                table.append(("layernorm", f"n={n} s_x={x_scale} eps={epsilon} {style}", diff.size,
                              (diff <= 1).mean(), diff.max()))
    for x_scale, y_scale in ((0.05, 0.03), (0.02, 0.01), (0.1, 0.08)):
        codes = np.arange(-128, 128)
        x = x_scale * (codes + 3)
        exact = quantize(0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))), y_scale, -5)
        diff = np.abs(gelu_table(x_scale, -3, y_scale, -5)[codes & 0xFF] - exact)
        table.append(("gelu (ve.lut)", f"s_x={x_scale} s_y={y_scale}", diff.size, (diff <= 1).mean(), diff.max()))
    return table


def test_kernels_are_within_one_lsb_of_float64():
    for operator, case, size, within, worst in error_table():
        assert within >= LSB_BAR and worst <= 2, (operator, case, within, worst)


if __name__ == "__main__":
    print("| operator | case | outputs | within 1 LSB | max LSB |\n|---|---|---|---|---|")
    for operator, case, size, within, worst in error_table():
        print(f"| {operator} | {case} | {size} | {100 * within:.3f} % | {int(worst)} |")


@pytest.mark.parametrize("y_scale, multiplier", [(1 / 255, 254), (1 / 256, 256), (0.5, 2), (1.0, 1)])
def test_the_softmax_scale_is_the_multiplier_onnxruntime_applies(y_scale, multiplier):
    """QLinearSoftmax multiplies by floor(1.0f / y_scale): binary32 1/255 is above 1/255, so 254."""
    assert onnxruntime_softmax_scale(y_scale) == 1 / multiplier


@pytest.mark.parametrize("y_scale", [0.0, -0.1, 2.0, float("nan")])
def test_a_softmax_scale_without_an_output_step_is_refused(y_scale):
    with pytest.raises(FirmwareError, match="no output step"):
        onnxruntime_softmax_scale(y_scale)


def test_a_softmax_scale_whose_reciprocal_overflows_binary32_is_refused():
    for y_scale in (1e-39, 1e-46):
        with pytest.raises(FirmwareError, match="no output step"):
            onnxruntime_softmax_scale(y_scale)
