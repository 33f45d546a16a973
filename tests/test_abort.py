"""Kill and the watchdog stop a context's in-flight uTOps within a bound, whatever their length: the
review measured ``WATCHDOG`` after 168,106 cycles for a 5,000-cycle budget and a kill that took
209,071 cycles, because an engine finished the whole uTOp first. Aborted uTOps signal no tokens
and count no completion; the engines come back clean for the next tenant."""

import os

import numpy as np
import pytest

from tcloud.firmware import gemm
from tcloud.isa import ContextStatus, EngineClass, FaultCode, Instr, ProgramImage, encode_stream, get_config
from tcloud.rtl import abort_bound
from tcloud.runtime import DeviceFault, FunctionalDevice, Placement, load_image, read_outputs, run_image
from tcloud.runtime.hypervisor import Hypervisor, VNPUSpec
from tcloud.runtime.backends.amaranth import AmaranthDevice
from tcloud.runtime.backends.verilator import VerilatorDevice
from tcloud.verif import random_program
from tcloud.verif.random_programs import replay_hint, seeds

from conftest import utop

pytestmark = pytest.mark.slow  # kills and watchdogs on the RTL

HBM_LATENCY = 8
DEVICES = {"amaranth": AmaranthDevice, "verilator": VerilatorDevice}
SMALL = get_config("small")
REVIEWED_HOG = utop(EngineClass.ME, [Instr("me.loadw", w=0, k=SMALL.me_rows, n=SMALL.me_cols, w_stride=SMALL.me_cols)]
                    + [Instr("me.matmul", a=0x100, out=0x200, m=4095, a_stride=0, out_stride=0, acc=1)] * 40)
"""The review's uTOp: 40 matmuls of 4,095 rows (the largest m) on a full weight tile of ``small``."""


def long_utop(config, cls, repeat):
    """One uTOp of ``cls`` whose instructions each run for hundreds to thousands of cycles."""
    if cls == EngineClass.ME:
        k, n = config.me_rows, config.me_cols
        body = [Instr("me.loadw", w=0, k=k, n=n, w_stride=n)]
        body += [Instr("me.matmul", a=0x100, out=0x400, m=600, a_stride=0, out_stride=0, acc=1)] * repeat
    elif cls == EngineClass.VE:
        body = [Instr("ve.shape", rows=300, dst_stride=0, src1_stride=0, src2_stride=0)]
        body += [Instr("ve.add", dst=0, src1=0, src2=0, n=16)] * repeat
    else:
        body = [Instr("dma.load", sram=0, hbm=0, rows=500, row_bytes=0x1000, hbm_stride=0, sram_stride=0)] * repeat
    return utop(cls, body, signal=1)


