"""The hypervisor's API: allocation, errors, loading and running, usage and billing, the CLI."""

import json
import time

import numpy as np
import pytest

from tcloud.firmware import elementwise, elementwise_reference, gemm
from tcloud.isa import ConfigMismatchError, EngineClass, FaultCode, Instr, ProgramImage, encode_stream
from tcloud.isa.errors import ImageError
from tcloud.runtime import DeviceFault, matmul
from tcloud.runtime.cli import main
from tcloud.runtime.hypervisor import (AllocationError, Hypervisor, PriceTable, Usage, VNPUSpec, VNPUSpecError,
                                       VNPUStateError)

from conftest import utop


@pytest.fixture
def hv():
    with Hypervisor("small", "functional", "harvest") as hypervisor:
        yield hypervisor


def snapshot(hv):
    return [(list(p.free_contexts), [set(o) for o in p.me_owners], [set(o) for o in p.ve_owners],
             dict(p.sram.used), dict(p.hbm.used)) for p in hv.pnpus]


def test_vnpus_get_disjoint_engines_and_windows(hv):
    a = hv.create_vnpu(VNPUSpec(mes=2, ves=1, sram_kib=64, hbm_mib=8))
    b = hv.create_vnpu(VNPUSpec(mes=2, ves=1, sram_kib=100, hbm_mib=3))
    assert a.me_mask & b.me_mask == 0 and a.ve_mask & b.ve_mask == 0
    assert bin(a.me_mask).count("1") == 2 and bin(b.ve_mask).count("1") == 1
    ga, gb = a._grant, b._grant
    assert ga.sram_base + 64 * 1024 <= gb.sram_base or gb.sram_base + 100 * 1024 <= ga.sram_base
    assert ga.hbm_base + 8 << 20 <= gb.hbm_base or gb.hbm_base + 3 << 20 <= ga.hbm_base
    assert a.context != b.context
    assert hv.vnpus == [a, b]


@pytest.mark.parametrize("spec, message", [
    (VNPUSpec(mes=5), "asks for 5 MEs, but a 'small' pNPU has only 4"),
    (VNPUSpec(ves=3), "asks for 3 VEs"),
    (VNPUSpec(sram_kib=512), "512 KiB of scratchpad"),
    (VNPUSpec(hbm_mib=65), "65 MiB of HBM"),
])
def test_requests_larger_than_a_pnpu_are_refused(hv, spec, message):
    with pytest.raises(AllocationError, match=message):
        hv.create_vnpu(spec)


def test_a_failed_request_allocates_nothing(hv):
    hv.create_vnpu(VNPUSpec(mes=3, ves=1, sram_kib=200, hbm_mib=60))
    before = snapshot(hv)
    for spec, lack in ((VNPUSpec(mes=2), "1 free MEs \\(asked 2\\)"),
                       (VNPUSpec(mes=1, sram_kib=64), "largest free scratchpad window 56 KiB \\(asked 64\\)"),
                       (VNPUSpec(mes=1, hbm_mib=8), "largest free HBM window 4 MiB \\(asked 8\\)")):
        with pytest.raises(AllocationError, match=f"pNPU 0: .*{lack}"):
            hv.create_vnpu(spec)
        assert snapshot(hv) == before
    assert hv.create_vnpu(VNPUSpec(mes=1, ves=1, sram_kib=56, hbm_mib=4)).me_mask == 0b1000


def test_contexts_run_out_and_come_back(hv):
    vnpus = [hv.create_vnpu(VNPUSpec(mes=1, ves=0)) for _ in range(4)]
    with pytest.raises(AllocationError, match="all 4 contexts in use"):
        hv.create_vnpu(VNPUSpec(mes=0, ves=1))
    vnpus[1].destroy()
    assert hv.create_vnpu(VNPUSpec(mes=1, ves=0)).context == vnpus[1].context


@pytest.mark.parametrize("options, message", [
    ({"pnpus": 0}, "pnpus must be a positive integer"), ({"poll_cycles": 1.5}, "poll_cycles must be"),
    ({"policy": "fair"}, "unknown scheduling policy 'fair'"),
])
def test_bad_hypervisor_options(options, message):
    with pytest.raises(ValueError, match=message):
        Hypervisor("small", "functional", **options)


