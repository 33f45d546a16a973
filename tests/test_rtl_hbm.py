"""The HBM port: the arbiter keeps the stream rules and routes responses by id; the Python HBM model
keeps the protocol's bandwidth, latency and stream checks (tcloud.rtl.hbm)."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out
from amaranth.sim import Simulator

from tcloud.isa import get_config
from tcloud.rtl.hbm import HbmArbiter, hbm_signature, port_words
from tcloud.rtl.sim import HbmModel, ProtocolError
from tcloud.verif.protocol import HbmPortChecker

TINY = get_config("tiny")


def _simulate(dut, testbenches, processes=(), deadline=None):
    sim = Simulator(dut)
    sim.add_clock(1e-9)
    for bench in testbenches:
        sim.add_testbench(bench)
    for process in processes:
        sim.add_process(process)
    sim.run_until(deadline) if deadline else sim.run()


def test_arbiter_holds_a_request_the_hbm_has_not_taken():
    """A grant offered under HBM backpressure stays put when a higher-priority master arrives."""
    dut = HbmArbiter(TINY, count=3)
    seen = []

    async def bench(ctx):
        ctx.set(dut.hbm.req.ready, 0)
        ctx.set(dut.master(1).req.valid, 1)
        ctx.set(dut.master(1).req.payload.addr, 0x111)
        await ctx.tick()
        seen.append(ctx.get(dut.hbm.req.payload.addr))
        ctx.set(dut.master(0).req.valid, 1)  # master 0 ranks first after reset
        ctx.set(dut.master(0).req.payload.addr, 0x222)
        await ctx.tick()
        seen.append(ctx.get(dut.hbm.req.payload.addr))
        ctx.set(dut.hbm.req.ready, 1)
        seen.append((ctx.get(dut.hbm.req.payload.addr), ctx.get(dut.master(1).req.ready)))
        await ctx.tick()
        ctx.set(dut.master(1).req.valid, 0)
        seen.append((ctx.get(dut.hbm.req.payload.addr), ctx.get(dut.master(0).req.ready)))

    _simulate(dut, [bench])
    assert seen == [0x111, 0x111, (0x111, 1), (0x222, 1)]


def test_arbiter_under_random_traffic_keeps_the_stream_rules_and_routes_every_response_home():
    masters, requests_each = 4, 40
    dut = HbmArbiter(TINY, count=masters)
    rng = np.random.default_rng(7)
    checkers = [HbmPortChecker(dut.master(i), f"master{i}") for i in range(masters)]
    checkers.append(HbmPortChecker(dut.hbm, "hbm", per_id=True))
    received = {i: [] for i in range(masters)}

    def master(index):
        port = dut.master(index)

        async def bench(ctx):
            for n in range(requests_each):
                while rng.random() < 0.8:
                    await ctx.tick()
                ctx.set(port.req.valid, 1)
                ctx.set(port.req.payload.addr, index << 16 | n)
                await ctx.tick().until(port.req.ready)
                ctx.set(port.req.valid, 0)
        return bench

    def collector(index):
        port = dut.master(index)

        async def process(ctx):
            async for _, _, valid, ready, rdata in ctx.tick().sample(port.rsp.valid, port.rsp.ready,
                                                                    port.rsp.payload.rdata[0]):
                ctx.set(port.rsp.ready, rng.random() < 0.7)
                if valid and ready:
                    received[index].append(rdata)
        return process

    async def hbm(ctx):
        queue, cycle = [], 0
        while sum(map(len, received.values())) < masters * requests_each:
            ctx.set(dut.hbm.req.ready, rng.random() < 0.6)
            due = queue and queue[0][0] <= cycle
            ctx.set(dut.hbm.rsp.valid, bool(due))
            if due:
                ctx.set(dut.hbm.rsp.payload.id, queue[0][1])
                ctx.set(dut.hbm.rsp.payload.rdata[0], queue[0][2])
            _, _, taken, req_id, addr, answered = await ctx.tick().sample(
                dut.hbm.req.valid & dut.hbm.req.ready, dut.hbm.req.payload.id, dut.hbm.req.payload.addr,
                dut.hbm.rsp.valid & dut.hbm.rsp.ready)
            cycle += 1
            if answered:
                queue.pop(0)
            if taken:
                queue.append((cycle + int(rng.integers(1, 6)), req_id, addr))

    processes = [p for checker in checkers for p in checker.processes()]
    processes += [collector(i) for i in range(masters)]
    _simulate(dut, [master(i) for i in range(masters)] + [hbm], processes)
    assert [v for checker in checkers for v in checker.violations] == []
    assert checkers[-1].requests.transfers == masters * requests_each
    for index, addresses in received.items():
        assert addresses == [index << 16 | n for n in range(requests_each)]


class _Driver(wiring.Component):
    """A bare HBM master port, driven by a testbench."""

    def __init__(self, config):
        super().__init__({"hbm": Out(hbm_signature(config, tagged=True))})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += Signal().eq(1)  # a clock domain for the simulation
        return m


def _drive_reads(config, cycles, change_payload_at=None, **model_args):
    """Offer a full-beat read every cycle for ``cycles`` cycles; return accept and response cycles."""
    dut = _Driver(config)
    model = HbmModel(config, **model_args)
    accepted, answered = [], []

    async def bench(ctx):
        ctx.set(dut.hbm.rsp.ready, 1)
        ctx.set(dut.hbm.req.valid, 1)
        ctx.set(dut.hbm.req.payload.count, port_words(config))
        for cycle in range(cycles):
            if cycle == change_payload_at:
                ctx.set(dut.hbm.req.payload.addr, 4)
            _, _, taken, answer = await ctx.tick().sample(dut.hbm.req.ready, dut.hbm.rsp.valid)
            if taken:
                accepted.append(cycle)
            if answer:
                answered.append(cycle)
        model.stopped = True

    _simulate(dut, [bench], [model.serve(dut.hbm)])
    return accepted, answered


def test_hbm_model_answers_after_the_configured_latency_at_one_beat_per_cycle():
    accepted, answered = _drive_reads(TINY, 60)
    assert accepted == list(range(60))
    assert answered == list(range(1 + TINY.hbm_latency, 60))


@pytest.mark.parametrize("gbps", [4.0, 6.0, 12.0])
def test_hbm_model_keeps_to_the_configured_bandwidth(gbps):
    config = TINY.replace(hbm_gbps=gbps)  # 16-byte beats at 1 GHz
    accepted, _ = _drive_reads(config, 400, latency=3)
    achieved = len(accepted) * config.hbm_port_bytes / 400
    assert achieved == pytest.approx(config.hbm_bytes_per_cycle, abs=2 * config.hbm_port_bytes / 400)  # the initial credit: two beats


def test_hbm_model_refuses_a_request_changed_before_it_was_taken():
    config = TINY.replace(hbm_gbps=4.0)  # a beat every 4 cycles: requests wait
    with pytest.raises(ProtocolError, match="changed its payload"):
        _drive_reads(config, 20, change_payload_at=3)
