"""Several tenants on one pNPU: the scheduler policies, isolation, scrubbing, the watchdog, starvation
and harvesting, on the RTL (Verilator, ``small``) against the golden model running each tenant alone."""

import json
import os

import numpy as np
import pytest

from tcloud.firmware import elementwise, elementwise_reference, gemm
from tcloud.isa import EngineClass, FaultCode, Instr, Machine, Policy, ProgramImage, Symbol, encode_stream
from tcloud.runtime import DeviceFault, FunctionalDevice, run_image
from tcloud.runtime.hypervisor import Hypervisor, VNPUSpec
from tcloud.verif.random_programs import random_program, replay_hint, seeds

from conftest import utop

pytestmark = pytest.mark.slow  # multi-tenant runs on the Verilator RTL

POLICIES = [p.name.lower() for p in Policy]
CI = bool(os.environ.get("CI"))


def gemm_tenant(rng, m, k, n):
    image = gemm("small", m, k, n)
    inputs = {"A": rng.integers(-128, 128, (m, k), dtype=np.int8), "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}
    return image, inputs


def vector_tenant(rng, rows, cols, passes, block=None):
    image = elementwise("small", rows, cols, passes=passes, block_elements=block)
    inputs = {"X": rng.integers(-1 << 20, 1 << 20, (rows, cols), dtype=np.int32),
              "Y": rng.integers(-1000, 1000, (rows, cols), dtype=np.int32)}
    return image, inputs


def random_tenant(rng):
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return gemm_tenant(rng, *(int(v) for v in rng.integers(1, 40, 3)))
    if kind == 1:
        return vector_tenant(rng, int(rng.integers(1, 20)), int(rng.integers(1, 40)), int(rng.integers(1, 4)),
                             block=int(rng.integers(8, 200)))
    return random_program("small", int(rng.integers(0, 1 << 30)))


def expected_outputs(image, inputs):
    return run_image(FunctionalDevice("small"), image, inputs)[0]


def assert_same(outputs, expected, label):
    assert outputs.keys() == expected.keys(), label
    for name in expected:
        assert np.array_equal(outputs[name], expected[name]), f"{label}: output {name} differs"


# --- golden model semantics ----------------------------------------------------------------------


def test_golden_static_policy_faults_a_utop_without_an_owned_engine():
    program = encode_stream(utop(EngineClass.ME, [Instr("me.loadw", w=0, k=1, n=1)]) + [Instr("halt")])
    for policy, fault in (("static", FaultCode.NO_ENGINE), ("harvest", FaultCode.NO_ENGINE),
                          ("temporal", FaultCode.NONE), ("operator", FaultCode.NONE)):
        machine = Machine("small", policy=policy)
        machine.host(Instr("ctx.hbm", ctx=0, base=0, size=0x1000))
        machine.host(Instr("ctx.sram", ctx=0, base=0, size=0x100))
        machine.host(Instr("ctx.engines", ctx=0, me_mask=0, ve_mask=1, dma_mask=1))
        machine.hbm[:len(program)] = np.frombuffer(program, np.uint8)
        machine.host(Instr("ctx.start", ctx=0, pc=0))
        machine.run()
        assert machine.contexts[0].fault == fault, policy


def test_policy_names_are_checked():
    with pytest.raises(ValueError, match="unknown scheduling policy 'fair'.*static, harvest, temporal, operator"):
        Machine("tiny", policy="fair")


# --- constrained-random multi-tenant runs on the RTL --------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_random_tenants_are_bit_exact_under_every_policy(policy):
    base, = seeds(1)
    rng = np.random.default_rng(sum(map(ord, policy)) + base)
    timing = {"hbm_latency": int(rng.integers(2, 12)), "hbm_jitter": int(rng.integers(0, 6)),
              "hbm_accept_probability": float(rng.uniform(0.5, 1.0)), "seed": int(rng.integers(0, 1000))}
    rounds = 1 if CI else 3
    with Hypervisor("small", "verilator", policy, hbm_timing=timing, oversubscribe=True) as hv, replay_hint(base):
        for round_ in range(rounds):
            count = int(rng.integers(2, 5))
            specs = [VNPUSpec(mes=1, ves=1, sram_kib=48, hbm_mib=2, priority=int(rng.integers(0, 4)))
                     for _ in range(count)]
            vnpus = [hv.create_vnpu(spec) for spec in specs]
            work = [random_tenant(rng) for _ in vnpus]
            futures = []
            for vnpu, (image, inputs) in zip(vnpus, work):
                vnpu.load(image)
                futures.append(vnpu.submit(inputs))
            for vnpu, future, (image, inputs) in zip(vnpus, futures, work):
                assert_same(future.result(), expected_outputs(image, inputs), f"{policy} round {round_} {vnpu}")
            for vnpu in vnpus:
                vnpu.destroy()


# --- isolation -------------------------------------------------------------------------------------


ATTACKS = {
    "dma_read_outside_window": (utop(EngineClass.DMA, [Instr("dma.load", sram=0, hbm=0x1FFF00, rows=1,
                                                             row_bytes=0x200)]), FaultCode.HBM_BOUNDS),
    "dma_write_outside_window": (utop(EngineClass.DMA, [Instr("dma.store", sram=0, hbm=0x200000, rows=1,
                                                              row_bytes=64)]), FaultCode.HBM_BOUNDS),
    "scratchpad_overflow": (utop(EngineClass.VE, [Instr("ve.fill", dst=0x3FF0, n=16, value=-1)]),
                            FaultCode.SRAM_BOUNDS),
    "illegal_opcode": (bytes([0xEE]) + bytes(15), FaultCode.ILLEGAL_OPCODE),
    "never_finishes": (utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=4096, value=7)] * 64) * 64,
                       FaultCode.WATCHDOG),
}


