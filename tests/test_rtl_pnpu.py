"""The whole pNPU on both RTL backends (Amaranth's simulator and Verilator) against the golden model;
the scoreboard compares every output tensor and every per-context counter."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
from amaranth.sim import Simulator

from tcloud.firmware import Requant, gemm
from tcloud.firmware.gather import embedding_lookup, gather_reference
from tcloud.isa import (ConfigError, ConfigMismatchError, ContextStatus, EngineClass, FaultCode, HostCommandError,
                        Instr, assemble, encode_stream, get_config)
from tcloud.isa import csr
from tcloud.rtl import decode
from tcloud.rtl.decode import OPCODES
from tcloud.rtl.pnpu import PNPU
from tcloud.runtime import DeviceFault, FunctionalDevice, Placement, load_image, matmul, read_outputs, run_image
from tcloud.runtime.backends.amaranth import AmaranthDevice
from tcloud.runtime.backends.verilator import VerilatorDevice
from tcloud.verif import find_races, random_program
from tcloud.verif.hbm_spec import port_gbps
from tcloud.verif.random_programs import replay_hint, seeds

from conftest import utop

pytestmark = pytest.mark.slow  # whole-pNPU simulations, most in Amaranth's simulator

RTL_BACKENDS = {"amaranth": AmaranthDevice, "verilator": VerilatorDevice}
RANDOM_PROGRAMS = {"amaranth": 8 if os.environ.get("CI") else 16, "verilator": 40 if os.environ.get("CI") else 200}


@pytest.fixture(params=sorted(RTL_BACKENDS))
def backend(request):
    return request.param


@pytest.fixture
def device(backend):
    dev = RTL_BACKENDS[backend]("tiny")
    yield dev
    dev.close()


def golden_run(image, inputs):
    golden = FunctionalDevice("tiny", trace=True)
    outputs, info = run_image(golden, image, inputs)
    assert find_races(golden.machine.trace) == []
    return outputs, info


def test_gemm_images_are_bit_exact(device):
    rng = np.random.default_rng(11)
    shapes = [(1, 1, 1, False, None), (5, 7, 3, True, Requant(1 << 30, 36, -3)), (3, 40, 5, False, None),
              (9, 13, 6, True, Requant.from_scale(1 / 700))]
    for m, k, n, bias, requant in shapes:
        image = gemm("tiny", m, k, n, bias=bias, requant=requant)
        inputs = {"A": rng.integers(-128, 128, (m, k), dtype=np.int8),
                  "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}
        if bias:
            inputs["bias"] = rng.integers(-5000, 5000, n, dtype=np.int32)
        expected, expected_info = golden_run(image, inputs)
        outputs, info = run_image(device, image, inputs)
        assert np.array_equal(outputs["C"], expected["C"]), (m, k, n)
        assert info.counters == expected_info.counters


def test_random_programs_with_hbm_backpressure_are_bit_exact(backend):
    device = RTL_BACKENDS[backend]("tiny", hbm_latency=5, hbm_jitter=4, hbm_accept_probability=0.6, seed=5)
    try:
        for seed in seeds(RANDOM_PROGRAMS[backend]):
            with replay_hint(seed):
                image, inputs = random_program("tiny", seed)
                expected, expected_info = golden_run(image, inputs)
                outputs, info = run_image(device, image, inputs)
                assert np.array_equal(outputs["Y"], expected["Y"]), f"seed {seed}"
                assert info.counters == expected_info.counters, f"seed {seed}"
    finally:
        device.close()


def ve(dst=0, n=1, **header):
    return utop(EngineClass.VE, [Instr("ve.fill", dst=dst, n=n)], **header)


def gather(indices, *, idx=0x100, rows=None, sram=0, row_bytes=16):
    """A VE uTOp writing int32 ``indices`` at ``idx``, then a DMA uTOp gathering the rows they select."""
    fills = [Instr("ve.fill", dst=idx + 4 * r, n=1, value=i) for r, i in enumerate(indices) if idx + 4 * r < 0x400]
    return (utop(EngineClass.VE, fills, signal=1)
            + utop(EngineClass.DMA, [Instr("dma.gather", sram=sram, hbm=0, idx=idx, rows=rows or len(indices),
                                           row_bytes=row_bytes, sram_stride=row_bytes)], wait0=0, count0=1))


FAULTS = {
    "illegal_opcode": (bytes([0xEE]) + bytes(15), FaultCode.ILLEGAL_OPCODE),
    "reserved_bits": (bytes(Instr("halt").encode()[:15]) + b"\x80", FaultCode.ILLEGAL_FIELD),
    "privileged": ([Instr("ctx.scrub", ctx=0)], FaultCode.PRIVILEGED),
    "body_at_top_level": ([Instr("ve.fill", dst=0, n=1)], FaultCode.WRONG_CLASS),
    "wrong_class_in_body": (utop(EngineClass.DMA, [Instr("ve.fill", dst=0, n=1)]), FaultCode.WRONG_CLASS),
    "sram_overflow": (ve(dst=0x3F8, n=4), FaultCode.SRAM_BOUNDS),
    "dma_read_outside_hbm": (utop(EngineClass.DMA, [Instr("dma.load", sram=0, hbm=0xFFC, rows=1, row_bytes=8)]),
                             FaultCode.HBM_BOUNDS),
    "dma_write_outside_hbm": (utop(EngineClass.DMA, [Instr("dma.store", sram=0, hbm=0xF00, rows=9, row_bytes=32,
                                                           hbm_stride=32)]), FaultCode.HBM_BOUNDS),
    "tile_too_large": (utop(EngineClass.ME, [Instr("me.loadw", w=0, k=8, n=4)]), FaultCode.ILLEGAL_FIELD),
    "tile_too_wide": (utop(EngineClass.ME, [Instr("me.loadw", w=0, k=4, n=8)]), FaultCode.ILLEGAL_FIELD),
    "store_outside_both_windows": (utop(EngineClass.DMA, [Instr("dma.store", sram=0x3F8, hbm=0xFF8, rows=1,
                                                                row_bytes=16)]), FaultCode.SRAM_BOUNDS),
    "matmul_without_weights": (utop(EngineClass.ME, [Instr("me.matmul", a=0, out=0x40, m=1)]), FaultCode.ME_STATE),
    "lut_without_lutload": (utop(EngineClass.VE, [Instr("ve.fill", dst=0x40, n=1),
                                                  Instr("ve.lut", dst=0x40, src=0, n=1)]), FaultCode.VE_STATE),
    "lut_table_of_an_earlier_utop": (utop(EngineClass.VE, [Instr("ve.lutload", src=0)])
                                     + utop(EngineClass.VE, [Instr("ve.lut", dst=0x40, src=0, n=1)]), FaultCode.VE_STATE),
    "lutload_past_the_window": (utop(EngineClass.VE, [Instr("ve.lutload", src=0x300),
                                                      Instr("ve.lutload", src=0x304)]), FaultCode.SRAM_BOUNDS),
    "lut_past_the_window": (utop(EngineClass.VE, [Instr("ve.lutload", src=0),
                                                  Instr("ve.lut", dst=0x3FC, src=0, n=5)]), FaultCode.SRAM_BOUNDS),
    "gather_negative_index": (gather([-1]), FaultCode.HBM_BOUNDS),
    "gather_most_negative_index": (gather([-(1 << 31)]), FaultCode.HBM_BOUNDS),  # row 0 without its sign bit
    "gather_index_past_the_window": (gather([255, 0, 256]), FaultCode.HBM_BOUNDS),  # row 255 ends at 0x1000
    "gather_index_wrapping_the_address": (gather([3, 1 << 28]), FaultCode.HBM_BOUNDS),  # 2**28 rows: 2**32 bytes
    "gather_largest_index": (gather([(1 << 31) - 1]), FaultCode.HBM_BOUNDS),
    "gather_indices_past_the_scratchpad": (gather([0], idx=0x3FC, rows=2), FaultCode.SRAM_BOUNDS),
    "gather_rows_past_the_scratchpad": (gather([0, 1], sram=0x3F0), FaultCode.SRAM_BOUNDS),
    "gather_over_its_indices": (gather([0, 1], sram=0xF8), FaultCode.ILLEGAL_FIELD),
    "token_deadlock": (ve(wait0=3, count0=1), FaultCode.TOKEN_DEADLOCK),
    "token_overflow": (ve(signal=1) * 256, FaultCode.TOKEN_OVERFLOW),
    "runs_off_its_window": ([Instr("nop")] * 8, FaultCode.FETCH_BOUNDS),
    "body_ends_at_window_end": (ve(), FaultCode.FETCH_BOUNDS),  # the body's last word is the window's last
    "cost_exceeded": (utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=1)] * 3, cost=20), FaultCode.COST_EXCEEDED),
    "second_instruction_faults": (utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=1),
                                                        Instr("ve.fill", dst=0x400, n=1)]), FaultCode.SRAM_BOUNDS),
}


def program_bytes(program, halt=True):
    """Encode a test program, ending it with ``halt`` unless ``halt`` is false or it is raw bytes."""
    if isinstance(program, bytes):
        return program
    return encode_stream(program + ([Instr("halt")] if halt else []))


def start_tenant(device, ctx, program, *, hbm_base, hbm_size=0x1000, sram_base=0, sram_size=0x400, code_at=0x800,
                 halt=True):
    device.host(Instr("ctx.hbm", ctx=ctx, base=hbm_base, size=hbm_size))
    device.host(Instr("ctx.sram", ctx=ctx, base=sram_base, size=sram_size))
    device.write_hbm(hbm_base + code_at, program_bytes(program, halt))
    device.host(Instr("ctx.start", ctx=ctx, pc=code_at))


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_code_and_pc_match_the_golden_model(device, name):
    program, code = FAULTS[name]
    halt = name not in ("runs_off_its_window", "body_ends_at_window_end")
    blob = program_bytes(program, halt)
    hbm_size = 0x800 + len(blob) + (16 if halt else 0)
    golden = FunctionalDevice("tiny")
    for target in (device, golden):
        start_tenant(target, 1, program, hbm_base=0x4000, hbm_size=max(hbm_size, 0x1000) if halt else hbm_size,
                     sram_base=0x400, halt=halt)
        assert target.run(max_cycles=200_000)
    info, expected = device.context(1), golden.context(1)
    assert (info.status, info.fault) == (ContextStatus.FAULTED, code)
    assert (info.fault, info.fault_pc) == (expected.fault, expected.fault_pc)


def lut_program(body_op="ve.lut"):
    """Tables and int8 sources loaded by DMA, then a VE uTOp of lookups (several shapes, a broadcast
    row, in place, a second table replacing the first; ``body_op="ve.relu"`` has the same shapes),
    stored back to HBM at 0x400."""
    def op(**fields):
        return Instr("ve.relu", src_i8=1, dst_i8=1, **fields) if body_op == "ve.relu" else Instr(body_op, **fields)
    body = [Instr("ve.lutload", src=0x100), Instr("ve.shape", rows=3, dst_stride=20, src1_stride=16),
            op(dst=0x300, src=0x0, n=13), Instr("ve.lutload", src=0x200),
            Instr("ve.shape", rows=2, dst_stride=36, src1_stride=0), op(dst=0x340, src=0x10, n=9),
            Instr("ve.shape", rows=1), op(dst=0x20, src=0x20, n=16), op(dst=0x3A0, src=0x40, n=64)]
    return (utop(EngineClass.DMA, [Instr("dma.load", sram=0, hbm=0, rows=1, row_bytes=0x300)], signal=1)
            + utop(EngineClass.VE, body, wait0=0, count0=1, signal=2)
            + utop(EngineClass.DMA, [Instr("dma.store", sram=0, hbm=0x400, rows=1, row_bytes=0x400)], wait0=1, count0=1))


def run_lut_program(target, program, data):
    target.write_hbm(0x4000, data)
    start_tenant(target, 1, program, hbm_base=0x4000, sram_base=0x400)
    busy = sum(target.stats()["engine_busy_cycles"].values()) if hasattr(target, "cycles") else 0
    assert target.run(max_cycles=500_000)
    busy = sum(target.stats()["engine_busy_cycles"].values()) - busy if hasattr(target, "cycles") else 0
    return target.read_hbm(0x4400, 0x400), target.context(1), busy


def test_lut_tables_are_bit_exact_on_both_backends_and_stream_like_relu():
    """Random tables and sources: both RTL backends write what the golden model writes, count alike and
    take the same cycles; and the lookups take exactly the cycles of int8 ReLUs of the same shapes."""
    rng = np.random.default_rng(21)
    data = rng.integers(0, 256, 0x300, dtype=np.uint8).tobytes()
    expected, golden_info, _ = run_lut_program(FunctionalDevice("tiny"), lut_program(), data)
    assert golden_info.status == ContextStatus.DONE, golden_info.detail
    table = np.frombuffer(data[0x100:0x200], np.int8)
    sources = np.frombuffer(data[:0x10], np.uint8)
    assert np.frombuffer(expected[0x300:0x30D], np.int8).tolist() == table[sources[:13]].tolist()
    cycles = {}
    for name, backend in RTL_BACKENDS.items():
        busy = {}
        for op in ("ve.lut", "ve.relu"):
            dev = backend("tiny")
            try:
                got, info, busy[op] = run_lut_program(dev, lut_program(op), data)
            finally:
                dev.close()
            if op == "ve.lut":
                assert got == expected, name
                assert (info.status, info.counters) == (ContextStatus.DONE, golden_info.counters), name
        assert busy["ve.lut"] == busy["ve.relu"], name
        cycles[name] = busy["ve.lut"]
    assert cycles["amaranth"] == cycles["verilator"], cycles


def test_attacker_faults_alone_and_the_victim_is_exact(device):
    rng = np.random.default_rng(2)
    a, b = rng.integers(-128, 128, (6, 10), dtype=np.int8), rng.integers(-128, 128, (10, 7), dtype=np.int8)
    image = gemm("tiny", 6, 10, 7)
    victim = Placement(context=0, hbm_base=0x0, sram_base=0x0)
    load_image(device, image, {"A": a, "B": b}, victim)
    attack = utop(EngineClass.DMA, [Instr("dma.store", sram=0, hbm=0xFC0, rows=4, row_bytes=64, hbm_stride=64)])
    start_tenant(device, 1, attack, hbm_base=0x8000, sram_base=0x2000)
    assert device.run(max_cycles=500_000)
    assert np.array_equal(read_outputs(device, image, victim)["C"], a.astype(np.int32) @ b.astype(np.int32))
    assert device.context(1).fault == FaultCode.HBM_BOUNDS
    assert not np.frombuffer(device.read_hbm(0x9000, 0x1000), np.uint8).any()


def test_windows_may_end_exactly_at_the_end_of_memory(device):
    cfg = device.config
    for target in (device, FunctionalDevice(cfg)):
        target.host(Instr("ctx.sram", ctx=0, base=cfg.sram_bytes - 0x400, size=0x400))
        target.host(Instr("ctx.hbm", ctx=0, base=cfg.hbm_bytes - 0x1000, size=0x1000))
        for command in (Instr("ctx.sram", ctx=0, base=cfg.sram_bytes - 0x3FC, size=0x400),
                        Instr("ctx.hbm", ctx=0, base=cfg.hbm_bytes - 0xFFC, size=0x1000)):
            with pytest.raises(HostCommandError, match="WINDOW_OUT_OF_RANGE|exceeds"):
                target.host(command)


@pytest.mark.parametrize("command, message", [
    (Instr("ctx.sram", ctx=0, base=0x3000, size=0x2000), "WINDOW_OUT_OF_RANGE"),
    (Instr("ctx.hbm", ctx=0, base=0xFFF000, size=0x2000), "WINDOW_OUT_OF_RANGE"),
    (Instr("ctx.engines", ctx=0, me_mask=0b10, ve_mask=1, dma_mask=1), "NO_SUCH_ENGINE"),
    (Instr("ctx.engines", ctx=0, me_mask=1, ve_mask=1, dma_mask=0b10), "NO_SUCH_ENGINE"),
    (Instr("ctx.prio", ctx=5, priority=1), "NO_SUCH_CONTEXT"),
    (Instr("halt"), "NOT_A_HOST_COMMAND"),
])
def test_host_command_errors(device, command, message):
    with pytest.raises(HostCommandError, match=message):
        device.host(command)


def test_a_host_command_the_pnpu_does_not_implement_is_rejected(monkeypatch):
    """A ``ctx.*`` opcode that the decoder knows (here: added to its ROM) but the host-command unit has
    no case for is rejected, not run as another command (it used to run as ``ctx.scrub``)."""
    opcode = next(op for op in range(0xF0, 0x100) if op not in OPCODES.values())
    rom = list(decode.DECODE_ROM)
    rom[opcode] = rom[OPCODES["ctx.scrub"]]
    monkeypatch.setattr(decode, "DECODE_ROM", rom)
    word = bytearray(Instr("ctx.scrub", ctx=0).encode())
    word[0] = opcode
    command = SimpleNamespace(mnemonic=f"opcode {opcode:#x}", encode=lambda: bytes(word))
    device = AmaranthDevice("tiny")
    try:
        device.host(Instr("ctx.hbm", ctx=0, base=0, size=0x1000))
        device.write_hbm(0x100, b"\xAB" * 64)
        with pytest.raises(HostCommandError, match="UNIMPLEMENTED"):
            device.host(command)
        assert device.read_hbm(0x100, 64) == b"\xAB" * 64
    finally:
        device.close()


def test_kill_then_scrub(device):
    start_tenant(device, 0, [Instr("nop")] * 100 + [Instr("halt")], hbm_base=0x0, hbm_size=0x1000)
    device.run(max_cycles=200)
    assert device.context(0).status == ContextStatus.RUNNING
    with pytest.raises(HostCommandError, match="CONTEXT_RUNNING"):
        device.host(Instr("ctx.scrub", ctx=0))
    device.host(Instr("ctx.kill", ctx=0))
    assert device.run(max_cycles=10_000)
    assert (device.context(0).status, device.context(0).fault) == (ContextStatus.FAULTED, FaultCode.KILLED)
    device.write_hbm(0x100, b"\xAB" * 64)
    device.host(Instr("ctx.scrub", ctx=0))
    assert not np.frombuffer(device.read_hbm(0, 0x1000), np.uint8).any()
    assert device.context(0).counters["instructions"] == 0
    store = utop(EngineClass.DMA, [Instr("dma.store", sram=0, hbm=0x400, rows=1, row_bytes=0x400)])
    start_tenant(device, 0, store, hbm_base=0x0)
    assert device.run(max_cycles=100_000)
    assert device.context(0).status == ContextStatus.DONE
    assert not np.frombuffer(device.read_hbm(0x400, 0x400), np.uint8).any()


def test_the_largest_context_table_and_engine_counters_have_distinct_csrs():
    """16 contexts (the most the ctx field encodes) with 48 engines: no register shares an address
    and all fit the address port; on the RTL, contexts 14 and 15 and the engine counters read back."""
    cfg = get_config("tiny").replace(contexts=16)
    with pytest.raises(ConfigError):
        cfg.replace(contexts=17)
    largest = cfg.replace(dma_count=16, me_count=16, ve_count=16)
    engines = largest.dma_count + largest.me_count + largest.ve_count
    addresses = (list(csr.GLOBAL.values()) + [csr.engine_csr(e) for e in range(engines)]
                 + [csr.context_csr(c, name) for c in range(largest.contexts) for name in csr.CONTEXT])
    assert len(set(addresses)) == len(addresses)
    device, golden = AmaranthDevice(cfg), FunctionalDevice(cfg)
    try:
        assert max(addresses) < 1 << len(device.dut.csr_addr)
        store = utop(EngineClass.DMA, [Instr("dma.store", sram=0, hbm=0x400, rows=1, row_bytes=0x40)])
        for target in (device, golden):
            for c in (14, 15):
                target.host(Instr("ctx.budget", ctx=c, cycles=100_000 + c))
                start_tenant(target, c, store * (c - 13), hbm_base=0x1000 * c, sram_base=0x400 * (c - 14))
            assert target.run(max_cycles=100_000)
        for c in (14, 15):
            info = device.context(c)
            assert (info.status, info.fault, info.fault_pc) == (ContextStatus.DONE, FaultCode.NONE, 0)
            assert info.counters == golden.context(c).counters
            assert device.csr_read(csr.context_csr(c, "BUDGET")) == 100_000 + c
        busy = device.stats()["engine_busy_cycles"]
        assert 0 < busy["dma0"] < device.cycles and busy["me0"] == busy["ve0"] == 0
    finally:
        device.close()


def test_matmul_on_rtl_backends_reports_cycles_and_utilization(backend):
    rng = np.random.default_rng(4)
    a, b = rng.integers(-128, 128, (7, 9), dtype=np.int8), rng.integers(-128, 128, (9, 6), dtype=np.int8)
    result, stats = matmul(a, b, config="tiny", backend=backend, return_stats=True)
    assert np.array_equal(result, matmul(a, b, config="tiny"))
    assert stats["cycles"] > 0 and 0 < stats["utilization"]["me"] <= 1
    assert stats["engine_busy_cycles"]["me0"] <= stats["cycles"]


def test_image_for_another_config_is_rejected(device):
    with pytest.raises(ConfigMismatchError):
        run_image(device, gemm("small", 2, 2, 2), {"A": np.zeros((2, 2), np.int8), "B": np.zeros((2, 2), np.int8)})


def test_device_fault_is_raised_by_the_runtime(device):
    from tcloud.isa import assemble
    from tcloud.isa.errors import AsmWarning

    with pytest.warns(AsmWarning, match="SRAM_BOUNDS"):
        image = assemble(".config tiny\n.footprint hbm=0x100 sram=0x40\nutop cls=ve\n  ve.fill dst=0x40 n=1\nhalt\n")
    with pytest.raises(DeviceFault, match="SRAM_BOUNDS at pc 0x10"):
        run_image(device, image, {})


TINY = get_config("tiny")
PORT_GBPS = port_gbps(TINY)


@pytest.mark.parametrize("hbm_gbps", [PORT_GBPS, PORT_GBPS * 3 / 8], ids=["port", "3/8 port"])
def test_amaranth_and_verilator_agree_on_results_and_cycles(hbm_gbps):
    """Same programs (instruction fetches mixed with DMA data), no jitter or backpressure: identical cycle
    counts, so the Python and C++ HBM models time alike, also when bandwidth credit throttles the port."""
    config = TINY.replace(hbm_gbps=hbm_gbps)
    amaranth, verilator = AmaranthDevice(config), VerilatorDevice(config)
    try:
        programs = [random_program("tiny", seed, utops=6) for seed in (100, 101)]
        rng = np.random.default_rng(9)
        image = gemm("tiny", 6, 11, 5, bias=True, requant=Requant(1 << 30, 38))
        programs.append((image, {"A": rng.integers(-128, 128, (6, 11), dtype=np.int8),
                                 "B": rng.integers(-128, 128, (11, 5), dtype=np.int8),
                                 "bias": rng.integers(-999, 999, 5, dtype=np.int32)}))
        for image, inputs in programs:
            runs = []
            for dev in (amaranth, verilator):
                start = dev.cycles
                outputs, info = run_image(dev, image, inputs)
                runs.append((outputs, info.counters, dev.cycles - start, dev.stats()["engine_busy_cycles"]))
            (out_a, cnt_a, cyc_a, busy_a), (out_v, cnt_v, cyc_v, busy_v) = runs
            assert all(np.array_equal(out_a[k], out_v[k]) for k in out_a)
            assert cnt_a == cnt_v
            assert cyc_a == cyc_v and busy_a == busy_v
    finally:
        amaranth.close()
        verilator.close()


REQUANTF_PROGRAM = """
.config tiny
.footprint hbm=0x800 sram=0x400
.entry 0x600
.input A i32 3x18 offset=0x0
.input S i32 18 offset=0x100
.output Y i8 3x18 offset=0x200 stride=20
.output Z i32 3x18 offset=0x300 stride=72
utop cls=dma signal=t0
  dma.load sram=0x0 hbm=0x0 rows=1 row_bytes=216
  dma.load sram=0x100 hbm=0x100 rows=1 row_bytes=72