def test_wait_returns_when_everything_submitted_has_finished(hv):
    v = hv.create_vnpu(VNPUSpec())
    v.load(gemm("small", 3, 3, 3))
    futures = [v.submit({"A": np.ones((3, 3), np.int8), "B": np.ones((3, 3), np.int8)}) for _ in range(3)]
    hv.wait()
    assert all(f.done() for f in futures) and len(v.runs) == 3


def test_runs_submitted_together_wait_for_the_end_of_the_block():
    """Without the block the driver thread starts the first run while the second is being submitted
    (the sleep gives it the time); with it, nothing starts before the block ends, and then both runs
    start in the driver's next step: their timing no longer depends on the thread's wake-up."""
    with Hypervisor("small", "perf", "static") as hv:
        vnpus = [hv.create_vnpu(VNPUSpec()) for _ in range(2)]
        inputs = {"A": np.ones((16, 16), np.int8), "B": np.ones((16, 16), np.int8)}
        for v in vnpus:
            v.load(gemm("small", 16, 16, 16))
        latencies = []
        for _ in range(2):
            with hv.start_together():
                futures = [vnpus[0].submit(inputs)]
                time.sleep(0.2)
                assert not futures[0].running() and not futures[0].done()
                futures.append(vnpus[1].submit(inputs))
            hv.wait()
            latencies.append([v.runs[-1].latency_cycles for v in vnpus])
        assert latencies[0] == latencies[1]


def test_oversubscription_co_owns_the_least_shared_engines():
    with Hypervisor("small", "functional", "static", oversubscribe=True) as hv:
        a = hv.create_vnpu(VNPUSpec(mes=3, ves=2))
        b = hv.create_vnpu(VNPUSpec(mes=2, ves=1))
        assert a.me_mask == 0b0111 and b.me_mask == 0b1001 and b.ve_mask == 0b01


def test_several_pnpus():
    with Hypervisor("small", "functional", "static", pnpus=2) as hv:
        a, b = hv.create_vnpu(VNPUSpec(mes=4, ves=2)), hv.create_vnpu(VNPUSpec(mes=4, ves=2))
        assert (a.pnpu, b.pnpu) == (0, 1)
        with pytest.raises(AllocationError, match="pNPU 0: 0 free MEs .*; pNPU 1: 0 free MEs"):
            hv.create_vnpu(VNPUSpec(mes=1))


@pytest.mark.parametrize("values, message", [
    ({"mes": "two"}, "mes must be an integer"),
    ({"mes": 0, "ves": 0}, "at least one engine"),
    ({"priority": 300}, "priority=300 is outside 0..255"),
    ({"sram_kib": 0}, "sram_kib=0 is outside"),
    ({"cores": 2}, "unknown vNPU spec field\\(s\\) \\['cores'\\]"),
])
def test_malformed_specs_are_rejected_by_name(values, message):
    with pytest.raises(VNPUSpecError, match=message):
        VNPUSpec.from_dict(values)


def test_load_and_run_errors(hv):
    v = hv.create_vnpu(VNPUSpec(sram_kib=4, hbm_mib=1))
    with pytest.raises(VNPUStateError, match="no program"):
        v.submit({})
    with pytest.raises(ConfigMismatchError):
        v.load(gemm("tiny", 4, 4, 4))
    with pytest.raises(ImageError, match="needs .* bytes of scratchpad but vnpu0 has a 4096-byte window"):
        v.load(gemm("small", 64, 256, 64))
    v.load(gemm("small", 4, 4, 4))
    with pytest.raises(ImageError, match="missing \\['B'\\]"):
        v.submit({"A": np.zeros((4, 4), np.int8)})
    v.destroy()
    for call in (lambda: v.load(gemm("small", 4, 4, 4)), v.usage, v.destroy):
        with pytest.raises(VNPUStateError, match="destroyed"):
            call()


