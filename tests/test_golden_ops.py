"""Golden model semantics versus independent NumPy / Python-integer references."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tcloud.firmware.gather import embedding_lookup, gather_reference
from tcloud.isa import ContextStatus, EngineClass, FaultCode, Instr, Machine, encode_stream, requantize
from tcloud.isa.table import LUT_BYTES
from tcloud.runtime import FunctionalDevice, run_image

from conftest import new_tenant, utop

I32 = (-(1 << 31), (1 << 31) - 1)


def ref_requant(x, mult, shift, zp, lo=-128, hi=127):
    """Exact round-half-to-even with Python integers (round() on a Fraction is half-to-even)."""
    return max(lo, min(hi, round(Fraction(int(x) * mult, 1 << shift)) + zp))


def wrap(values):
    return ((np.asarray(values, dtype=object) + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int64)


def run_ve(tenant, body, sources):
    """Place source arrays in the scratchpad, run one VE uTOp, return the context state."""
    for addr, array in sources.items():
        tenant.write_sram(addr, array)
    tenant.load(utop(EngineClass.VE, body) + [Instr("halt")])
    tenant.machine.run()
    assert tenant.state.status == ContextStatus.DONE, tenant.state.fault_detail
    return tenant.state


BINARY = {"ve.add": lambda x, y: x + y, "ve.sub": lambda x, y: x - y, "ve.mul": lambda x, y: x * y,
          "ve.max": np.maximum, "ve.min": np.minimum}


@given(op=st.sampled_from(sorted(BINARY)), rows=st.integers(1, 4), n=st.integers(1, 19),
       src1_i8=st.booleans(), src2_i8=st.booleans(), dst_i8=st.booleans(), broadcast=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_binary_ops_match_numpy(op, rows, n, src1_i8, src2_i8, dst_i8, broadcast, seed):
    tenant = new_tenant()
    rng = np.random.default_rng(seed)
    edge = lambda i8: np.array([-128, 127, 0, -1] if i8 else [I32[0], I32[1], 0, -1])
    def operand(i8, shape):
        info = np.iinfo(np.int8 if i8 else np.int32)
        values = rng.integers(info.min, info.max + 1, shape, dtype=np.int64)
        values.flat[:4] = edge(i8)[:values.size]
        return values.astype(np.int8 if i8 else np.int32)
    stride = 128
    x = operand(src1_i8, (rows, n))
    y = operand(src2_i8, (1 if broadcast else rows, n))
    sources = {}
    for r in range(rows):
        sources[0x0 + r * stride] = x[r]
    for r in range(y.shape[0]):
        sources[0x1000 + r * stride] = y[r]
    body = [Instr("ve.shape", rows=rows, dst_stride=stride, src1_stride=stride,
                  src2_stride=0 if broadcast else stride),
            Instr(op, dst=0x2000, src1=0x0, src2=0x1000, n=n, src1_i8=int(src1_i8),
                  src2_i8=int(src2_i8), dst_i8=int(dst_i8))]
    run_ve(tenant, body, sources)
    expected = BINARY[op](x.astype(object), np.broadcast_to(y, (rows, n)).astype(object))
    expected = np.clip(expected.astype(np.int64) if op in ("ve.max", "ve.min") else expected, -128, 127) \
        if dst_i8 else wrap(expected)
    dtype = np.int8 if dst_i8 else np.int32
    got = np.stack([tenant.read_sram(0x2000 + r * stride, n, dtype) for r in range(rows)])
    assert got.tolist() == np.asarray(expected).astype(np.int64).tolist()
    assert tenant.state.counters.ve_elements == rows * n


def test_unary_fill_and_copy(tenant):
    x = np.array([-300, -128, -1, 0, 1, 127, 300, I32[1]], dtype=np.int32)
    body = [Instr("ve.relu", dst=0x100, src=0x0, n=8),
            Instr("ve.copy", dst=0x200, src=0x0, n=8, dst_i8=1),
            Instr("ve.copy", dst=0x300, src=0x200, n=8, src_i8=1),
            Instr("ve.fill", dst=0x400, n=5, value=-7),
            Instr("ve.fill", dst=0x420, n=3, value=1000, dst_i8=1)]
    run_ve(tenant, body, {0x0: x})
    assert tenant.read_sram(0x100, 8, np.int32).tolist() == [0, 0, 0, 0, 1, 127, 300, I32[1]]
    assert tenant.read_sram(0x200, 8, np.int8).tolist() == [-128, -128, -1, 0, 1, 127, 127, 127]
    assert tenant.read_sram(0x300, 8, np.int32).tolist() == [-128, -128, -1, 0, 1, 127, 127, 127]
    assert tenant.read_sram(0x400, 5, np.int32).tolist() == [-7] * 5
    assert tenant.read_sram(0x420, 3, np.int8).tolist() == [127] * 3


@given(rows=st.integers(1, 5), n=st.integers(1, 40), src_i8=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_reductions_match_numpy(rows, n, src_i8, seed):
    tenant = new_tenant()
    rng = np.random.default_rng(seed)
    dtype = np.int8 if src_i8 else np.int32
    x = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1, (rows, n)).astype(dtype)
    stride = 160
    body = [Instr("ve.shape", rows=rows, dst_stride=4, src1_stride=stride),
            Instr("ve.redsum", dst=0x2000, src=0x0, n=n, src_i8=int(src_i8)),
            Instr("ve.shape", rows=rows, dst_stride=4, src1_stride=stride),
            Instr("ve.redmax", dst=0x2100, src=0x0, n=n, src_i8=int(src_i8))]
    run_ve(tenant, body, {r * stride: x[r] for r in range(rows)})
    assert tenant.read_sram(0x2000, rows, np.int32).tolist() == wrap(x.astype(object).sum(axis=1)).tolist()
    assert tenant.read_sram(0x2100, rows, np.int32).tolist() == x.max(axis=1).tolist()


@given(x=st.integers(*I32), mult=st.integers(0, (1 << 31) - 1), shift=st.integers(0, 63),
       zp=st.integers(-128, 127), dst_i8=st.booleans())
def test_requantize_matches_exact_rational_rounding(x, mult, shift, zp, dst_i8):
    lo, hi = (-128, 127) if dst_i8 else I32
    assert int(requantize(np.array([x]), mult, shift, zp, dst_i8)[0]) == ref_requant(x, mult, shift, zp, lo, hi)


@pytest.mark.parametrize("x, mult, shift, zp, expected", [
    (5, 1, 1, 0, 2),        # 2.5 -> 2 (tie to even)
    (7, 1, 1, 0, 4),        # 3.5 -> 4
    (-5, 1, 1, 0, -2),      # -2.5 -> -2
    (-7, 1, 1, 0, -4),      # -3.5 -> -4
    (3, 1, 2, 0, 1),        # 0.75 -> 1
    (-3, 1, 2, 0, -1),      # -0.75 -> -1
    (1, 1, 1, 0, 0),        # 0.5 -> 0
    (-1, 1, 1, 0, 0),       # -0.5 -> 0
    (255, 1, 1, 0, 127),    # 127.5 -> 128 -> saturates to 127
    (-257, 1, 1, 0, -128),  # -128.5 -> -128
    (100, 1, 0, 100, 127),  # zero point pushes into saturation
    (I32[0], (1 << 31) - 1, 63, 0, 0),
    (I32[1], (1 << 31) - 1, 0, 0, 127),
])
def test_requantize_edge_cases_in_the_machine(tenant, x, mult, shift, zp, expected):
    body = [Instr("ve.requant", dst=0x100, src=0x0, n=1, mult=mult, shift=shift, zp=zp)]
    run_ve(tenant, body, {0x0: np.array([x], np.int32)})
    assert tenant.read_sram(0x100, 1, np.int8)[0] == expected == ref_requant(x, mult, shift, zp)


@given(m=st.integers(1, 12), k=st.integers(1, 4), n=st.integers(1, 4), acc=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_matmul_matches_numpy(m, k, n, acc, seed):
    tenant = new_tenant()
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w = rng.integers(-128, 128, (k, n), dtype=np.int8)
    a.flat[0], w.flat[0] = -128, -128
    old = rng.integers(I32[0], I32[1], (m, n), dtype=np.int64).astype(np.int32)
    a_stride, w_stride, out_stride = 8, 4, 32
    for r in range(m):
        tenant.write_sram(r * a_stride, a[r])
        tenant.write_sram(0x800 + r * out_stride, old[r])
    for r in range(k):
        tenant.write_sram(0x400 + r * w_stride, w[r])
    body = [Instr("me.loadw", w=0x400, k=k, n=n, w_stride=w_stride),
            Instr("me.matmul", a=0, out=0x800, m=m, a_stride=a_stride, out_stride=out_stride, acc=int(acc))]
    tenant.load(utop(EngineClass.ME, body) + [Instr("halt")])
    tenant.machine.run()
    assert tenant.state.status == ContextStatus.DONE
    expected = a.astype(object) @ w.astype(object) + (old.astype(object) if acc else 0)
    got = np.stack([tenant.read_sram(0x800 + r * out_stride, n, np.int32) for r in range(m)])
    assert got.tolist() == wrap(expected).tolist()
    assert tenant.state.counters.macs == m * k * n


@given(rows=st.integers(1, 6), words=st.integers(1, 5), hbm_gap=st.integers(0, 3), sram_gap=st.integers(0, 3),
       seed=st.integers(0, 2**32 - 1))
def test_dma_strided_round_trip(rows, words, hbm_gap, sram_gap, seed):
    tenant = new_tenant()
    rng = np.random.default_rng(seed)
    row_bytes = 4 * words
    hbm_stride, sram_stride = row_bytes + 4 * hbm_gap, row_bytes + 4 * sram_gap
    src = rng.integers(0, 256, rows * hbm_stride, dtype=np.uint8)
    tenant.write_hbm(0x100, src)
    tenant.load(utop(EngineClass.DMA, [
        Instr("dma.load", sram=0x40, hbm=0x100, rows=rows, row_bytes=row_bytes,
              hbm_stride=hbm_stride, sram_stride=sram_stride)], signal=1)
        + utop(EngineClass.DMA, [
            Instr("dma.store", sram=0x40, hbm=0x2000, rows=rows, row_bytes=row_bytes,
                  hbm_stride=row_bytes, sram_stride=sram_stride)], wait0=0, count0=1)
        + [Instr("halt")])
    tenant.machine.run()
    assert tenant.state.status == ContextStatus.DONE
    expected = src.reshape(rows, hbm_stride)[:, :row_bytes].reshape(-1)
    assert tenant.read_hbm(0x2000, rows * row_bytes, np.uint8).tolist() == expected.tolist()
    gaps = tenant.read_sram(0x40, rows * sram_stride, np.uint8).reshape(rows, sram_stride)[:, row_bytes:]
    assert not gaps.any()
    counters = tenant.state.counters
    assert counters.hbm_bytes_read == counters.hbm_bytes_written == rows * row_bytes


def test_dma_overlapping_destination_rows_write_in_order(tenant):
    tenant.write_hbm(0x0, np.arange(1, 17, dtype=np.uint8))
    tenant.load(utop(EngineClass.DMA, [Instr("dma.load", sram=0x0, hbm=0x0, rows=2, row_bytes=8,
                                             hbm_stride=8, sram_stride=4)]) + [Instr("halt")])
    tenant.machine.run()
    assert tenant.read_sram(0, 12, np.uint8).tolist() == [1, 2, 3, 4, 9, 10, 11, 12, 13, 14, 15, 16]


def test_engine_state_does_not_leak_between_utops(tenant):
    tenant.load(utop(EngineClass.ME, [Instr("me.loadw", w=0, k=1, n=1)])
                + utop(EngineClass.ME, [Instr("me.matmul", a=0, out=0x40, m=1)]) + [Instr("halt")])
    tenant.machine.run()
    assert tenant.state.fault == FaultCode.ME_STATE
    assert tenant.state.fault_pc == tenant.code_at + 3 * 16


def test_ve_shape_resets_at_each_utop(tenant):
    tenant.write_sram(0x0, np.array([5, 6], np.int32))
    tenant.load(utop(EngineClass.VE, [Instr("ve.shape", rows=2, dst_stride=4, src1_stride=4)])
                + utop(EngineClass.VE, [Instr("ve.copy", dst=0x100, src=0x0, n=1)]) + [Instr("halt")])
    tenant.machine.run()
    assert tenant.read_sram(0x100, 2, np.int32).tolist() == [5, 0]


def test_tokens_count_and_consume(tenant):
    ve = lambda value: [Instr("ve.fill", dst=0x0, n=1, value=value)]
    program = (utop(EngineClass.VE, ve(1), signal=0b11) + utop(EngineClass.VE, ve(2), signal=0b01)
               + utop(EngineClass.VE, ve(3), wait0=0, count0=2, wait1=1, count1=1) + [Instr("halt")])
    tenant.load(program)
    tenant.machine.run()
    assert tenant.state.status == ContextStatus.DONE
    assert tenant.state.tokens[:2] == [0, 0]
    assert tenant.state.counters.utops == {"dma": 0, "me": 0, "ve": 3}


def test_same_token_in_two_wait_slots_adds_up(tenant):
    program = (utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=1)], signal=1)
               + utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=1)], wait0=0, count0=1, wait1=0, count1=1)
               + [Instr("halt")])
    tenant.load(program)
    tenant.machine.run()
    assert tenant.state.fault == FaultCode.TOKEN_DEADLOCK


# --- table lookup ----------------------------------------------------------------------------------


@given(rows=st.integers(1, 4), n=st.integers(1, 40), src_stride=st.sampled_from([0, 40, 64]),
       in_place=st.booleans(), reload=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_lut_matches_numpy_indexing(rows, n, src_stride, in_place, reload, seed):
    """dst[r][i] = table[src[r][i] as unsigned byte], per row of ve.shape (a zero source stride
    broadcasts one row), in place as well; a second ve.lutload replaces the table for what follows."""
    tenant = new_tenant()
    rng = np.random.default_rng(seed)
    tables = rng.integers(-128, 128, (2, LUT_BYTES)).astype(np.int8)
    x = rng.integers(-128, 128, (rows, n)).astype(np.int8)
    x.flat[:3] = [-128, -1, 127][:x.size]
    dst, dst_stride = (0x0, src_stride) if in_place and src_stride else (0x2000, 44)
    sources = {0x1000: tables[0], 0x1100: tables[1]}
    sources.update({r * src_stride: x[r] for r in range(rows if src_stride else 1)})
    body = [Instr("ve.lutload", src=0x1000), Instr("ve.lutload", src=0x1100)][:1 + reload]
    body += [Instr("ve.shape", rows=rows, dst_stride=dst_stride, src1_stride=src_stride),
             Instr("ve.lut", dst=dst, src=0x0, n=n)]
    run_ve(tenant, body, sources)
    rows_read = x[:1].repeat(rows, axis=0) if src_stride == 0 else x
    expected = [[int(tables[int(reload)][v & 0xFF]) for v in row.tolist()] for row in rows_read]
    got = [tenant.read_sram(dst + r * dst_stride, n, np.int8).tolist() for r in range(rows)]
    assert got == expected
    assert tenant.state.counters.ve_elements == rows * n


@pytest.mark.parametrize("program, pc", [
    ([Instr("ve.lut", dst=0x100, src=0, n=4)], 1),
    ([Instr("ve.fill", dst=0x100, n=1, value=5), Instr("ve.lut", dst=0x100, src=0, n=4)], 2),
], ids=["no_lutload", "after_other_work"])
def test_lut_without_a_table_in_its_utop_faults(tenant, program, pc):
    tenant.load(utop(EngineClass.VE, program) + [Instr("halt")])
    tenant.machine.run()
    assert (tenant.state.fault, tenant.state.fault_pc) == (FaultCode.VE_STATE, tenant.code_at + pc * 16)


def test_a_lut_table_does_not_outlive_its_utop(tenant):
    tenant.load(utop(EngineClass.VE, [Instr("ve.lutload", src=0x0), Instr("ve.lut", dst=0x200, src=0, n=1)])
                + utop(EngineClass.VE, [Instr("ve.lut", dst=0x300, src=0, n=1)]) + [Instr("halt")])
    tenant.machine.run()
    assert (tenant.state.fault, tenant.state.fault_pc) == (FaultCode.VE_STATE, tenant.code_at + 4 * 16)


def test_lutload_reads_a_whole_table_inside_the_window():
    machine = Machine("tiny")
    machine.host(Instr("ctx.hbm", ctx=0, base=0, size=0x1000))
    machine.host(Instr("ctx.sram", ctx=0, base=0, size=0x200))
    code = encode_stream(utop(EngineClass.VE, [Instr("ve.lutload", src=0x100)])
                         + utop(EngineClass.VE, [Instr("ve.lutload", src=0x104)]) + [Instr("halt")])
    machine.hbm[0x800:0x800 + len(code)] = np.frombuffer(code, np.uint8)
    machine.host(Instr("ctx.start", ctx=0, pc=0x800))
    machine.run()
    ctx = machine.contexts[0]
    assert (ctx.fault, ctx.fault_pc) == (FaultCode.SRAM_BOUNDS, 0x800 + 3 * 16)  # the first one fits exactly


# --- gather ------------------------------------------------------------------------------------------


def run_gather(tenant, table, indices, *, row_bytes, table_at=0x100, idx=0x2000, dst=0x3000, sram_stride=None):
    """Place ``table`` in HBM and ``indices`` (int32) in the scratchpad, run one ``dma.gather``."""
    tenant.write_hbm(table_at, table)
    tenant.write_sram(idx, np.asarray(indices, dtype="<i4"))
    tenant.load(utop(EngineClass.DMA, [Instr("dma.gather", sram=dst, hbm=table_at, idx=idx, rows=len(indices),
                                             row_bytes=row_bytes, sram_stride=sram_stride or row_bytes)])
                + [Instr("halt")])
    tenant.machine.run()
    return tenant.state


@given(table_rows=st.integers(1, 40), words=st.integers(1, 9), count=st.integers(1, 50), pad=st.integers(0, 3),
       seed=st.integers(0, 2**32 - 1))
def test_gather_matches_numpy_indexing(table_rows, words, count, pad, seed):
    """Row r of the destination (sram_stride apart) is table[indices[r]]; the bytes between rows stay;
    the HBM bytes read are counted."""
    tenant = new_tenant()
    rng = np.random.default_rng(seed)
    row_bytes, sram_stride = 4 * words, 4 * (words + pad)
    table = rng.integers(-128, 128, (table_rows, row_bytes), dtype=np.int8)
    indices = rng.integers(0, table_rows, count).astype(np.int32)
    tenant.write_sram(0x3000, np.full(count * sram_stride, 0x55, np.uint8))
    state = run_gather(tenant, table, indices, row_bytes=row_bytes, sram_stride=sram_stride)
    assert state.status == ContextStatus.DONE, state.fault_detail
    got = tenant.read_sram(0x3000, count * sram_stride, np.int8).reshape(count, sram_stride)
    assert np.array_equal(got[:, :row_bytes], gather_reference(table, indices))
    assert (got[:, row_bytes:].view(np.uint8) == 0x55).all()
    assert state.counters.hbm_bytes_read == count * row_bytes


@given(bad=st.one_of(st.integers(-(1 << 31), -1), st.integers(0x10000 // 16 - 0x100 // 16, (1 << 31) - 1)),
       position=st.integers(0, 5), seed=st.integers(0, 2**32 - 1))
def test_a_gather_index_outside_the_hbm_window_faults_before_writing(bad, position, seed):
    """A negative index, or one whose row reaches past the HBM window (the table starts at 0x100 of a
    0x10000-byte window, rows of 16 bytes), faults HBM_BOUNDS at the gather; no row is written, not
    even those of the good indices before it."""
    tenant = new_tenant()
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, 100, 6).astype(np.int64)
    indices[position] = bad
    state = run_gather(tenant, rng.integers(-128, 128, (100, 16), dtype=np.int8), indices.astype(np.int32),
                       row_bytes=16)
    assert (state.fault, state.fault_pc) == (FaultCode.HBM_BOUNDS, tenant.code_at + 16)
    assert not tenant.read_sram(0x3000, 6 * 16, np.uint8).any()
    assert state.counters.hbm_bytes_read == 0


def test_a_gather_index_may_select_the_last_row_of_the_window(tenant):
    last = (0x10000 - 0x100) // 16 - 1
    state = run_gather(tenant, np.zeros((1, 16), np.int8), [last, 0], row_bytes=16)
    assert state.status == ContextStatus.DONE, state.fault_detail


@pytest.mark.parametrize("fields, code", [
    ({"idx": 0x3FFC, "rows": 2}, FaultCode.SRAM_BOUNDS),  # the index vector leaves the scratchpad window
    ({"sram": 0x3FF0, "rows": 2}, FaultCode.SRAM_BOUNDS),  # so do the rows
    ({"sram": 0x1FF0, "rows": 2}, FaultCode.ILLEGAL_FIELD),  # the second row would overwrite the indices
    ({"sram": 0x1FF0, "sram_stride": 0x20}, FaultCode.ILLEGAL_FIELD),  # the indices between the rows
], ids=["indices_outside", "rows_outside", "rows_over_the_indices", "indices_within_the_rows_extent"])
def test_gather_scratchpad_faults(fields, code):
    tenant = new_tenant()
    instr = {"sram": 0x3000, "hbm": 0, "idx": 0x2000, "rows": 2, "row_bytes": 16, "sram_stride": 16, **fields}
    tenant.load(utop(EngineClass.DMA, [Instr("dma.gather", **instr)]) + [Instr("halt")])
    tenant.machine.run()
    assert (tenant.state.fault, tenant.state.fault_pc) == (code, tenant.code_at + 16)


@given(table_rows=st.integers(1, 50), words=st.integers(1, 12), count=st.integers(1, 60),
       sram_bytes=st.sampled_from([0x80, 0x200, 0x4000]), seed=st.integers(0, 2**32 - 1))
def test_the_embedding_lookup_program_matches_numpy(table_rows, words, count, sram_bytes, seed):
    """firmware.gather's program (blocks of indices double-buffered through the scratchpad budget) on the
    golden model returns table[indices]."""
    row_bytes = 4 * words
    assume(sram_bytes >= 2 * (row_bytes + 4))
    rng = np.random.default_rng(seed)
    table = rng.integers(-128, 128, (table_rows, row_bytes), dtype=np.int8)
    indices = rng.integers(0, table_rows, count).astype(np.int32)
    outputs, info = run_image(FunctionalDevice("tiny"), embedding_lookup("tiny", table_rows, row_bytes, count,
                                                                         sram_bytes=sram_bytes),
                              {"T": table, "I": indices})
    assert info.status == ContextStatus.DONE, info.detail
    assert np.array_equal(outputs["Y"], gather_reference(table, indices))