utop cls=ve signal=t1 wait0=t0 count0=1
  ve.shape rows=3 dst_stride=20 src1_stride=72 src2_stride=0
  ve.requantf dst=0x200 src1=0x0 src2=0x100 n=18 zp=-5
  ve.shape rows=3 dst_stride=72 src1_stride=72 src2_stride=0
  ve.requantf dst=0x300 src1=0x0 src2=0x100 n=18 zp=7 dst_i8=0
utop cls=dma wait0=t1 count0=1
  dma.store sram=0x200 hbm=0x200 rows=1 row_bytes=60
  dma.store sram=0x300 hbm=0x300 rows=1 row_bytes=216
halt
"""
"""ve.requantf with a per-column scale row broadcast over three rows (src2_stride=0), to int8 and int32."""


def requantf_inputs():
    """Accumulators and scales at the corners of ve.requantf: binary32 ties, |acc| >= 2**24, extremes,
    typical, huge, negative, zero, subnormal, infinite and NaN scales."""
    rng = np.random.default_rng(17)
    scales = np.array([0.5, 0.25, 1.5, 2.0 ** -20, 3.1e-3, 7.7e-5, 0.0, -0.0, 1e-45, 1.1754942e-38, np.inf, np.nan,
                       -0.0123, 2.0 ** 23, 5.5e4, 3.4028235e38, 1.0, 0.047], np.float32)
    acc = rng.integers(-(1 << 31), 1 << 31, (3, 18))
    acc[0] = rng.integers(-300, 300, 18) * 2 + 1  # odd: x.5 ties at scale 0.5
    acc[1, :6] = [-(1 << 31), (1 << 31) - 1, (1 << 24) + 1, -(1 << 24) - 3, 0, -1]
    return {"A": acc.astype(np.int32), "S": scales.view(np.int32)}


def assert_both_backends_match_the_golden_model(image, inputs):
    """Every output and counter of ``image`` on both RTL backends (tiny) equals the golden model's, and
    the two backends take the same cycles; returns the golden outputs."""
    expected, expected_info = golden_run(image, inputs)
    cycles = []
    for backend in sorted(RTL_BACKENDS):
        device = RTL_BACKENDS[backend]("tiny")
        try:
            outputs, info = run_image(device, image, inputs)
            cycles.append(device.cycles)
        finally:
            device.close()
        for name in expected:
            assert np.array_equal(outputs[name], expected[name]), (backend, name)
        assert info.counters == expected_info.counters, backend
    assert cycles[0] == cycles[1]
    return expected


def test_requantf_matches_the_golden_model_with_equal_cycles_on_both_backends():
    assert_both_backends_match_the_golden_model(assemble(REQUANTF_PROGRAM), requantf_inputs())


def test_verilator_runs_a_gemm_on_the_small_config():
    device = VerilatorDevice("small")
    try:
        rng = np.random.default_rng(12)
        image = gemm("small", 40, 70, 36, bias=True, requant=Requant.from_scale(1 / 1500))
        inputs = {"A": rng.integers(-128, 128, (40, 70), dtype=np.int8),
                  "B": rng.integers(-128, 128, (70, 36), dtype=np.int8),
                  "bias": rng.integers(-9999, 9999, 36, dtype=np.int32)}
        expected, expected_info = run_image(FunctionalDevice("small"), image, inputs)
        outputs, info = run_image(device, image, inputs)
        assert np.array_equal(outputs["C"], expected["C"])
        assert info.counters == expected_info.counters
        busy = device.stats()["engine_busy_cycles"]
        assert sum(busy[f"me{i}"] > 0 for i in range(4)) >= 2  # independent column tiles ran on several MEs
    finally:
        device.close()


def test_waveforms_from_both_rtl_backends(tmp_path):
    image = gemm("tiny", 2, 3, 2)
    inputs = {"A": np.ones((2, 3), np.int8), "B": np.ones((3, 2), np.int8)}
    verilator_vcd = tmp_path / "verilator.vcd"
    device = VerilatorDevice("tiny", trace=verilator_vcd)
    outputs, _ = run_image(device, image, inputs)
    device.close()
    assert outputs["C"].tolist() == [[3, 3], [3, 3]]
    assert b"$enddefinitions" in verilator_vcd.read_bytes()[:5_000_000]
    vcd = tmp_path / "pnpu.vcd"
    device = AmaranthDevice("tiny", vcd=vcd)
    run_image(device, image, inputs)
    device.close()
    assert b"$enddefinitions" in vcd.read_bytes()[:2_000_000]


def test_reset_input_restores_reset_values_one_edge_later():
    """``rst`` is registered: high at one edge, the registers take their reset values at the next."""
    dut = PNPU(get_config("tiny"))
    seen = {}

    async def bench(ctx):
        async def read(name):
            ctx.set(dut.csr_addr, csr.GLOBAL[name])
            return ctx.get(dut.csr_rdata)

        ctx.set(dut.csr_addr, csr.GLOBAL["POLICY"])
        ctx.set(dut.csr_wdata, 3)
        ctx.set(dut.csr_we, 1)
        await ctx.tick()
        ctx.set(dut.csr_we, 0)
        await ctx.tick().repeat(20)
        seen["before"] = (await read("POLICY"), await read("CYCLES_LO"))
        ctx.set(dut.rst, 1)
        await ctx.tick()
        ctx.set(dut.rst, 0)
        seen["registered"] = await read("POLICY")
        await ctx.tick()
        seen["after"] = (await read("POLICY"), await read("CYCLES_LO"))

    sim = Simulator(dut)
    sim.add_clock(1e-9)
    sim.add_testbench(bench)
    sim.run()
    assert seen["before"] == (3, 21)
    assert seen["registered"] == 3
    assert seen["after"] == (csr.POLICY_RESET, 0)


@pytest.mark.parametrize("name, value", [("POLICY", 4), ("QUANTUM", 0), ("STARVATION", 0),
                                         ("HARVEST_COST", 1 << 24), ("HARVEST_GRACE", 1 << 16), ("QUANTUM", 2**32 - 1)])
def test_the_pnpu_refuses_a_configuration_value_outside_its_range(name, value):
    """A 32-bit write into a narrower configuration register is refused whole (once, a QUANTUM of
    0 wrapped the time slice to 2**25 - 1 cycles and a HARVEST_COST of 2**24 switched harvesting off)."""
    device = AmaranthDevice("tiny")
    address = csr.GLOBAL[name]
    before = device.csr_read(address)
    device.csr_write(address, value)
    assert device.csr_read(csr.GLOBAL["CONFIG_REFUSED"]) == 1
    assert device.csr_read(address) == before
    register = next(r for r in csr.CONFIG_CSRS if r.name == name)
    for accepted in (register.values.start, register.values.stop - 1):
        device.csr_write(address, accepted)
        assert device.csr_read(csr.GLOBAL["CONFIG_REFUSED"]) == 0
        assert device.csr_read(address) == accepted
    device.close()


@pytest.mark.parametrize("backend", [FunctionalDevice, AmaranthDevice])
@pytest.mark.parametrize("option, value", [("quantum", 0), ("starvation", 1 << 16), ("harvest_cost", -1),
                                           ("harvest_grace", 1.5)])
def test_every_backend_refuses_what_the_pnpu_refuses(backend, option, value):
    device = backend("tiny")
    with pytest.raises(ValueError, match=f"{option} must be an integer within"):
        device.set_policy("harvest", **{option: value})


FMA_PROGRAM = """
.config tiny
.footprint hbm=0x800 sram=0x400
.entry 0x600
.input A i8 2x20 offset=0x0
.input W i32 20 offset=0x40
.input X i32 20 offset=0xa0
.output T i32 2x20 offset=0x100 stride=80
.output Y i8 2x20 offset=0x1a0 stride=20
.output U i8 2x20 offset=0x1d0 stride=20
.output Z i32 20 offset=0x200
.output V i32 20 offset=0x260
utop cls=dma signal=t0
  dma.load sram=0x0 hbm=0x0 rows=1 row_bytes=240