def test_runs_match_numpy_and_matmul_takes_a_vnpu(hv):
    rng = np.random.default_rng(0)
    v = hv.create_vnpu(VNPUSpec(mes=2, ves=1))
    a, b = rng.integers(-128, 128, (20, 33), dtype=np.int8), rng.integers(-128, 128, (33, 9), dtype=np.int8)
    assert np.array_equal(matmul(a, b, vnpu=v), a.astype(np.int32) @ b.astype(np.int32))
    image = elementwise("small", 6, 50, passes=2, block_elements=64)
    v.load(image)
    inputs = [{"X": rng.integers(-9999, 9999, (6, 50), dtype=np.int32),
               "Y": rng.integers(-99, 99, (6, 50), dtype=np.int32)} for _ in range(3)]
    futures = [v.submit(x) for x in inputs]
    for x, future in zip(inputs, futures):
        assert np.array_equal(future.result()["Z"], elementwise_reference(x["X"], x["Y"], 2))
    assert len(v.runs) == 4 and v.runs[0].latency_cycles is None  # untimed backend


def test_a_faulting_tenant_fails_its_own_future_only(hv):
    bad, good = hv.create_vnpu(VNPUSpec()), hv.create_vnpu(VNPUSpec())
    code = encode_stream(utop(EngineClass.VE, [Instr("ve.fill", dst=0x10000, n=1)]) + [Instr("halt")])
    bad.load(ProgramImage.for_config("small", code, entry=0, hbm_bytes=len(code), sram_bytes=64, symbols=[]))
    good.load(gemm("small", 8, 8, 8))
    rng = np.random.default_rng(1)
    x = {"A": rng.integers(-128, 128, (8, 8), dtype=np.int8), "B": rng.integers(-128, 128, (8, 8), dtype=np.int8)}
    failing, fine = bad.submit({}), good.submit(x)
    with pytest.raises(DeviceFault, match="SRAM_BOUNDS") as caught:
        failing.result()
    assert caught.value.fault == FaultCode.SRAM_BOUNDS
    assert np.array_equal(fine.result()["C"], x["A"].astype(np.int32) @ x["B"].astype(np.int32))


def test_bill_prices_harvested_cycles_as_such():
    usage = Usage(me_owned_cycles=1000, me_harvested_cycles=1000, ve_owned_cycles=400, hbm_bytes_read=1 << 30,
                  sram_kib_cycles=10, hbm_mib_cycles=10)
    prices = PriceTable(me_cycle=2.0, me_harvested_cycle=1.0, ve_cycle=0.5, hbm_gib_moved=3.0,
                        sram_kib_cycle=0.0, hbm_mib_cycle=0.0)
    bill = prices.bill(usage)
    amounts = {line.item: line.amount for line in bill.lines}
    assert amounts["ME cycles (owned)"] == 2000 and amounts["ME cycles (harvested)"] == 1000
    assert amounts["HBM GiB moved"] == 3.0
    assert bill.total == pytest.approx(2000 + 1000 + 200 + 3)
    assert "ME cycles (harvested)" in str(bill)


def test_usage_counts_engine_cycles_on_the_rtl():
    rng = np.random.default_rng(2)
    a, b = rng.integers(-128, 128, (48, 64), dtype=np.int8), rng.integers(-128, 128, (64, 40), dtype=np.int8)
    with Hypervisor("small", "verilator", "harvest") as hv:
        v = hv.create_vnpu(VNPUSpec(mes=1, ves=1), name="solo")
        result, stats = matmul(a, b, vnpu=v, return_stats=True)
        assert np.array_equal(result, a.astype(np.int32) @ b.astype(np.int32))
        usage = v.usage()
    assert stats["cycles"] > 0 and stats["vnpu"] == "solo"
    assert usage.me_owned_cycles > 0 and usage.me_harvested_cycles > 0  # alone, it harvests the idle MEs
    assert usage.dma_cycles > 0 and usage.macs == 48 * 64 * 40
    assert usage.hbm_bytes_read >= 48 * 64 + 64 * 40
    assert usage.sram_kib_cycles > 0


