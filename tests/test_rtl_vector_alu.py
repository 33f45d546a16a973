"""VectorALU in Amaranth's simulator against the golden model's arithmetic."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from tcloud.isa.golden import lookup, requantize, requantize_fp32, ve_fma, ve_fmav, wrap_i32
from tcloud.isa.table import LUT_BYTES, UINT8_OFFSET, FmaResult, FmaSource
from tcloud.rtl.decode import OPCODES
from tcloud.rtl.vector_alu import ELEMENTWISE_OPS, VectorALU

LANES = 8
I32 = (-(1 << 31), (1 << 31) - 1)
TABLE = np.random.default_rng(99).integers(-128, 128, LUT_BYTES)
"""``ve.lut``'s table in every case (the other ops must ignore it)."""


def golden(op, x, y, mult, shift, zp, dst_i8):
    x, y = np.asarray(x, np.int64), np.asarray(y, np.int64)
    if op == "ve.requant":
        return requantize(x, mult, shift, zp, dst_i8)
    if op == "ve.requantf":
        return requantize_fp32(x, y, zp, dst_i8)
    if op == "ve.lut":
        return lookup(TABLE, x)
    value = {"ve.add": x + y, "ve.sub": x - y, "ve.mul": x * y, "ve.max": np.maximum(x, y),
             "ve.min": np.minimum(x, y), "ve.relu": np.maximum(x, 0), "ve.copy": x, "ve.fill": x}[op]
    return np.clip(value, -128, 127) if dst_i8 else wrap_i32(value)


def run_vectors(cases, table=TABLE):
    """Evaluate each (op, x, y, mult, shift, zp, dst_i8) case on the ALU with ``ve.lut`` table ``table``;
    return the results."""
    dut = VectorALU(LANES)
    results = []

    async def bench(ctx):
        for index, value in enumerate(table):
            ctx.set(dut.table[index], int(value) & 0xFF)
        for op, x, y, mult, shift, zp, dst_i8 in cases:
            ctx.set(dut.opcode, OPCODES[op])
            for lane in range(LANES):
                ctx.set(dut.x[lane], int(x[lane]))
                ctx.set(dut.y[lane], int(y[lane]))
            ctx.set(dut.mult, mult)
            ctx.set(dut.shift, shift)
            ctx.set(dut.zp, zp)
            ctx.set(dut.dst_i8, dst_i8)
            results.append([ctx.get(dut.result[lane]) for lane in range(LANES)])

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return results


EDGES = np.array([I32[0], I32[1], -1, 0, 1, -128, 127, 128], dtype=np.int64)


def random_cases(op, count, seed):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        x = rng.integers(*I32, LANES, endpoint=True)
        y = rng.integers(*I32, LANES, endpoint=True)
        if i % 3 == 0:
            x, y = EDGES, EDGES[::-1].copy()
        elif i % 3 == 1:
            x, y = rng.integers(-300, 300, LANES), rng.integers(-300, 300, LANES)
        mult = int(rng.integers(0, 1 << 31))
        shift = int(rng.integers(0, 64))
        if i % 4 == 0:
            mult, shift = 1, int(rng.integers(1, 4))  # many exact ties
        cases.append((op, x, y, mult, shift, int(rng.integers(-128, 128)), int(rng.integers(0, 2))))
    return cases


@pytest.mark.parametrize("op", [op for op in ELEMENTWISE_OPS if op not in ("ve.fma", "ve.fmav")])  # fma: below
def test_matches_golden(op):
    cases = random_cases(op, 40, seed=len(op) * 7 + OPCODES[op])
    for case, got in zip(cases, run_vectors(cases)):
        assert got == golden(*case).tolist(), case