utop cls=ve signal=t1 wait0=t0 count0=1
  ve.shape rows=2 dst_stride=80 src1_stride=20 src2_stride=0
  ve.setf value=0x3f000010
  ve.fma dst=0x100 src1=0x0 src2=0x40 n=20 src1_kind=0 dst_kind=0
  ve.shape rows=2 dst_stride=20 src1_stride=80 src2_stride=0
  ve.setf value=0xbebe0ded
  ve.fma dst=0x1a0 src1=0x100 src2=0x40 n=20 src1_kind=3 dst_kind=1
  ve.shape rows=2 dst_stride=20 src1_stride=20 src2_stride=0
  ve.setf value=0x3f000010
  ve.fma dst=0x1d0 src1=0x0 src2=0x0 n=20 src1_kind=1 src2_zero=1 dst_kind=2
  ve.shape rows=1
  ve.setf value=0x3c000000
  ve.fma dst=0x200 src1=0xa0 src2=0x40 n=20 src1_kind=2 dst_kind=3
utop cls=ve signal=t2 wait0=t1 count0=1
  ve.fma dst=0x260 src1=0xa0 src2=0x40 n=20 src1_kind=2 dst_kind=0
utop cls=dma wait0=t2 count0=1
  dma.store sram=0x100 hbm=0x100 rows=1 row_bytes=464