SCENARIO = """
config: small
backend: functional
policy: static
tenants:
  - name: g
    vnpu: {mes: 2, ves: 1}
    program: gemm 12x20x8
  - name: r
    vnpu: {mes: 1, ves: 1, priority: 3}
    program: elementwise 4x30 passes=2 block=32
    runs: 2
  - name: file
    vnpu: {mes: 1, ves: 0}
    program: g.tcimg
"""


def test_cli_vnpu_runs_a_scenario(tmp_path, capsys):
    (tmp_path / "g.tcimg").write_bytes(gemm("small", 5, 6, 7).to_bytes())
    (tmp_path / "s.yaml").write_text(SCENARIO)
    assert main(["vnpu", str(tmp_path / "s.yaml")]) == 0
    out = capsys.readouterr().out
    assert "policy static" in out and out.count("outputs vs golden model alone: all match") == 3
    assert "bill (credits)" in out
    (tmp_path / "s.json").write_text(json.dumps({"tenants": [{"program": "gemm 3x3x3"}], "backend": "functional"}))
    assert main(["vnpu", str(tmp_path / "s.json"), "--policy", "temporal"]) == 0


@pytest.mark.parametrize("text, message", [
    ("tenants: []", "'tenants' must be a non-empty list"),
    ("tenants: [{program: gemm 2x2x2, vnpu: {mes: 9}}]", "tenant 0"),
    ("tenants: [{program: gemm 2x2x2, colour: red}]", "unknown key\\(s\\) \\['colour'\\]"),
    ("tenants: [{vnpu: {mes: 1}}]", "'program' is required"),
    ("tenants: [{program: conv 3x3}]", "neither 'gemm MxKxN'"),
    ("backend: functional\ntenants: [{program: gemm 2x2x2, vnpu: {mes: 1, hbm_mib: 100}}]", "100 MiB of HBM"),
    ("tenants: [{program: gemm 2x2x2}]\n  bad: [", "not valid YAML"),
    ("policy: static\ntenants: [{program: gemm 2x2x2}]\npolicy: harvest\n",
     "found key 'policy' again \\(first given on line 1\\)"),
    ("tenants: [{program: gemm 2x2x2, program: gemm 4x4x4}]", "found key 'program' again"),
])
def test_cli_vnpu_rejects_bad_scenarios(tmp_path, capsys, text, message):
    (tmp_path / "s.yaml").write_text(text)
    assert main(["vnpu", str(tmp_path / "s.yaml"), "--backend", "functional"]) == 1
    assert __import__("re").search(message, capsys.readouterr().err)


@pytest.mark.parametrize("policy", ["static", "harvest"])
def test_a_program_needing_an_engine_class_the_vnpu_lacks_is_refused_at_load(policy):
    with Hypervisor("tiny", "functional", policy) as hv:
        v = hv.create_vnpu(VNPUSpec(mes=1, ves=0, sram_kib=4, hbm_mib=1), name="novector")
        with pytest.raises(ImageError, match=rf"the program runs VE uTOps but novector has no VE \(ves=0\); under "
                                             rf"the {policy} policy they would fault NO_ENGINE"):
            v.load(elementwise("tiny", 4, 8))
        assert v.image is None
        v.load(gemm("tiny", 4, 4, 4))  # DMA and ME uTOps only
        assert v.run({"A": np.ones((4, 4), np.int8), "B": np.ones((4, 4), np.int8)})["C"].tolist() == [[4] * 4] * 4


def test_policies_without_ownership_load_any_engine_class():
    """Under temporal and operator the hardware runs a uTOp on any engine of its class: no refusal."""
    with Hypervisor("tiny", "functional", "temporal") as hv:
        v = hv.create_vnpu(VNPUSpec(mes=1, ves=0, sram_kib=4, hbm_mib=1))
        v.load(elementwise("tiny", 4, 8))
        x = {"X": np.arange(32, dtype=np.int32).reshape(4, 8), "Y": np.ones((4, 8), np.int32)}
        assert np.array_equal(v.run(x)["Z"], elementwise_reference(x["X"], x["Y"], 1))