def attacker_image(program):
    code = program if isinstance(program, bytes) else encode_stream(program + [Instr("halt")])
    return ProgramImage.for_config("small", code, entry=0, hbm_bytes=len(code), sram_bytes=16 * 1024, symbols=[])


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attacker_faults_alone_and_victims_are_exact(attack):
    program, fault = ATTACKS[attack]
    rng = np.random.default_rng(len(attack))
    policy = POLICIES[len(attack) % len(POLICIES)]
    with Hypervisor("small", "verilator", policy, oversubscribe=True) as hv:
        victims = [hv.create_vnpu(VNPUSpec(mes=2, ves=1, sram_kib=64, hbm_mib=2)),
                   hv.create_vnpu(VNPUSpec(mes=1, ves=1, sram_kib=64, hbm_mib=2))]
        attacker = hv.create_vnpu(VNPUSpec(mes=1, ves=1, sram_kib=16, hbm_mib=2, budget_cycles=20_000))
        work = [gemm_tenant(rng, 24, 40, 20), vector_tenant(rng, 16, 32, 2, block=128)]
        futures = []
        for vnpu, (image, inputs) in zip(victims, work):
            vnpu.load(image)
        attacker.load(attacker_image(program))
        attack_future = attacker.submit({})
        futures = [vnpu.submit(inputs) for vnpu, (_, inputs) in zip(victims, work)]
        with pytest.raises(DeviceFault) as caught:
            attack_future.result()
        assert caught.value.fault == fault
        for vnpu, future, (image, inputs) in zip(victims, futures, work):
            assert_same(future.result(), expected_outputs(image, inputs), f"{attack} under {policy}: {vnpu}")