halt
"""
"""ve.setf / ve.fma: every src1 kind (int8, binary32 words, uint8, int32) and dst kind (binary32, int8,
uint8, int32), a broadcast addend row, no addend, and R back to +0.0 in a new uTOp."""


def fma_inputs():
    """Bytes, binary32 addends (ties at k + 1/2 with the first R, special words) and int32 extremes."""
    rng = np.random.default_rng(23)
    addends = np.concatenate([rng.integers(-100, 100, 8) + 0.5, rng.normal(0, 30, 6),
                              [0.0, -0.0, 1e-45, np.inf, np.nan, 3.4e38]]).astype(np.float32)
    x = rng.integers(-(1 << 31), 1 << 31, 20)
    x[:6] = [-(1 << 31), (1 << 31) - 1, 0, 1, -1, (1 << 24) + 1]
    return {"A": rng.integers(-128, 128, (2, 20)).astype(np.int8), "W": addends.view(np.int32),
            "X": x.astype(np.int32)}


def test_fma_matches_the_golden_model_with_equal_cycles_on_both_backends():
    expected = assert_both_backends_match_the_golden_model(assemble(FMA_PROGRAM), fma_inputs())
    assert len(set(expected["Y"].flat)) > 10 and len(set(expected["U"].flat)) > 10


FMAV_PROGRAM = """
.config tiny
.footprint hbm=0x800 sram=0x400
.entry 0x600
.input A i8 2x20 offset=0x0
.input W i32 20 offset=0x40
.input X i32 20 offset=0xa0
.input P i32 2 offset=0xf0
.output T i32 2x20 offset=0x100 stride=80
.output Y i8 2x20 offset=0x1a0 stride=20
.output U i8 2x20 offset=0x1d0 stride=20
.output Z i32 20 offset=0x200
.output V i32 20 offset=0x260
.output M i32 2x20 offset=0x2c0 stride=80
utop cls=dma signal=t0
  dma.load sram=0x0 hbm=0x0 rows=1 row_bytes=248