def test_requant_rounding_ties_and_saturation():
    x = np.array([5, 7, -5, -7, 3, -3, 255, -257], dtype=np.int64)
    got = run_vectors([("ve.requant", x, x, 1, 1, 0, 1), ("ve.requant", x, x, 1, 2, 0, 1)])
    assert got[0] == [2, 4, -2, -4, 2, -2, 127, -128]
    assert got[1] == [1, 2, -1, -2, 1, -1, 64, -64]
    big = np.array([I32[1], I32[0], I32[1], I32[0], 1, -1, 0, 0], dtype=np.int64)
    got = run_vectors([("ve.requant", big, big, (1 << 31) - 1, 0, 0, 0),
                       ("ve.requant", big, big, (1 << 31) - 1, 63, 0, 0)])
    assert got[0] == [I32[1], I32[0], I32[1], I32[0], (1 << 31) - 1, -(1 << 31) + 1, 0, 0]
    assert got[1] == golden("ve.requant", big, big, (1 << 31) - 1, 63, 0, 0).tolist()


def scale_words(scales):
    """Bit patterns of binary32 scales, as the signed int32 the ALU's y lanes hold."""
    return np.asarray(scales, np.float32).view(np.int32).astype(np.int64)


def requantf_cases(seed):
    """Accumulators and scale words that reach every rounding step of ve.requantf: exact ties at the
    final rounding, |acc| >= 2**24 (rounded on conversion), products that round twice, extremes,
    tiny, huge, negative, zero, subnormal, infinite and NaN scales."""
    rng = np.random.default_rng(seed)
    specials = np.array([0.0, -0.0, 1e-45, 1.1754942e-38, np.inf, -np.inf, np.nan, 2.0 ** 30], np.float32)
    cases = []
    for i in range(48):
        kind = i % 6
        if kind == 0:  # ties: half-integers from small accumulators
            x = rng.integers(-64, 64, LANES) * 2 + 1
            scales = np.full(LANES, np.float32(0.5) * rng.choice([1, 3, 5]))
        elif kind == 1:  # beyond 2**24: the int32 -> binary32 conversion rounds
            x = rng.integers(1 << 24, 1 << 31, LANES) * rng.choice([-1, 1], LANES)
            scales = np.exp2(rng.uniform(-31, -22, LANES)).astype(np.float32)
        elif kind == 2:  # typical requantization scales, any accumulator
            x = rng.integers(*I32, LANES, endpoint=True)
            scales = np.exp(rng.uniform(-25, -2, LANES)).astype(np.float32)
        elif kind == 3:  # small accumulators, scales near 1 and above: int32 results
            x = rng.integers(-5000, 5000, LANES)
            scales = np.exp(rng.uniform(-3, 20, LANES)).astype(np.float32) * rng.choice([-1, 1], LANES)
        elif kind == 4:  # extremes and special scales
            x = np.array([I32[0], I32[1], -1, 0, 1, (1 << 24) + 1, -(1 << 24) - 3, 3 << 23])
            scales = rng.permutation(specials)
        else:  # random words: every exponent, sign and fraction
            x = rng.integers(*I32, LANES, endpoint=True)
            words = rng.integers(*I32, LANES, endpoint=True)
            cases.append(("ve.requantf", x, words, 0, 0, int(rng.integers(-128, 128)), i % 2))
            continue
        cases.append(("ve.requantf", x, scale_words(scales), 0, 0, int(rng.integers(-128, 128)), i % 2))
    return cases


def test_requantf_matches_golden_on_targeted_values():
    cases = requantf_cases(seed=5)
    for case, got in zip(cases, run_vectors(cases)):
        assert got == golden(*case).tolist(), case


