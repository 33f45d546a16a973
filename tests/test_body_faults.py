"""The faults a uTOp body takes whatever the data (:mod:`tcloud.isa.body_faults`) against the golden
model: random bodies of every body instruction in random small windows fault at the same instruction
with the same code and detail, or run with the same accesses."""

import os

import numpy as np
import pytest

from tcloud.isa import EngineClass, Instr, Machine, get_config
from tcloud.isa.body_faults import utop_body_fault, BodyState
from tcloud.isa.cost import utop_units
from tcloud.isa.errors import EncodingError
from tcloud.isa.table import BY_MNEMONIC, INSTRUCTIONS, INSTRUCTION_BYTES, ContextStatus, FaultCode

CONFIG = get_config("small")
CASES = 600 if os.environ.get("CI") else 3000
BODY = {cls: [spec for spec in INSTRUCTIONS if spec.engine == cls] for cls in (EngineClass.DMA, EngineClass.ME,
                                                                                EngineClass.VE)}
ADDRESSES = {"sram", "hbm", "a", "w", "out", "dst", "src", "src1", "src2", "idx"}
COUNTS = {"rows", "row_bytes", "m", "k", "n", "len"}
COST_MAX = BY_MNEMONIC["utop"].field("cost").max_value
CODE_BYTES = 1024
"""The code sits past the data the test addresses, at the end of the HBM window."""


def _value(rng, spec, field, sizes):
    if field.name in ADDRESSES:
        space = "hbm" if field.name == "hbm" else "sram"
        high = sizes[space] + 64
    elif field.name in COUNTS:
        high = 40 if rng.random() < 0.9 else field.max_value
    elif field.name.endswith("stride"):
        high = 256 if rng.random() < 0.9 else field.max_value
    else:
        return int(rng.integers(field.min_value, field.max_value + 1))
    value = int(rng.integers(field.min_value, min(high, field.max_value) + 1))
    return max(field.min_value, value - value % field.scale)


def _instruction(rng, spec, sizes):
    while True:
        try:
            return Instr(spec.mnemonic, **{f.name: _value(rng, spec, f, sizes) for f in spec.fields})
        except EncodingError:
            continue


def _case(rng):
    sizes = {"sram": 4 * int(rng.integers(4, 1024)), "hbm": 4 * int(rng.integers(4, 1024))}
    cls = [EngineClass.DMA, EngineClass.ME, EngineClass.VE][rng.integers(3)]
    body = [_instruction(rng, BODY[cls][rng.integers(len(BODY[cls]))], sizes) for _ in range(rng.integers(1, 6))]
    if cls == EngineClass.ME and rng.random() < 0.7:
        body.insert(0, _instruction(rng, BODY[cls][[s.mnemonic for s in BODY[cls]].index("me.loadw")], sizes))
    cost = 0 if rng.random() < 0.6 else int(rng.integers(1, min(2 * utop_units(body, CONFIG) + 2, COST_MAX)))
    header = Instr("utop", cls=int(cls), len=len(body), cost=cost)
    return header, body, sizes


def _golden(header, body, sizes):
    machine = Machine(CONFIG, trace=True)
    entry, code = _load(machine.host, lambda at, data: machine.hbm.__setitem__(slice(at, at + len(data)),
                                                                              np.frombuffer(data, dtype=np.uint8)),
                        header, body, sizes)
    machine.run(max_steps=4)
    return machine, entry, machine.hbm[entry:entry + len(code)].tobytes() == code


def _load(host, write, header, body, sizes):
    """Set up context 0's windows, write the uTOp and a halt at the end of its HBM window and start it."""
    hbm_size = sizes["hbm"] + CODE_BYTES
    host(Instr("ctx.hbm", ctx=0, base=0, size=hbm_size))
    host(Instr("ctx.sram", ctx=0, base=0, size=sizes["sram"]))
    code = b"".join(i.encode() for i in [header, *body, Instr("halt")])
    entry = hbm_size - CODE_BYTES
    write(entry, code)
    host(Instr("ctx.start", ctx=0, pc=entry))
    return entry, code


