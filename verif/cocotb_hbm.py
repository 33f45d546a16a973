"""cocotb tests of the HBM bench components on :class:`tcloud.verif.hbm_spec.HbmPlayer` (run by
``tests/test_hbm_models.py``): the responder against the protocol's reference, and the protocol
checker against a master and an HBM that break the rules.

Environment: ``TCLOUD_CONFIG`` (preset name), ``TCLOUD_HBM_GBPS`` (bandwidth for the responder).
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from tcloud.isa import get_config
from tcloud.verif.cocotb_bench import HbmBus, HbmResponder, HostDriver
from tcloud.verif.cocotb_protocol import HbmProtocolChecker
from tcloud.verif.hbm_spec import CHANGE_PAYLOAD, DROP_VALID, NORMAL, HbmPlayer, reference, spec_case

CONFIG = get_config(os.environ.get("TCLOUD_CONFIG", "tiny"))
CONFIG = CONFIG.replace(hbm_gbps=float(os.environ.get("TCLOUD_HBM_GBPS", CONFIG.hbm_gbps)))
REQUESTS, READY, MEMORY = spec_case(CONFIG)
PLAYER = HbmPlayer(CONFIG, REQUESTS, READY)


async def reset(dut, mode=NORMAL):
    """Clock, reset, and a checker on the player's HBM port; the player starts in ``mode`` once the
    returned host has written any CSR."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    bus = HbmBus(dut, "hbm", CONFIG)
    bus.req.ready.value = 0
    bus.rsp.valid.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 1)
    dut.rst.value = 0
    host, checker = HostDriver(dut), HbmProtocolChecker(bus)
    host.start()
    checker.start()
    return bus, host, checker


@cocotb.test()
async def responder_follows_the_reference(dut):
    """The responder with the configured latency and no pauses: accept cycles, response cycles,
    order and data, and the memory written, as :func:`reference` computes them."""
    bus, host, checker = await reset(dut)
    responder = HbmResponder(bus, CONFIG, np.random.default_rng(0), latency=(CONFIG.hbm_latency,) * 2,
                             pause_probability=0)
    words = responder.memory.view("<u4")
    words[:MEMORY.size] = MEMORY
    responder.start()
    await host.write(0, NORMAL)
    await host.wait_idle(len(REQUESTS) * (CONFIG.hbm_latency + 64))
    expected_memory = MEMORY.copy()
    expected = reference(CONFIG, REQUESTS, READY, expected_memory)
    trace = []
    for address in range(PLAYER.response_address(len(REQUESTS), 0)):
        trace.append(await host.read(address))
    responder.stop()
    checker.stop()
    checker.check()
    assert PLAYER.read_trace(trace.__getitem__, expected) == expected
    assert np.array_equal(words[:MEMORY.size], expected_memory)


async def violations_seen(dut, mode, wait=4):
    """Start the player in ``mode`` with the HBM's ``req.ready`` low until the first request has
    waited ``wait`` cycles, then high for as long; return the checker's violations."""
    bus, host, checker = await reset(dut)
    await host.write(0, mode)
    for value in [0] * (REQUESTS[0].at + wait) + [1] * wait:
        bus.req.ready.value = value
        await RisingEdge(dut.clk)
    checker.stop()
    return checker.violations


@cocotb.test()
async def checker_catches_a_master_that_drops_valid(dut):
    violations = await violations_seen(dut, DROP_VALID)
    assert violations and all("valid dropped before the transfer" in v for v in violations), violations


@cocotb.test()
async def checker_catches_a_master_that_changes_the_payload(dut):
    violations = await violations_seen(dut, CHANGE_PAYLOAD)
    assert violations and all("payload changed under valid & ~ready" in v for v in violations), violations


@cocotb.test()
async def checker_passes_a_master_that_waits(dut):
    assert await violations_seen(dut, NORMAL) == []


@cocotb.test()
async def checker_catches_a_response_without_a_request(dut):
    """An HBM that answers an ``id`` with nothing outstanding (the master has sent nothing yet)."""
    bus, host, checker = await reset(dut)
    await host.write(0, NORMAL)
    bus.rsp.drive({"rdata": [], "id": REQUESTS[0].id})
    bus.rsp.valid.value = 1
    while True:
        await ReadOnly()
        if bus.rsp.fired():
            break
        await RisingEdge(dut.clk)
    await RisingEdge(dut.clk)
    bus.rsp.valid.value = 0
    checker.stop()
    assert [v for v in checker.violations if "without an outstanding request" in v], checker.violations