utop cls=ve signal=t1 wait0=t0 count0=1
  ve.shape rows=2 dst_stride=80 src1_stride=20 src2_stride=4 src2_row=1
  ve.sub dst=0x100 src1=0x0 src2=0xf0 n=20 src1_i8=1 src2_i8=0 dst_i8=0
  ve.shape rows=2 dst_stride=20 src1_stride=20 src2_stride=4 src2_row=1
  ve.setf value=0x3f000010
  ve.fma dst=0x1a0 src1=0x0 src2=0x40 n=20 src1_kind=0 dst_kind=1
  ve.shape rows=2 dst_stride=20 src1_stride=20 src2_stride=0
  ve.setf value=0x3fc00000
  ve.fmav dst=0x1d0 src1=0x0 src2=0x40 n=20 src1_kind=1 dst_kind=2
  ve.shape rows=1 src2_row=1
  ve.fmav dst=0x200 src1=0xa0 src2=0x48 n=20 src1_kind=2 dst_kind=3
  ve.shape rows=2 dst_stride=80 src1_stride=0 src2_stride=20 src2_row=1
  ve.max dst=0x2c0 src1=0xa0 src2=0x0 n=20 src1_i8=0 src2_i8=1 dst_i8=0
utop cls=ve signal=t2 wait0=t1 count0=1
  ve.fma dst=0x260 src1=0xa0 src2=0x40 n=20 src1_kind=2 dst_kind=0
