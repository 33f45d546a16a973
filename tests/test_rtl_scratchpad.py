"""Scratchpad (banks with one read and one write port behind a crossbar) and round-robin arbiter in
Amaranth's simulator against Python models."""

import numpy as np
import pytest
from amaranth.hdl import Fragment
from amaranth.hdl._mem import MemoryInstance
from amaranth.sim import Simulator

from tcloud.isa import get_config
from tcloud.rtl.arbiter import RoundRobin
from tcloud.rtl.scratchpad import Scratchpad, access_wait, bank_of

pytestmark = pytest.mark.slow  # long Amaranth simulations


def _run(dut, benches):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for bench in benches:
        sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("config, ports", [("tiny", 2), ("tiny", 5), ("small", 13)])
def test_random_accesses_from_many_ports_match_a_byte_model(config, ports):
    """Reads of 1..L words and byte-masked writes at any alignment, each port in its own region
    (so results do not depend on the arbitration order) but sharing banks."""
    cfg = get_config(config)
    dut = Scratchpad(cfg, ports=ports)
    lanes, region = cfg.sram_line_words, 256
    rng = np.random.default_rng(ports)
    model = np.zeros(ports * region * 4, dtype=np.uint8)
    mismatches = []

    def requester(index):
        port = dut.port(index)
        base = index * region

        async def bench(ctx):
            for _ in range(60):
                addr = base + int(rng.integers(0, region - lanes))
                write, words = bool(rng.integers(0, 2)), int(rng.integers(1, lanes + 1))
                values = rng.integers(0, 1 << 32, lanes, dtype=np.uint64)
                masks = rng.integers(0, 16, lanes)
                ctx.set(port.valid, 1)
                ctx.set(port.addr, addr)
                ctx.set(port.we, write)
                ctx.set(port.words, words)
                for lane in range(lanes):
                    ctx.set(port.wdata[lane], int(values[lane]))
                    ctx.set(port.wmask[lane], int(masks[lane]))
                await ctx.tick().until(port.ready)
                ctx.set(port.valid, 0)
                if write:
                    for lane in range(lanes):
                        for byte in range(4):
                            if masks[lane] >> byte & 1:
                                model[(addr + lane) * 4 + byte] = (int(values[lane]) >> (8 * byte)) & 0xFF
                else:
                    expected = model[addr * 4:(addr + words) * 4].view("<u4").tolist()
                    assert ctx.get(port.rvalid)
                    got = [ctx.get(port.rdata[lane]) for lane in range(words)]
                    if got != expected:
                        mismatches.append((index, addr, words, got, expected))
        return bench

    _run(dut, [requester(i) for i in range(ports)])
    assert mismatches == []


def test_every_bank_is_a_memory_with_one_read_and_one_write_port():
    cfg = get_config("small")
    fragment = Fragment.get(Scratchpad(cfg, ports=13), None)
    banks = [(name, len(sub._read_ports), len(sub._write_ports)) for sub, name, *_ in fragment.subfragments
             if isinstance(sub, MemoryInstance)]
    assert banks == [(f"bank{b}", 1, 1) for b in range(cfg.sram_banks)]


@pytest.mark.parametrize("kind", ["read", "write"])
def test_a_request_waits_at_most_one_cycle_per_competing_port(kind):
    """Every port asks for the same two banks (different rows) all the time: each waits at most
    ``access_wait(ports)`` cycles, and the banks serve one access per cycle."""
    cfg, ports, cycles = get_config("tiny"), 5, 200
    dut = Scratchpad(cfg, ports=ports)
    waits, served = [[] for _ in range(ports)], [0]

    def requester(index):
        port = dut.port(index)

        async def bench(ctx):
            ctx.set(port.valid, 1)
            ctx.set(port.we, kind == "write")
            ctx.set(port.addr, 2 + index * cfg.sram_line_words * cfg.sram_banks ** 2)  # same two banks, other rows
            ctx.set(port.words, cfg.sram_line_words)
            for lane in range(cfg.sram_line_words):
                ctx.set(port.wmask[lane], 0b1111)
            waited = 0
            for _ in range(cycles):
                _, _, ready = await ctx.tick().sample(port.ready)
                if ready:
                    waits[index].append(waited)
                    served[0] += 1
                    waited = 0
                else:
                    waited += 1
        return bench

    _run(dut, [requester(i) for i in range(ports)])
    assert max(max(w) for w in waits) <= access_wait(ports)
    assert served[0] == cycles


def test_requests_on_different_banks_are_served_in_the_same_cycle():
    cfg = get_config("small")
    dut = Scratchpad(cfg, ports=cfg.sram_banks)
    lanes = cfg.sram_line_words
    readies = []

    async def bench(ctx):
        for b in range(cfg.sram_banks):
            port = dut.port(b)
            ctx.set(port.valid, 1)
            ctx.set(port.addr, b * lanes)  # line b: bank b
            ctx.set(port.words, lanes)
        _, _, *ready = await ctx.tick().sample(*(dut.port(b).ready for b in range(cfg.sram_banks)))
        readies.extend(ready)

    _run(dut, [bench])
    assert readies == [1] * cfg.sram_banks


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


def test_reads_of_one_line_share_the_bank():
    """Four ports reading words of the same line all get it in one cycle; a write to that line
    still takes the write port alone."""
    cfg = get_config("small")
    dut = Scratchpad(cfg, ports=4)
    readies = []

    async def bench(ctx):
        for i in range(4):
            port = dut.port(i)
            ctx.set(port.valid, 1)
            ctx.set(port.addr, 16 + 2 * i)  # line 2, two words each
            ctx.set(port.words, 2)
        _, _, *ready = await ctx.tick().sample(*(dut.port(i).ready for i in range(4)))
        readies.extend(ready)

    _run(dut, [bench])
    assert readies == [1, 1, 1, 1]


@pytest.mark.parametrize("config", ["tiny", "small"])
def test_skewed_banks_keep_neighbours_apart_and_spread_power_of_two_strides(config):
    cfg = get_config(config)
    bits, banks = (cfg.sram_banks - 1).bit_length(), cfg.sram_banks
    lines = cfg.sram_bytes // (4 * cfg.sram_line_words)
    assert all(bank_of(line, bits) != bank_of(line + 1, bits) for line in range(lines - 1))
    for line in range(0, lines, banks):  # each bank row holds every bank once
        assert sorted(bank_of(line + i, bits) for i in range(banks)) == list(range(banks))
    column = [bank_of(row * banks, bits) for row in range(banks)]  # a tile column, one round apart
    assert sorted(column) == list(range(banks))


def test_reads_down_a_power_of_two_stride_proceed_in_parallel():
    """Four ports read rows 16 lines apart (a 512-byte-wide tile on small): different banks."""
    cfg = get_config("small")
    dut = Scratchpad(cfg, ports=4)
    stride = cfg.sram_banks * cfg.sram_line_words
    readies = []

    async def bench(ctx):
        for i in range(4):
            port = dut.port(i)
            ctx.set(port.valid, 1)
            ctx.set(port.addr, i * stride)
            ctx.set(port.words, 2)
        _, _, *ready = await ctx.tick().sample(*(dut.port(i).ready for i in range(4)))
        readies.extend(ready)

    _run(dut, [bench])
    assert readies == [1, 1, 1, 1]