def test_body_faults_agree_with_the_golden_model():
    rng = np.random.default_rng(int(os.environ.get("TCLOUD_SEED", 0)))
    seen = {}
    for case in range(CASES):
        header, body, sizes = _case(rng)
        machine, entry, code_intact = _golden(header, body, sizes)
        if not code_intact:  # a store over the uTOp's own later instructions
            continue
        ctx = machine.contexts[0]
        static = utop_body_fault(CONFIG, header, body, sizes["sram"], sizes["hbm"] + CODE_BYTES)
        where = f"case {case}: {header} {body} windows {sizes}"
        if ctx.status == ContextStatus.FAULTED and ctx.fault_detail.startswith("dma.gather index"):
            index = (ctx.fault_pc - entry) // INSTRUCTION_BYTES - 1
            assert static is None or static[1] > index, where  # the gathered rows depend on data
            seen["gather index"] = seen.get("gather index", 0) + 1
            continue
        if ctx.status == ContextStatus.FAULTED:
            assert static == (ctx.fault, (ctx.fault_pc - entry) // INSTRUCTION_BYTES - 1, ctx.fault_detail), where
            seen[ctx.fault.name] = seen.get(ctx.fault.name, 0) + 1
            continue
        assert ctx.status == ContextStatus.DONE and static is None, where
        seen["DONE"] = seen.get("DONE", 0) + 1
        if not any(i.mnemonic == "dma.gather" for i in body):  # a gather's HBM rows depend on its indices
            state = BodyState(CONFIG, header["cost"])
            assert [a for i in body for a in state.accesses(i)] == list(machine.trace[0].accesses), where
    for outcome in ("DONE", "SRAM_BOUNDS", "HBM_BOUNDS", "COST_EXCEEDED", "ILLEGAL_FIELD", "ME_STATE", "VE_STATE"):
        assert seen.get(outcome, 0) >= 3, (outcome, seen)


@pytest.mark.parametrize("mnemonic", ["me.matmul", "ve.lut"])
def test_state_faults_name_the_missing_instruction(mnemonic):
    spec = next(s for s in INSTRUCTIONS if s.mnemonic == mnemonic)
    instr = _instruction(np.random.default_rng(0), spec, {"sram": 4096, "hbm": 4096})
    header = Instr("utop", cls=int(spec.engine), len=1)
    code, index, detail = utop_body_fault(CONFIG, header, [instr], 1 << 20, 1 << 20)
    assert code in (FaultCode.ME_STATE, FaultCode.VE_STATE) and index == 0 and "before" in detail


def test_a_gather_index_outside_the_window_is_left_to_the_data():
    header = Instr("utop", cls=int(EngineClass.DMA), len=1)
    gather = Instr("dma.gather", sram=64, idx=0, hbm=1024 - 16, rows=2, row_bytes=32, sram_stride=32)
    machine, entry, _ = _golden(header, [gather], {"sram": 256, "hbm": 1024 - CODE_BYTES})
    assert machine.contexts[0].fault == FaultCode.HBM_BOUNDS  # index 0 selects [0x3f0, 0x410)
    assert utop_body_fault(CONFIG, header, [gather], 256, 1024) is None


def test_timing_only_perf_runs_fault_as_the_golden_model_on_random_bodies():
    """Random bodies (some followed by a word of another class) on the perf backend without data, both event
    loops: status, fault code, PC and detail as in the golden model (gather index faults aside)."""
    from tcloud.runtime.backends.perf import PerfDevice

    rng = np.random.default_rng(int(os.environ.get("TCLOUD_SEED", 0)) + 1)
    for case in range(CASES // 10):
        header, body, sizes = _case(rng)
        if rng.random() < 0.3:
            other = next(cls for cls in BODY if cls != header["cls"])
            body = [*body, _instruction(rng, BODY[other][0], sizes)]
            header = Instr("utop", **{**header.values, "len": len(body)})
        machine, _, code_intact = _golden(header, body, sizes)
        expected = machine.contexts[0]
        if not code_intact or expected.fault_detail.startswith("dma.gather index"):
            continue
        for native in (False, True):
            device = PerfDevice(CONFIG, data=False, native=native)
            _load(device.host, device.write_hbm, header, body, sizes)
            assert device.run()
            info = device.context(0)
            assert (info.status, info.fault, info.fault_pc, info.detail) == (
                expected.status, expected.fault, expected.fault_pc, expected.fault_detail), (case, native, header, body)


def test_the_same_program_faults_by_the_window_it_runs_in():
    """One process, one program, scratchpad windows that alternate: the fault follows the window."""
    from tcloud.runtime.backends.perf import PerfDevice

    header = Instr("utop", cls=int(EngineClass.VE), len=1)
    body = [Instr("ve.fill", dst=0x3F0, n=8, value=1, dst_i8=1)]
    for sram, fault in ((0x400, FaultCode.NONE), (0x3F4, FaultCode.SRAM_BOUNDS), (0x400, FaultCode.NONE)):
        for native in (False, True):
            device = PerfDevice(CONFIG, data=False, native=native)
            _load(device.host, device.write_hbm, header, body, {"sram": sram, "hbm": 0x400})
            assert device.run(100_000)
            assert device.context(0).fault == fault, (sram, native)