utop cls=dma wait0=t2 count0=1
  dma.store sram=0x100 hbm=0x100 rows=1 row_bytes=608
halt
"""
"""ve.shape.src2_row (an int32 and an int8 element per row for ve.sub and ve.max, a per-row addend for
ve.fma, one scalar multiplier for ve.fmav) and ve.fmav with per-element multipliers broadcast down the
rows; a new uTOp starts with src2_row 0 (its ve.fma reads a whole addend row)."""


def fmav_inputs():
    """Bytes, binary32 multipliers/addends (ties with the R above, special words), int32 extremes and
    two per-row int32 words."""
    inputs = fma_inputs()
    inputs["P"] = np.array([-100, 1 << 30], dtype=np.int32)
    return inputs


def test_fmav_and_src2_row_match_the_golden_model_with_equal_cycles_on_both_backends():
    expected = assert_both_backends_match_the_golden_model(assemble(FMAV_PROGRAM), fmav_inputs())
    assert len(set(expected["Y"].flat)) > 10 and len(set(expected["V"].flat)) > 10
    a = fmav_inputs()["A"].astype(np.int64)
    assert np.array_equal(expected["T"], a - np.array([[-100], [1 << 30]]))


def test_softmax_and_layernorm_kernels_match_the_golden_model_with_equal_cycles_on_both_backends():
    """tcloud.firmware.nonlinear on both RTL backends: rows of 10 codes (not a whole number of words or
    lanes), one of them constant."""
    from tcloud.firmware.nonlinear import layernorm_reference, layernorm_rows, softmax_reference, softmax_rows

    rng = np.random.default_rng(8)
    q = rng.integers(-128, 128, (3, 10)).astype(np.int8)
    q[1] = -7
    softmax = assert_both_backends_match_the_golden_model(softmax_rows("tiny", 3, 10, 0.1, 1 / 256, -128), {"X": q})
    assert np.array_equal(softmax["Y"], softmax_reference(q, 0.1, 1 / 256, -128))
    gamma, beta = rng.normal(1, 0.3, 10), rng.normal(0, 0.3, 10)
    norm = assert_both_backends_match_the_golden_model(layernorm_rows("tiny", 3, 10, 0.05, gamma, beta, 1e-5, 0.02, 3),
                                                       {"X": q})
    assert np.array_equal(norm["Y"], layernorm_reference(q, 0.05, gamma, beta, 1e-5, 0.02, 3))


GATHER_PROGRAM = """
.config tiny
.footprint hbm=0x800 sram=0x400
.entry 0x400
.input T i8 16x20 offset=0x0
.input I i32 12 offset=0x180
.output Y i32 12x8 offset=0x200
utop cls=dma signal=t0
  dma.load sram=0x0 hbm=0x180 rows=1 row_bytes=48
