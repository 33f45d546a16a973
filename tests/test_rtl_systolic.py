"""SystolicArray in Amaranth's simulator against NumPy (the golden model's me.matmul rule)."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from tcloud.rtl.systolic import SystolicArray


def simulate(dut, cycles):
    """Drive the array for ``cycles``: each is a dict with optional ``"a": (bank, row)`` (stream an
    input row) and ``"w": (bank, r, values)`` (write weight row ``r``). Returns ``(dut, outputs)``
    with one ``(cycle, output row)`` per ``out_valid``."""
    rows, cols = dut.rows, dut.cols
    outputs = []

    async def bench(ctx):
        cycle = 0
        for step in cycles + [{}] * (dut.latency + 2):
            ctx.set(dut.in_valid, "a" in step)
            if "a" in step:
                bank, vector = step["a"]
                ctx.set(dut.in_bank, bank)
                for r in range(rows):
                    ctx.set(dut.in_data[r], int(vector[r]))
            ctx.set(dut.w_we, "w" in step)
            if "w" in step:
                bank, r, values = step["w"]
                ctx.set(dut.w_bank, bank)
                ctx.set(dut.w_row, r)
                for c in range(cols):
                    ctx.set(dut.w_data[c], int(values[c]))
            await ctx.tick()
            cycle += 1
            if ctx.get(dut.out_valid):
                outputs.append((cycle, [ctx.get(dut.out_data[c]) for c in range(cols)]))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return dut, outputs


def load(bank, w):
    return [{"w": (bank, r, w[r])} for r in range(w.shape[0])]


def reload_run(rows, cols, early):
    """Bank 0 serves rows 0-3, bank 1 rows 4-11 while bank 0 is reloaded, bank 0 rows 12-15."""
    rng = np.random.default_rng(rows * 31 + cols)
    w0, w1, w2 = (rng.integers(-128, 128, (rows, cols)) for _ in range(3))
    w0[0, 0], w0[-1, -1] = -128, 127
    a = rng.integers(-128, 128, (16, rows))
    a[0, :] = -128
    dut = SystolicArray(rows, cols)
    start = len(load(0, w0) + load(1, w1))
    cycles = load(0, w0) + load(1, w1) + [{} for _ in range(max(12, 4 + dut.bank_free_delay + rows))]
    for i in range(12):
        cycles[start + i]["a"] = (0 if i < 4 else 1, a[i])
    first_write = start + 3 + dut.bank_free_delay - early
    for r in range(rows):
        cycles[first_write + r]["w"] = (0, r, w2[r])
    cycles += [{"a": (0, a[i])} for i in range(12, 16)]
    _, outputs = simulate(dut, cycles)
    expected = [(a[i] @ (w0 if i < 4 else w1 if i < 12 else w2)).tolist() for i in range(16)]
    return [row for _, row in outputs], expected


@pytest.mark.parametrize("rows, cols", [(4, 4), (8, 8), (4, 8)])
def test_reloading_a_bank_while_the_other_streams(rows, cols):
    got, expected = reload_run(rows, cols, early=0)
    assert got == expected


def test_bank_free_delay_is_tight():
    got, expected = reload_run(4, 4, early=1)
    assert got != expected


def test_accepts_one_row_per_cycle_with_fixed_latency():
    w = np.arange(16).reshape(4, 4) - 8
    a = np.arange(40).reshape(10, 4) - 20
    dut, outputs = simulate(SystolicArray(4, 4), load(0, w) + [{"a": (0, a[i])} for i in range(10)])
    first_input = 4
    assert [c for c, _ in outputs] == [first_input + i + dut.latency for i in range(10)]
    assert [row for _, row in outputs] == (a @ w).tolist()
    assert dut.latency == 4 + 4 - 1


def test_partial_tile_with_zero_weights():
    rows, cols, k, n = 4, 4, 3, 2
    rng = np.random.default_rng(5)
    w = np.zeros((rows, cols), int)
    w[:k, :n] = rng.integers(-128, 128, (k, n))
    a = rng.integers(-128, 128, (3, rows))
    _, outputs = simulate(SystolicArray(rows, cols), load(0, w) + [{"a": (0, a[i])} for i in range(3)])
    got = np.array([row for _, row in outputs])
    assert got[:, :n].tolist() == (a[:, :k] @ w[:k, :n]).tolist()
    assert not got[:, n:].any()


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError, match="rows must be a positive integer, got 0"):
        SystolicArray(0, 4)