def start(device, program, ctx=0, budget=0):
    cfg = device.config
    code = encode_stream(program + [Instr("halt")])
    device.host(Instr("ctx.hbm", ctx=ctx, base=ctx << 20, size=1 << 20))
    device.host(Instr("ctx.sram", ctx=ctx, base=0, size=cfg.sram_bytes // 2))
    device.host(Instr("ctx.engines", ctx=ctx, me_mask=(1 << cfg.me_count) - 1, ve_mask=(1 << cfg.ve_count) - 1,
                      dma_mask=(1 << cfg.dma_count) - 1))
    device.host(Instr("ctx.budget", ctx=ctx, cycles=budget))
    device.write_hbm((ctx << 20) + 0xF0000, code)
    device.host(Instr("ctx.start", ctx=ctx, pc=0xF0000))


@pytest.fixture(scope="module", params=sorted(DEVICES))
def device(request):
    dev = DEVICES[request.param]("tiny", hbm_latency=HBM_LATENCY)
    dev.command_poll_cycles = 1  # see a kill take effect to the cycle
    yield dev
    dev.close()


def assert_engines_come_back_clean(device):
    """A GEMM on the same engines right after the abort is exact (no leftover engine state)."""
    rng = np.random.default_rng(9)
    image = gemm(device.config, 9, 13, 6)
    inputs = {"A": rng.integers(-128, 128, (9, 13), dtype=np.int8), "B": rng.integers(-128, 128, (13, 6), dtype=np.int8)}
    expected, _ = run_image(FunctionalDevice(device.config), image, inputs, Placement(context=1, hbm_base=1 << 20))
    outputs, _ = run_image(device, image, inputs, Placement(context=1, hbm_base=1 << 20))
    assert np.array_equal(outputs["C"], expected["C"])


@pytest.mark.parametrize("cls", [EngineClass.ME, EngineClass.VE, EngineClass.DMA], ids=lambda c: c.name)
def test_watchdog_stops_a_long_utop_within_the_bound(device, cls):
    budget = 300
    start(device, long_utop(device.config, cls, 40), budget=budget)
    assert device.run(max_cycles=50_000)
    info = device.context(0)
    assert (info.status, info.fault) == (ContextStatus.FAULTED, FaultCode.WATCHDOG)
    assert info.counters["utops"][cls.name.lower()] == 0  # aborted, not completed
    overshoot = info.timing["run_cycles"] - budget
    assert 0 <= overshoot <= abort_bound(device.config, HBM_LATENCY), overshoot
    assert_engines_come_back_clean(device)


@pytest.mark.parametrize("cls", [EngineClass.ME, EngineClass.VE, EngineClass.DMA], ids=lambda c: c.name)
def test_kill_aborts_a_long_utop_within_the_bound(device, cls):
    start(device, long_utop(device.config, cls, 40))
    assert not device.run(max_cycles=700)
    before = device.cycles
    device.host(Instr("ctx.kill", ctx=0))
    assert device.run(max_cycles=50_000)
    assert (device.context(0).status, device.context(0).fault) == (ContextStatus.FAULTED, FaultCode.KILLED)
    assert device.cycles - before <= device.command_poll_cycles + abort_bound(device.config, HBM_LATENCY)
    assert_engines_come_back_clean(device)


LONG_GATHER = (utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=100, value=0)], signal=1)
               + utop(EngineClass.DMA, [Instr("dma.gather", sram=0x1000, hbm=0, idx=0, rows=100, row_bytes=0x100)] * 40,
                      wait0=0, count0=1))
"""Gathers of row 0, each first checking its 100 indices (on tiny, about cycles 45 to 145 of the run),
then copying."""


@pytest.mark.parametrize("stop, at", [("watchdog", 100), ("watchdog", 600), ("kill", 100), ("kill", 700)],
                         ids=["watchdog-checking", "watchdog-copying", "kill-checking", "kill-copying"])
def test_a_long_gather_stops_within_the_bound(device, stop, at):
    """Stopped while checking its indices or while copying rows, a gather ends within abort_bound and
    leaves the engine clean."""
    start(device, LONG_GATHER, budget=at if stop == "watchdog" else 0)
    if stop == "kill":
        assert not device.run(max_cycles=at)
        before = device.cycles
        device.host(Instr("ctx.kill", ctx=0))
        assert device.run(max_cycles=50_000)
        assert device.cycles - before <= device.command_poll_cycles + abort_bound(device.config, HBM_LATENCY)
    else:
        assert device.run(max_cycles=50_000)
        assert 0 <= device.context(0).timing["run_cycles"] - at <= abort_bound(device.config, HBM_LATENCY)
    info = device.context(0)
    assert (info.status, info.fault) == (ContextStatus.FAULTED, FaultCode.KILLED if stop == "kill" else FaultCode.WATCHDOG)
    assert info.counters["utops"]["dma"] == 0
    assert_engines_come_back_clean(device)


def test_kill_at_random_moments_of_random_programs_is_bounded_and_leaves_nothing_behind():
    """Random DMA/ME/VE programs under HBM jitter, killed at a random cycle: the context stops within
    the bound, and the next tenant on the same engines is exact."""
    latency, jitter = 6, 5
    device = VerilatorDevice("tiny", hbm_latency=latency, hbm_jitter=jitter, seed=3)
    device.command_poll_cycles = 1
    try:
        for seed in seeds(12 if os.environ.get("CI") else 40):
            with replay_hint(seed):
                image, inputs = random_program("tiny", seed, utops=24)
                load_image(device, image, inputs)
                device.run(max_cycles=int(np.random.default_rng([13, seed]).integers(1, 1500)))
                before = device.cycles
                device.host(Instr("ctx.kill", ctx=0))
                assert device.run(max_cycles=100_000)
                bound = device.command_poll_cycles + abort_bound(device.config, latency + jitter)
                assert device.cycles - before <= bound, f"seed {seed}"
                assert_engines_come_back_clean(device)
    finally:
        device.close()