def test_lut_reads_every_entry_by_the_low_byte_of_each_lane():
    """Every one of the table's entries reaches a lane, indexed by the source byte as unsigned (int8
    sources arrive sign-extended: -1 selects entry 255), under either dst_i8."""
    inputs = np.arange(-128, 128)
    cases = [("ve.lut", inputs[i:i + LANES], inputs[i:i + LANES], 0, 0, 0, i // LANES % 2)
             for i in range(0, len(inputs), LANES)]
    got = np.concatenate(run_vectors(cases))
    assert got.tolist() == TABLE[inputs & 0xFF].tolist()
    assert got.tolist() != TABLE.tolist(), "a table indexed by the signed value would pass only by chance"


def run_fma(cases, op="ve.fma"):
    """Evaluate ve.fma cases (x lanes, addend words, R word, src1_kind, dst_kind) on the ALU; for
    ``op="ve.fmav"`` the words in y are the multipliers and R the addend."""
    dut = VectorALU(LANES)
    results = []

    async def bench(ctx):
        ctx.set(dut.opcode, OPCODES[op])
        for x, c, r, kind, result in cases:
            for lane in range(LANES):
                ctx.set(dut.x[lane], int(x[lane]))
                ctx.set(dut.y[lane], int(np.int64(c[lane]).astype(np.uint32).view(np.int32)))
            ctx.set(dut.fma_r, int(r))
            ctx.set(dut.fma_src1, int(kind))
            ctx.set(dut.fma_dst, int(result))
            results.append([ctx.get(dut.result[lane]) for lane in range(LANES)])

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return results


def fma_golden(x, c, r, kind, result, op="ve.fma"):
    """The golden model's ve.fma (or ve.fmav: ``c`` the multipliers, ``r`` the addend) on ALU lanes:
    byte sources arrive sign-extended (uint8 as the pNPU holds it: q - 128); binary32 words come back as
    the signed int32 with the same bits, uint8 results as q - 128."""
    x = np.asarray(x, np.int64)
    if kind == FmaSource.UINT8:
        x = x + UINT8_OFFSET
    if op == "ve.fmav":
        out = ve_fmav(x, kind, np.asarray(c, np.int64) & 0xFFFFFFFF, r, result)
    else:
        out = ve_fma(x, kind, r, np.asarray(c, np.int64), result)
    if result == FmaResult.UINT8:
        out = out - UINT8_OFFSET
    return wrap_i32(out) if result == FmaResult.FP32 else out


def fma_cases(seed, count):
    """Random and targeted operands for every src1/dst kind: cancellation, ties at 24 bits and at the
    integer rounding, extremes of the exponent (flush, overflow), special words."""
    rng = np.random.default_rng(seed)
    def f32(values):
        with np.errstate(over="ignore"):  # products beyond binary32 become inf words: fine as addends
            return np.asarray(values, np.float32).view(np.uint32).astype(np.int64)
    specials = np.array([0, 0x80000000, 0x00000001, 0x00800000, 0x7F7FFFFF, 0x7F800000, 0xFFC00000, 0x3F800000])
    cases = []
    for i in range(count):
        kind, result = FmaSource(i % 4), FmaResult((i // 4) % 4)
        style = (i // 16) % 6
        if kind == FmaSource.FP32:
            x = f32(rng.normal(0, 100, LANES)) if style else rng.integers(0, 1 << 32, LANES)
        elif kind == FmaSource.INT32:
            x = rng.integers(*I32, LANES, endpoint=True) if style % 2 else rng.integers(-(1 << 16), 1 << 16, LANES)
        else:
            x = rng.integers(-128, 128, LANES)
        r = int(f32(rng.choice([1.0, 0.5 + 2.0 ** -20, -0.3712, 2.0 ** -100, 3.0e38])) if style < 3
                else rng.integers(0, 1 << 32))
        if style == 0:  # random words
            c = rng.integers(0, 1 << 32, LANES)
        elif style == 1:  # typical: small binary32 addends
            c = f32(rng.normal(0, 50, LANES))
        elif style == 2:  # cancellation: the addend is minus the product rounded, give or take an ulp
            xv = (np.asarray(x, np.uint32).view(np.float32).astype(np.float64) if kind == FmaSource.FP32
                  else (x & 0xFF if kind == FmaSource.UINT8 else x).astype(np.float64))
            prod = xv * np.float64(np.uint32(r).view(np.float32))
            c = (f32(-prod) ^ rng.integers(0, 4, LANES)) & 0xFFFFFFFF
            # or minus the power of two just above |product|: a product of many bits one place below the
            # addend's top cancels all but its low bits, which a narrow alignment frame would lose
            with np.errstate(divide="ignore"):
                power = -np.sign(prod) * np.exp2(np.ceil(np.log2(np.abs(prod))))
            c = np.where(np.arange(LANES) % 2 == 1, f32(power), c)
        elif style == 3:  # special words
            c = rng.permutation(specials)
        elif style == 4:  # half-integers near zero: ties of the integer rounding
            c = f32(rng.integers(-300, 300, LANES) + 0.5)
            r = 0
        else:  # products exactly halfway between binary32 neighbours: a tiny addend's sign decides (sticky)
            if kind == FmaSource.INT32:
                bits = rng.integers(25, 32, LANES)
                x = (1 << (bits - 1)) + (rng.integers(0, 1 << 10, LANES) << (bits - 24)) + (1 << (bits - 25))
                x = x * rng.choice([-1, 1], LANES)
                r = int(f32(rng.choice([1.0, 0.125, -4.0])))
            elif kind == FmaSource.FP32:
                x = f32(1.0 + (2 * rng.integers(0, 1 << 20, LANES) + 1) * 2.0 ** -23)
                r = int(f32(1.5))
            c = f32(rng.choice([-1, 1], LANES) * np.exp2(rng.integers(-60, -30, LANES).astype(np.float64)))
        cases.append((x, c, r, kind, result))
    # results at the edge of the normal range: 2**-127 (flushed), 2**-126, and 3 * 2**-127 (kept)
    edge = np.array([0x80800000, 0x80C00000, 0x80400000, 0x00800000, 0x80A00000, 0x80900000, 0, 0x7F7FFFFF])
    cases += [(np.ones(LANES, np.int64), edge, 0x00C00000, FmaSource.INT8, FmaResult.FP32),
              (np.full(LANES, 2, np.int64), edge, 0x7F000000, FmaSource.INT32, FmaResult.FP32)]
    return cases


def test_fma_matches_golden():
    cases = fma_cases(seed=11, count=160)
    for case, got in zip(cases, run_fma(cases)):
        assert got == fma_golden(*case).tolist(), (case[3], case[4], hex(case[2]))


def fmav_cases(seed, count):
    """ve.fmav operands (x lanes, multiplier words, addend R, kinds): the ve.fma cases with their lanes'
    words as multipliers and one of them, or the ve.fma multiplier, as the addend; and cancellations,
    products within an ulp or two of -R."""
    rng = np.random.default_rng(seed)
    cases = []
    for x, c, r, kind, result in fma_cases(seed, count):
        addend = int(c[rng.integers(0, LANES)]) & 0xFFFFFFFF if rng.integers(0, 2) else r
        cases.append((x, c, addend, kind, result))
    for i in range(count // 4):
        kind, result = FmaSource(i % 4), FmaResult((i // 4) % 4)
        x = rng.integers(-128, 128, LANES) if kind in (FmaSource.INT8, FmaSource.UINT8) else (
            rng.integers(-(1 << 20), 1 << 20, LANES))
        xv = (x & 0xFF if kind == FmaSource.UINT8 else x).astype(np.float64)
        if kind == FmaSource.FP32:
            xv = rng.normal(0, 10, LANES).astype(np.float32)
            x = xv.view(np.uint32).astype(np.int64)
        addend = np.float32(rng.normal(0, 1000))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            y = np.nan_to_num(-np.float64(addend) / xv).astype(np.float32)
        y = (y.view(np.uint32).astype(np.int64) ^ rng.integers(0, 4, LANES)) & 0xFFFFFFFF
        cases.append((x, y, int(addend.view(np.uint32)), kind, result))
    return cases


def test_fmav_matches_golden():
    """ve.fmav shares ve.fma's datapath with R and the y words swapped."""
    cases = fmav_cases(seed=23, count=96)
    for case, got in zip(cases, run_fma(cases, "ve.fmav")):
        assert got == fma_golden(*case, op="ve.fmav").tolist(), (case[3], case[4], hex(case[2]))
