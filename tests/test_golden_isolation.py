"""Isolation in the golden model: an attacker faults alone; the victim's results are bit-exact."""

import numpy as np
import pytest

from tcloud.firmware import gemm
from tcloud.isa import ContextStatus, EngineClass, FaultCode, HostCommandError, Instr, Machine, encode_stream
from tcloud.runtime import FunctionalDevice, Placement, load_image, read_outputs

from conftest import utop

VICTIM = Placement(context=0, hbm_base=0x0, sram_base=0x0)
ATTACKER = Placement(context=1, hbm_base=0x100000, sram_base=0x2000)
ATTACKER_HBM, ATTACKER_SRAM = 0x10000, 0x1000


def victim_run(attacker_program=None):
    """Run a GEMM tenant in context 0, optionally next to an attacker in context 1."""
    device = FunctionalDevice("tiny")
    rng = np.random.default_rng(7)
    a = rng.integers(-128, 128, (9, 13), dtype=np.int8)
    b = rng.integers(-128, 128, (13, 6), dtype=np.int8)
    image = gemm("tiny", 9, 13, 6)
    assert image.sram_bytes <= ATTACKER.sram_base
    load_image(device, image, {"A": a, "B": b}, VICTIM)
    machine = device.machine
    if attacker_program is not None:
        machine.host(Instr("ctx.hbm", ctx=1, base=ATTACKER.hbm_base, size=ATTACKER_HBM))
        machine.host(Instr("ctx.sram", ctx=1, base=ATTACKER.sram_base, size=ATTACKER_SRAM))
        code = encode_stream(attacker_program) if isinstance(attacker_program, list) else attacker_program
        machine.hbm[ATTACKER.hbm_base + 0x8000:ATTACKER.hbm_base + 0x8000 + len(code)] = np.frombuffer(code, np.uint8)
        machine.host(Instr("ctx.start", ctx=1, pc=0x8000))
    machine.run()
    out = read_outputs(device, image, VICTIM)["C"]
    assert np.array_equal(out, a.astype(np.int32) @ b.astype(np.int32))
    return machine, image


def window_bytes(machine, image):
    return (machine.hbm[:image.hbm_bytes].copy(), machine.sram[:image.sram_bytes].copy())


def outside_windows_is_zero(machine, image):
    hbm = machine.hbm.copy()
    hbm[:image.hbm_bytes] = 0
    hbm[ATTACKER.hbm_base:ATTACKER.hbm_base + ATTACKER_HBM] = 0
    sram = machine.sram.copy()
    sram[:image.sram_bytes] = 0
    sram[ATTACKER.sram_base:ATTACKER.sram_base + ATTACKER_SRAM] = 0
    return not hbm.any() and not sram.any()


def dma(mnemonic, **fields):
    return utop(EngineClass.DMA, [Instr(mnemonic, **fields)])