def test_the_reviewed_watchdog_case_on_small_next_to_a_victim():
    """The review's case: a 5,000-cycle budget and one ME uTOp of 40 matmuls of 4,095 rows reported
    WATCHDOG after 168,106 cycles; a victim's GEMM next to it stays exact."""
    rng = np.random.default_rng(21)
    hog = ProgramImage.for_config("small", encode_stream(REVIEWED_HOG + [Instr("halt")]), entry=0, hbm_bytes=0x1000,
                                  sram_bytes=0x400, symbols=[])
    with Hypervisor("small", "verilator", "harvest", hbm_timing={"hbm_latency": HBM_LATENCY}) as hv:
        victim = hv.create_vnpu(VNPUSpec(mes=2, ves=1))
        watched = hv.create_vnpu(VNPUSpec(mes=1, ves=1, budget_cycles=5000))
        image = gemm("small", 40, 64, 40)
        inputs = {"A": rng.integers(-128, 128, (40, 64), dtype=np.int8),
                  "B": rng.integers(-128, 128, (64, 40), dtype=np.int8)}
        victim.load(image)
        watched.load(hog)
        victim_future, watched_future = victim.submit(inputs), watched.submit({})
        with pytest.raises(DeviceFault) as caught:
            watched_future.result()
        assert caught.value.fault == FaultCode.WATCHDOG
        assert 5000 <= watched.usage().active_cycles <= 5000 + abort_bound(hv.config, HBM_LATENCY)
        assert np.array_equal(victim_future.result()["C"], inputs["A"].astype(np.int32) @ inputs["B"].astype(np.int32))


def test_the_reviewed_kill_case_on_small():
    """Killing that uTOp took 209,071 cycles before (inside destroy(), with the hypervisor's lock held)."""
    device = VerilatorDevice("small", hbm_latency=HBM_LATENCY)
    device.command_poll_cycles = 1
    try:
        start(device, REVIEWED_HOG)
        assert not device.run(max_cycles=3000)
        before = device.cycles
        device.host(Instr("ctx.kill", ctx=0))
        assert device.run(max_cycles=300_000)
        assert device.context(0).fault == FaultCode.KILLED
        assert device.cycles - before <= device.command_poll_cycles + abort_bound(device.config, HBM_LATENCY)
    finally:
        device.close()


def test_the_next_utop_on_an_aborted_engine_sees_nothing_of_the_old_one(device):
    """Context 1's ME uTOp waits for the only ME while context 0's long matmuls stream; the kill hands
    the engine straight over, so rows of the old uTOp still in the array would land in the new one
    (its MAC counter, its accumulators) unless the abort drains the array first."""
    from test_me_hazards import hazard_image, loadw, matmul, A_AT, O_AT, W_AT

    image = hazard_image([loadw(W_AT), matmul(A_AT, O_AT, 12, 0)])
    inputs = {"X": np.random.default_rng(4).integers(-128, 128, 0x800, dtype=np.int8)}
    placement = Placement(context=1, hbm_base=1 << 20, sram_base=device.config.sram_bytes // 2)
    expected, expected_info = run_image(FunctionalDevice(device.config), image, inputs, placement)
    start(device, long_utop(device.config, EngineClass.ME, 40))
    load_image(device, image, inputs, placement)
    assert not device.run(max_cycles=400)
    device.host(Instr("ctx.kill", ctx=0))
    assert device.run(max_cycles=50_000)
    outputs = read_outputs(device, image, placement)
    assert np.array_equal(outputs["Y"], expected["Y"])
    assert device.context(1).counters["macs"] == expected_info.counters["macs"]