def test_kill_stops_only_the_killed_tenant():
    rng = np.random.default_rng(3)
    with Hypervisor("small", "verilator", "harvest") as hv:
        victim, looper = hv.create_vnpu(VNPUSpec(mes=2, ves=1)), hv.create_vnpu(VNPUSpec(mes=2, ves=1))
        image, inputs = gemm_tenant(rng, 30, 30, 30)
        victim.load(image)
        looper.load(attacker_image(ATTACKS["never_finishes"][0]))
        loop_future = looper.submit({})
        victim_future = victim.submit(inputs)
        assert_same(victim_future.result(), expected_outputs(image, inputs), "victim")
        assert not loop_future.done()
        looper.kill()
        with pytest.raises(DeviceFault) as caught:
            loop_future.result()
        assert caught.value.fault == FaultCode.KILLED


def test_a_new_tenant_never_sees_the_previous_tenants_data():
    rng = np.random.default_rng(4)
    with Hypervisor("small", "verilator", "static") as hv:
        first = hv.create_vnpu(VNPUSpec(mes=1, ves=1, sram_kib=64, hbm_mib=1))
        image, inputs = vector_tenant(rng, 32, 64, 1, block=512)
        first.load(image)
        first.run(inputs)
        windows = (first._grant.sram_base, first._grant.hbm_base)
        first.destroy()
        second = hv.create_vnpu(VNPUSpec(mes=1, ves=1, sram_kib=64, hbm_mib=1))
        assert (second._grant.sram_base, second._grant.hbm_base) == windows
        # A program that copies its whole scratchpad window out to HBM, then reads back its HBM window.
        dump = utop(EngineClass.DMA, [Instr("dma.store", sram=0, hbm=0x10000, rows=2, row_bytes=0x8000,
                                            sram_stride=0x8000, hbm_stride=0x8000)])
        code = encode_stream(dump + [Instr("halt")])
        image = ProgramImage.for_config("small", code, entry=0x20000, hbm_bytes=1 << 20, sram_bytes=0x10000,
                                        symbols=[Symbol("S", "output", "i32", (0x4000,), 0x10000, 0x10000),
                                                 Symbol("H", "output", "i32", (0x4000,), 0, 0x10000)])
        second.load(image)
        outputs = second.run({})
        assert not outputs["S"].any(), "scratchpad window not scrubbed"
        assert not outputs["H"].any(), "HBM window not scrubbed"


# --- watchdog, starvation and harvesting ----------------------------------------------------------


def busy_me_program(utops):
    """Independent ME uTOps with no tokens: always ready, enough to keep every ME busy."""
    body = [Instr("me.loadw", w=0, k=8, n=8, w_stride=8), Instr("me.matmul", a=0x100, out=0x1000, m=256)]
    code = encode_stream(utop(EngineClass.ME, body) * utops + [Instr("halt")])
    return ProgramImage.for_config("small", code, entry=0, hbm_bytes=len(code), sram_bytes=0x4000, symbols=[])


def test_priority_and_anti_starvation():
    """Under (nearly) strict priority a low-priority tenant is held back by a busy high-priority
    one sharing its engines (it only gets engines the high one cannot refill in time); the
    STARVATION threshold lets its waiting uTOps through."""
    rng = np.random.default_rng(5)
    work = gemm_tenant(rng, 16, 64, 16)
    latencies = {}
    for starvation in (64, 60_000):
        with Hypervisor("small", "verilator", "static", oversubscribe=True, starvation=starvation) as hv:
            high = hv.create_vnpu(VNPUSpec(mes=4, ves=2, priority=200))
            low = hv.create_vnpu(VNPUSpec(mes=4, ves=2, priority=0))
            high.load(busy_me_program(300))
            low.load(work[0])
            futures = [high.submit({}), low.submit(work[1])]
            futures[0].result()
            assert_same(futures[1].result(), expected_outputs(*work), "low")
            latencies[starvation] = (high.runs[-1].latency_cycles, low.runs[-1].latency_cycles)
    (high_aged, low_aged), (_, low_strict) = latencies[64], latencies[60_000]
    assert low_aged < 0.1 * high_aged, latencies      # aging: low finishes long before high
    assert low_aged < 0.5 * low_strict, latencies     # and far sooner than under strict priority


