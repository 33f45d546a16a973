"""Scratchpad and round-robin arbiter in Amaranth's simulator against a Python model."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from tcloud.isa import get_config
from tcloud.rtl.arbiter import RoundRobin
from tcloud.rtl.scratchpad import Scratchpad


@pytest.mark.parametrize("config", ["tiny", "small"])
def test_random_accesses_from_two_ports_match_a_byte_model(config):
    cfg = get_config(config)
    dut = Scratchpad(cfg, ports=2)
    banks, words = cfg.sram_banks, 256
    rng = np.random.default_rng(3)
    model = np.zeros(words * 4 + banks * 4, dtype=np.uint8)
    mismatches = []

    def requester(index):
        port = dut.port(index)
        base = index * (words // 2)

        async def bench(ctx):
            for _ in range(60):
                addr = base + int(rng.integers(0, words // 2 - banks))
                write = bool(rng.integers(0, 2))
                ctx.set(port.valid, 1)
                ctx.set(port.addr, addr)
                ctx.set(port.we, write)
                values = rng.integers(0, 1 << 32, banks, dtype=np.uint64)
                masks = rng.integers(0, 16, banks)
                for lane in range(banks):
                    ctx.set(port.wdata[lane], int(values[lane]))
                    ctx.set(port.wmask[lane], int(masks[lane]))
                await ctx.tick().until(port.ready)
                ctx.set(port.valid, 0)
                if write:
                    for lane in range(banks):
                        for byte in range(4):
                            if masks[lane] >> byte & 1:
                                model[(addr + lane) * 4 + byte] = (int(values[lane]) >> (8 * byte)) & 0xFF
                else:
                    expected = model[addr * 4:(addr + banks) * 4].view("<u4").tolist()
                    assert ctx.get(port.rvalid)
                    got = [ctx.get(port.rdata[lane]) for lane in range(banks)]
                    if got != expected:
                        mismatches.append((index, addr, got, expected))
        return bench

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(requester(0))
    sim.add_testbench(requester(1))
    sim.run()
    assert mismatches == []


def test_round_robin_is_fair():
    dut = RoundRobin(3)
    grants = []

    async def bench(ctx):
        ctx.set(dut.advance, 1)
        for requests in [0b111] * 6 + [0b101] * 4 + [0b010, 0b000]:
            ctx.set(dut.requests, requests)
            grants.append(ctx.get(dut.grant) if ctx.get(dut.valid) else None)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert grants == [0, 1, 2, 0, 1, 2, 0, 2, 0, 2, 1, None]


@pytest.mark.parametrize("count", [1, 2, 5, 13])
def test_round_robin_matches_its_documented_policy(count):
    """Random requests and advances against a reference: the requester after the last grant first."""
    rng = np.random.default_rng(count)
    dut = RoundRobin(count)
    observed, expected = [], []

    async def bench(ctx):
        last = count - 1
        for _ in range(400):
            requests, advance = int(rng.integers(0, 1 << count)), int(rng.integers(0, 2))
            ctx.set(dut.requests, requests)
            ctx.set(dut.advance, advance)
            order = [(last + 1 + k) % count for k in range(count)]
            grant = next((i for i in order if requests >> i & 1), None)
            expected.append(grant)
            observed.append(ctx.get(dut.grant) if ctx.get(dut.valid) else None)
            if advance and grant is not None:
                last = grant
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert observed == expected