ATTACKS = {
    "dma_read_past_hbm_window": (dma("dma.load", sram=0, hbm=ATTACKER_HBM - 4, rows=1, row_bytes=8),
                                 FaultCode.HBM_BOUNDS),
    "dma_write_past_hbm_window": (dma("dma.store", sram=0, hbm=0xC000, rows=100, row_bytes=64, hbm_stride=256),
                                  FaultCode.HBM_BOUNDS),
    "dma_write_into_victim_hbm": (dma("dma.store", sram=0, hbm=(1 << 32) - 0x100000, rows=1, row_bytes=4),
                                  FaultCode.HBM_BOUNDS),
    "scratchpad_overflow": (utop(EngineClass.VE, [Instr("ve.fill", dst=ATTACKER_SRAM - 8, n=4, value=-1)]),
                            FaultCode.SRAM_BOUNDS),
    "matmul_reads_past_sram": (utop(EngineClass.ME, [Instr("me.loadw", w=0, k=4, n=4),
                                                     Instr("me.matmul", a=ATTACKER_SRAM - 4, out=0, m=2, a_stride=16)]),
                               FaultCode.SRAM_BOUNDS),
    "illegal_opcode": (bytes([0xEE]) + bytes(15), FaultCode.ILLEGAL_OPCODE),
    "privileged_scrub_of_victim": ([Instr("ctx.scrub", ctx=0)], FaultCode.PRIVILEGED),
    "body_instruction_at_top_level": ([Instr("ve.fill", dst=0, n=1)], FaultCode.WRONG_CLASS),
    "wrong_class_in_utop": (utop(EngineClass.ME, [Instr("ve.fill", dst=0, n=1)]), FaultCode.WRONG_CLASS),
    "tile_larger_than_array": (utop(EngineClass.ME, [Instr("me.loadw", w=0, k=8, n=4)]), FaultCode.ILLEGAL_FIELD),
    "token_deadlock": (utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=1)], wait0=3, count0=1),
                       FaultCode.TOKEN_DEADLOCK),
    "runs_off_its_window": ([Instr("nop")] * 8, FaultCode.FETCH_BOUNDS),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacker_faults_alone_and_victim_is_bit_exact(name):
    program, code = ATTACKS[name]
    if isinstance(program, list) and name != "runs_off_its_window":
        program = program + [Instr("halt")]
    if name == "runs_off_its_window":
        program = [Instr("nop")] * ((ATTACKER_HBM - 0x8000) // 16)
    alone, image = victim_run()
    shared, _ = victim_run(program)
    attacker = shared.contexts[1]
    assert attacker.status == ContextStatus.FAULTED
    assert attacker.fault == code, attacker.fault_detail
    assert shared.contexts[0].status == ContextStatus.DONE
    for before, after in zip(window_bytes(alone, image), window_bytes(shared, image)):
        assert np.array_equal(before, after)
    assert outside_windows_is_zero(shared, image)


def test_fault_pc_points_at_the_faulting_body_instruction():
    program = utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=1), Instr("ve.fill", dst=0x10000, n=1)])
    machine, _ = victim_run(program + [Instr("halt")])
    assert machine.contexts[1].fault == FaultCode.SRAM_BOUNDS
    assert machine.contexts[1].fault_pc == 0x8000 + 2 * 16


def test_faulting_instruction_writes_nothing():
    program = utop(EngineClass.VE, [Instr("ve.fill", dst=ATTACKER_SRAM - 8, n=3, value=-1)])
    machine, _ = victim_run(program + [Instr("halt")])
    assert not machine.sram[ATTACKER.sram_base:ATTACKER.sram_base + ATTACKER_SRAM].any()


def test_token_overflow_faults():
    program = utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=1)], signal=1) * 256 + [Instr("halt")]
    machine, _ = victim_run(program)
    assert machine.contexts[1].fault == FaultCode.TOKEN_OVERFLOW


def test_kill_scrub_and_restart():
    machine = Machine("tiny")
    machine.host(Instr("ctx.hbm", ctx=1, base=0x1000, size=0x1000))
    machine.host(Instr("ctx.sram", ctx=1, base=0x100, size=0x100))
    machine.hbm[0x1000:0x1010] = np.frombuffer(Instr("nop").encode(), np.uint8)
    machine.sram[0x100:0x200] = 0xAB
    machine.hbm[0x1800:0x1900] = 0xCD
    machine.host(Instr("ctx.start", ctx=1, pc=0))
    with pytest.raises(HostCommandError, match="context 1 is running"):
        machine.host(Instr("ctx.scrub", ctx=1))
    machine.host(Instr("ctx.kill", ctx=1))
    assert machine.contexts[1].fault == FaultCode.KILLED
    machine.host(Instr("ctx.scrub", ctx=1))
    assert not machine.sram[0x100:0x200].any() and not machine.hbm[0x1000:0x2000].any()
    assert machine.sram[0xFF] == 0 and machine.sram.sum() == 0


@pytest.mark.parametrize("command, message", [
    (Instr("ctx.sram", ctx=0, base=0x3000, size=0x2000), r"exceeds the 0x4000-byte scratchpad"),
    (Instr("ctx.hbm", ctx=5, base=0, size=4), r"context 5 does not exist"),
    (Instr("ctx.engines", ctx=0, me_mask=0b10, ve_mask=1, dma_mask=1), r"me_mask=0x2 names engines beyond the 1"),
    (Instr("ctx.engines", ctx=0, me_mask=1, ve_mask=1, dma_mask=0b10), r"dma_mask=0x2 names engines beyond the 1"),
    (Instr("halt"), r"halt is not a host"),
])
def test_bad_host_commands_are_rejected(command, message):
    with pytest.raises(HostCommandError, match=message):
        Machine("tiny").host(command)