utop cls=dma signal=t1 wait0=t0 count0=1
  dma.gather sram=0x40 hbm=0x0 idx=0x0 rows=12 row_bytes=20 sram_stride=32
  dma.gather sram=0x154 hbm=0x8 idx=0x10 rows=4 row_bytes=8 sram_stride=32
utop cls=dma wait0=t1 count0=1
  dma.store sram=0x40 hbm=0x200 rows=1 row_bytes=384
halt
"""


def test_gather_matches_the_golden_model_with_equal_cycles_on_both_backends():
    """Embedding lookups of several shapes (rows of one beat and several, partial last beats, repeated and
    edge indices, blocks double-buffered through a small scratchpad), and two gathers in one uTOp with a
    destination stride wider than the row and a table starting mid-row."""
    rng = np.random.default_rng(31)
    for table_rows, row_bytes, count, sram_bytes in ((9, 4, 5, 0x400), (16, 12, 23, 0x100), (40, 36, 30, 0x400)):
        image = embedding_lookup("tiny", table_rows, row_bytes, count, sram_bytes=sram_bytes)
        table = rng.integers(-128, 128, (table_rows, row_bytes), dtype=np.int8)
        indices = rng.integers(0, table_rows, count).astype(np.int32)
        indices[:3] = [table_rows - 1, 0, table_rows - 1]
        expected = assert_both_backends_match_the_golden_model(image, {"T": table, "I": indices})
        assert np.array_equal(expected["Y"], gather_reference(table, indices))
    table = rng.integers(-128, 128, (16, 20), dtype=np.int8)
    indices = rng.integers(0, 16, 12).astype(np.int32)
    expected = assert_both_backends_match_the_golden_model(assemble(GATHER_PROGRAM), {"T": table, "I": indices})
    rows = expected["Y"].view(np.uint8).reshape(12, 32)
    assert np.array_equal(rows[:, :20], table.view(np.uint8)[indices])
    flat = table.view(np.uint8).reshape(-1)
    assert [rows[8 + r, 20:28].tolist() for r in range(4)] == [flat[8 + 8 * i:16 + 8 * i].tolist()
                                                               for i in indices[4:8]]


def test_a_racing_rewrite_of_the_indices_never_reads_outside_the_window(device):
    """A tenant's own unsynchronised VE uTOp rewrites the last index of a running gather to the first row
    past the HBM window, where another tenant's secret lies, at a range of moments: before the first
    pass reads it (HBM_BOUNDS, nothing copied), between the passes (HBM_BOUNDS from the second pass's
    check, the rows before it copied) or after both (the old row). The secret is never read."""
    count, bad = 200, 0x1000 // 16
    secret = bytes(range(200, 216))
    outcomes = set()
    for delay in range(1, 60, 6):
        racer = [Instr("ve.shape", rows=delay), Instr("ve.add", dst=0xE00, src1=0xE00, src2=0xE00, n=16),
                 Instr("ve.shape", rows=1), Instr("ve.fill", dst=4 * (count - 1), n=1, value=bad)]
        program = (utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=count, value=3)], signal=1)
                   + utop(EngineClass.DMA, [Instr("dma.gather", sram=0xC00, hbm=0, idx=0, rows=count, row_bytes=16)],
                          wait0=0, count0=1, signal=2)
                   + utop(EngineClass.VE, racer)
                   + utop(EngineClass.DMA, [Instr("dma.store", sram=0xC00, hbm=0x700, rows=1, row_bytes=16)],
                          wait0=1, count0=1))
        device.write_hbm(0x4000, bytes(range(256)) * 4)
        device.write_hbm(0x5000, secret)
        start_tenant(device, 1, program, hbm_base=0x4000, sram_size=0x1000)
        read_before = device.context(1).counters["hbm_bytes_read"]
        assert device.run(max_cycles=200_000)
        info = device.context(1)
        copied = info.counters["hbm_bytes_read"] - read_before
        if info.status == ContextStatus.DONE:
            assert device.read_hbm(0x4700, 16) == bytes(range(48, 64)), delay  # row 3, as the golden model
            outcomes.add("after both passes")
        else:
            assert (info.fault, copied) in ((FaultCode.HBM_BOUNDS, 0), (FaultCode.HBM_BOUNDS, 16 * (count - 1)))
            outcomes.add("between the passes" if copied else "before the first pass")
    assert outcomes == {"before the first pass", "between the passes", "after both passes"}