@pytest.mark.parametrize("policy", POLICIES)
def test_no_policy_starves_a_tenant_next_to_a_hog(policy):
    """The review's case: a hog with 400 independent ME uTOps kept the ME class under `operator`
    (another tenant's single ME uTOp waited 68,917 cycles, the hog's whole run, despite STARVATION
    = 256). Under every policy that uTOp now runs within STARVATION plus the hog's uTOps in flight."""
    starvation = 256
    with Hypervisor("small", "verilator", policy, starvation=starvation) as hv:
        hog = hv.create_vnpu(VNPUSpec(mes=2, ves=1), name="hog")
        other = hv.create_vnpu(VNPUSpec(mes=2, ves=1), name="other")
        hog.load(busy_me_program(400))
        other.load(busy_me_program(1))
        hog_future = hog.submit({})
        other.run({})
        hog_future.result()
        hog_latency, other_latency = hog.runs[-1].latency_cycles, other.runs[-1].latency_cycles
    me_utop_cycles = hog_latency * hv.config.me_count / 400  # one hog uTOp, all MEs busy
    assert other_latency <= starvation + 3 * me_utop_cycles, (policy, hog_latency, other_latency)


def test_harvesting_speeds_up_an_me_heavy_tenant_next_to_a_vector_tenant():
    rng = np.random.default_rng(6)
    gemm_work = gemm_tenant(rng, 96, 96, 96)
    vector_work = vector_tenant(rng, 32, 64, 4, block=256)
    results = {}
    for policy in ("static", "harvest"):
        with Hypervisor("small", "verilator", policy) as hv:
            me_heavy = hv.create_vnpu(VNPUSpec(mes=1, ves=1, sram_kib=128), name="gemm")  # the plan takes 72 KiB
            ve_heavy = hv.create_vnpu(VNPUSpec(mes=3, ves=1), name="vector")
            me_heavy.load(gemm_work[0])
            ve_heavy.load(vector_work[0])
            futures = [me_heavy.submit(gemm_work[1]), ve_heavy.submit(vector_work[1])]
            outputs = [f.result() for f in futures]
            results[policy] = (outputs, me_heavy.runs[-1].latency_cycles, ve_heavy.runs[-1].latency_cycles,
                               me_heavy.usage())
    for policy in results:
        assert_same(results[policy][0][0], expected_outputs(*gemm_work), policy)
        assert np.array_equal(results[policy][0][1]["Z"],
                              elementwise_reference(vector_work[1]["X"], vector_work[1]["Y"], 4))
    static, harvest = results["static"], results["harvest"]
    assert harvest[1] < 0.75 * static[1], (static[1], harvest[1])
    assert static[3].me_harvested_cycles == 0 and harvest[3].me_harvested_cycles > 0
    assert harvest[2] <= 1.1 * static[2], "the vector tenant must not be slowed by more than 10 %"


def test_multitenant_benchmark_smoke(tmp_path):
    """The benchmark's quick mode (CI size): it runs every pair and policy and reports its summary."""
    from benchmarks import multitenant_rtl
    summary = multitenant_rtl.main(["--quick", "--runs", "2", "--out", str(tmp_path / "m.json"),
                                    "--plot", str(tmp_path / "m.png")])
    report = json.loads((tmp_path / "m.json").read_text())
    assert set(report["results"]) == set(multitenant_rtl.PAIRS)
    assert all(set(pair) == {*POLICIES, multitenant_rtl.BEST_STATIC} for pair in report["results"].values())
    assert summary["mixed_harvest_over_static_me_utilization"] > 1.0
    best = report["results"]["mixed"][multitenant_rtl.BEST_STATIC]
    assert best["stp"] == max(stp for _, stp in best["splits_tried"]) and len(best["splits_tried"]) > 1
    assert report["config_fingerprint"] and report["hbm_timing"] == multitenant_rtl.HBM_TIMING
