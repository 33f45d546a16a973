"""Planted cases for the cocotb bench's functional coverage (:mod:`tcloud.verif.cocotb_pnpu`).

The constrained-random cases rarely fault and never meet a host that kills a context, so the fault
bins of :mod:`tcloud.verif.functional_coverage` are reached on purpose here, not by chance:

* :func:`fault_cases` gives a program running every tenant opcode to completion (for the opcode and
  ``none`` bins under every policy) and, for every :class:`~tcloud.isa.FaultCode` the pNPU can raise, at least
  one :class:`Planted` program built to raise it (the programs of ``tests/test_rtl_pnpu.py``'s
  fault table and of :mod:`tcloud.verif.attacks`, sized for any configuration), plus the two faults
  only the host can cause: ``KILLED`` (``ctx.kill`` while the context waits for a long uTOp) and
  ``WATCHDOG`` (a ``ctx.budget`` shorter than that uTOp);
* :func:`token_program` runs a uTOp of every engine class with every token pattern of
  :data:`~tcloud.verif.functional_coverage.TOKEN_PATTERNS`, and DMA loads and stores for the HBM
  backpressure levels.

What a case is built to raise is only its name; the bench scores it against the golden model (fault
code and fault PC, :func:`run_golden`), which decides what is expected.
"""

from dataclasses import dataclass, field

import numpy as np

from tcloud.isa import (EngineClass, FaultCode, Instr, Policy, ProgramImage, Segment, Symbol, encode_stream,
                        get_config)
from tcloud.isa.cost import utop_units
from tcloud.isa.table import INSTRUCTION_BYTES, NUM_TOKENS, TOKEN_MAX_COUNT
from tcloud.runtime import Placement, load_image

HBM_BYTES = 0x400
"""HBM window of a planted program (code and data): small, so the load's scrub is short."""
SRAM_BYTES = 0x400
"""Scratchpad window of a planted program."""
WATCHDOG_BUDGET = 800
"""``ctx.budget`` of the watchdog case, in cycles: enough for the front end to dispatch the long uTOp
and reach the fence behind it (a few HBM round trips), far less than the uTOp runs."""


@dataclass(frozen=True)
class Planted:
    """One planted case.

    Attributes
    ----------
    name : str
    fault : FaultCode
        What the case is built to raise (``NONE`` for a program that completes).
    image : ProgramImage
    masks : dict
        ``ctx.engines`` masks other than "every engine" (``{"ve_mask": 0}``).
    host : str
        What the host does while the context runs: ``""`` (nothing), ``"kill"`` (``ctx.kill`` once
        the context's next top-level instruction is at ``stop_at``) or ``"watchdog"`` (a
        ``ctx.budget`` of :data:`WATCHDOG_BUDGET` before the start).
    stop_at : int
        Kill and watchdog: the context-relative PC at which the context waits for its long uTOp,
        where the golden model is stopped too (it is untimed; one top-level step runs the uTOp).
    """

    name: str
    fault: FaultCode
    image: ProgramImage
    masks: dict = field(default_factory=dict)
    host: str = ""
    stop_at: int = 0


def utop(cls, body, **header):
    """A uTOp header followed by its body (a list of :class:`~tcloud.isa.Instr`)."""
    return [Instr("utop", cls=int(cls), len=len(body), **header), *body]


def image(config, program, *, halt=True, hbm_bytes=HBM_BYTES, sram_bytes=SRAM_BYTES, symbols=(), segments=()):
    """A program image with its code at offset 0 of an HBM window of ``hbm_bytes`` or its code's size
    if larger (exactly its code when ``hbm_bytes`` is ``None``); ``program`` is a list of
    instructions (``halt`` appended unless ``halt`` is false) or raw code bytes."""
    code = program if isinstance(program, bytes) else encode_stream(program + ([Instr("halt")] if halt else []))
    return ProgramImage.for_config(config, code, entry=0, hbm_bytes=max(hbm_bytes or 0, len(code)),
                                   sram_bytes=sram_bytes, symbols=list(symbols), segments=list(segments))


def long_utop(config, cls, **header):
    """A uTOp of ``cls`` that runs for tens of thousands of cycles (its instructions each for
    thousands), touching no HBM but what it reads: aborting it leaves the HBM as the golden model
    leaves it."""
    if cls == EngineClass.ME:
        k, n = config.me_rows, config.me_cols
        body = [Instr("me.loadw", w=0, k=k, n=n, w_stride=n)]
        body += [Instr("me.matmul", a=0x100, out=0x200, m=4095, a_stride=0, out_stride=0, acc=1)] * 8
    elif cls == EngineClass.VE:
        body = [Instr("ve.shape", rows=4095, dst_stride=0, src1_stride=0, src2_stride=0)]
        body += [Instr("ve.add", dst=0, src1=0, src2=0, n=64)] * 8  # 256 bytes
    else:
        body = [Instr("dma.load", sram=0, hbm=0, rows=4095, row_bytes=0x400, hbm_stride=0, sram_stride=0)] * 8
    return utop(cls, body, **header)


def every_opcode(config):
    """A program that runs every tenant opcode and completes (one ``ve.*`` of each kind, on bytes a DMA
    load brought in, each to its own destination, and a gather of rows of those bytes, stored to the
    output ``Y`` behind a fence)."""
    data, out = 0x400, 0x480  # past the code
    binary = [Instr(op, dst=0x100 + 0x20 * i, src1=0, src2=0x20, n=8, src1_i8=1, src2_i8=1)
              for i, op in enumerate(("ve.add", "ve.sub", "ve.mul", "ve.max", "ve.min"))]
    unary = [Instr("ve.relu", dst=0x1A0, src=0, n=8, src_i8=1), Instr("ve.copy", dst=0x1C0, src=0x20, n=8, src_i8=1),
             Instr("ve.requant", dst=0x1E0, src=0, n=8, mult=3 << 20, shift=24, zp=-2),
             Instr("ve.redsum", dst=0x200, src=0, n=32, src_i8=1), Instr("ve.redmax", dst=0x220, src=0, n=32, src_i8=1),
             Instr("ve.fill", dst=0x240, n=8, value=-7),
             Instr("ve.lutload", src=0x100), Instr("ve.lut", dst=0x260, src=0, n=8),  # table: the results above
             Instr("ve.requantf", dst=0x280, src1=0, src2=0x20, n=8),  # scale words: the loaded bytes
             Instr("ve.setf", value=0x3FC00000),  # 1.5
             Instr("ve.fma", dst=0x290, src1=0, src2=0, n=8, src1_kind=0, src2_zero=1, dst_kind=1),
             Instr("ve.shape", rows=1, src2_row=1),  # multiplier: the one word at 0x20, in every lane
             Instr("ve.fmav", dst=0x298, src1=0, src2=0x20, n=8, src1_kind=0, dst_kind=1),
             Instr("ve.fill", dst=0x2A0, n=1, value=3), Instr("ve.fill", dst=0x2A4, n=1, value=1)]  # gather indices
    program = utop(EngineClass.DMA, [Instr("dma.load", sram=0, hbm=data, rows=1, row_bytes=0x40)], signal=1)
    program += utop(EngineClass.VE, [Instr("ve.shape", rows=1, dst_stride=0, src1_stride=0, src2_stride=0)]
                    + binary + unary, wait0=0, count0=1, signal=2)
    program += utop(EngineClass.ME, [Instr("me.loadw", w=0, k=2, n=2, w_stride=4),
                                     Instr("me.matmul", a=0x20, out=0x300, m=2, a_stride=4, out_stride=8)],
                    wait0=1, count0=1)
    program += [Instr("nop"), Instr("fence")]
    program += utop(EngineClass.DMA, [Instr("dma.gather", sram=0x2B0, hbm=data, idx=0x2A0, rows=2, row_bytes=0x10,
                                                 sram_stride=0x10),
                                      Instr("dma.store", sram=0x100, hbm=out, rows=1, row_bytes=0x1D0)])
    return image(config, program, hbm_bytes=out + 0x1D0, segments=[Segment(data, bytes(range(100, 164)))],
                 symbols=[Symbol("Y", "output", "i32", (0x74,), out, 0x1D0)])


def fault_cases(config, long_class=EngineClass.ME):
    """The planted cases, at least one per fault code the pNPU raises (see
    :data:`~tcloud.verif.functional_coverage.FAULTS`); ``long_class`` is the engine class of the
    long uTOp the kill and watchdog cases stop (rotate it to stop every engine class).

    Returns
    -------
    list of Planted
        The cases that fault at once, then ``KILLED`` and ``WATCHDOG`` (long: run them where no
        other tenant holds an engine of their class, or the uTOp waits and the PC is another).
    """
    config = get_config(config)
    ve = lambda dst=0, n=1, **header: utop(EngineClass.VE, [Instr("ve.fill", dst=dst, n=n, value=3)], **header)
    fills = [Instr("ve.fill", dst=16 * i, n=1, value=i) for i in range(3)]
    halt = Instr("halt").encode()
    cases = [
        Planted("every tenant opcode, completing", FaultCode.NONE, every_opcode(config)),
        Planted("illegal opcode", FaultCode.ILLEGAL_OPCODE,
                image(config, encode_stream(ve()) + bytes([0xEE]) + bytes(15) + halt)),
        Planted("reserved bits", FaultCode.ILLEGAL_FIELD,
                image(config, encode_stream(ve()) + halt[:15] + bytes([halt[15] | 0x80]) + halt)),
        Planted("weight tile larger than the array", FaultCode.ILLEGAL_FIELD,
                image(config, utop(EngineClass.ME, [Instr("me.loadw", w=0, k=config.me_rows + 1, n=1, w_stride=4)]))),
        Planted("tenant runs a ctx.* command", FaultCode.PRIVILEGED, image(config, ve() + [Instr("ctx.scrub", ctx=0)])),
        Planted("body instruction at the top level", FaultCode.WRONG_CLASS,
                image(config, [Instr("nop"), Instr("ve.fill", dst=0, n=1)])),
        Planted("VE instruction in a DMA uTOp", FaultCode.WRONG_CLASS,
                image(config, utop(EngineClass.DMA, [Instr("ve.fill", dst=0, n=1)]))),
        Planted("fill past the scratchpad window", FaultCode.SRAM_BOUNDS,
                image(config, ve() + ve(dst=SRAM_BYTES - 8, n=4))),
        Planted("DMA load into a row past the scratchpad window", FaultCode.SRAM_BOUNDS,
                image(config, utop(EngineClass.DMA, [Instr("dma.load", sram=SRAM_BYTES - 0x20, hbm=0, rows=2,
                                                           row_bytes=0x20, sram_stride=0x20)]))),
        Planted("DMA load from past the HBM window", FaultCode.HBM_BOUNDS,
                image(config, utop(EngineClass.DMA, [Instr("dma.load", sram=0, hbm=HBM_BYTES - 4, rows=1,
                                                           row_bytes=8)]))),
        Planted("DMA store of rows reaching past the HBM window", FaultCode.HBM_BOUNDS,
                image(config, ve(n=64, signal=1)
                      + utop(EngineClass.DMA, [Instr("dma.store", sram=0, hbm=HBM_BYTES - 0x100, rows=9, row_bytes=0x20,
                                                     hbm_stride=0x20)], wait0=0, count0=1))),
        Planted("dma.gather of a row past the HBM window", FaultCode.HBM_BOUNDS,
                image(config, utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=1, value=HBM_BYTES // 16)], signal=1)
                      + utop(EngineClass.DMA, [Instr("dma.gather", sram=0x40, hbm=0, idx=0, rows=1, row_bytes=16)],
                             wait0=0, count0=1))),
        Planted("program runs off the end of its window", FaultCode.FETCH_BOUNDS,
                image(config, ve() + [Instr("nop")] * 3, halt=False, hbm_bytes=None)),
        Planted("uTOp waits for a token nothing signals", FaultCode.TOKEN_DEADLOCK,
                image(config, ve(signal=1) + ve(wait0=0, count0=1) + ve(wait0=3, count0=1))),
        Planted(f"{TOKEN_MAX_COUNT + 1} signals of one token", FaultCode.TOKEN_OVERFLOW,
                image(config, ve(signal=1 << (NUM_TOKENS - 1)) * (TOKEN_MAX_COUNT + 1))),
        Planted("me.matmul without me.loadw", FaultCode.ME_STATE,
                image(config, utop(EngineClass.ME, [Instr("me.matmul", a=0, out=0x40, m=1)]))),
        Planted("ve.lut without ve.lutload", FaultCode.VE_STATE,
                image(config, utop(EngineClass.VE, [Instr("ve.lut", dst=0x40, src=0, n=1)]))),
        Planted("VE uTOp of a context that owns no VE", FaultCode.NO_ENGINE,
                image(config, utop(EngineClass.DMA, [Instr("dma.load", sram=0, hbm=0, rows=1, row_bytes=16)])
                      + ve()), masks={"ve_mask": 0}),
        Planted("uTOp runs past its declared cost", FaultCode.COST_EXCEEDED,
                image(config, utop(EngineClass.VE, fills, cost=utop_units(fills[:2], config)))),
    ]
    signal = 1 << (NUM_TOKENS - 1)
    waiting = long_utop(config, long_class, signal=signal)
    kill = waiting + ve(wait0=NUM_TOKENS - 1, count0=1)
    cases.append(Planted(f"ctx.kill while the next uTOp waits for a long {long_class.name} uTOp", FaultCode.KILLED,
                         image(config, kill), host="kill", stop_at=INSTRUCTION_BYTES * len(waiting)))
    cases.append(Planted(f"watchdog expires during a long {long_class.name} uTOp", FaultCode.WATCHDOG,
                         image(config, waiting + [Instr("fence")] + ve()), host="watchdog",
                         stop_at=INSTRUCTION_BYTES * len(waiting)))
    return cases


def run_golden(case, device, placement=Placement(), policy=Policy.HARVEST):
    """Run ``case`` on ``device``, a fresh golden-model device (a
    :class:`~tcloud.runtime.FunctionalDevice`), under ``policy``, and return it. Kill and watchdog:
    one top-level step (the long uTOp), then ``ctx.kill``, so the context stops at ``case.stop_at``
    where the pNPU's waits. The golden model is untimed and has no watchdog (it keeps ``ctx.budget``
    but counts no cycles): for the watchdog case its ``KILLED`` is made a ``WATCHDOG``, the fault PC
    is still its own."""
    device.set_policy(policy)
    load_image(device, case.image, {}, placement)
    if not case.host:
        device.run()
        return device
    device.run(max_cycles=1)
    device.host(Instr("ctx.kill", ctx=placement.context))
    if case.host == "watchdog":
        device.machine.contexts[placement.context].fault = FaultCode.WATCHDOG
    return device


TOKEN_INPUT, TOKEN_OUTPUT = 0x600, 0x700
"""HBM offsets of :func:`token_program`'s input and output (after its code)."""


def token_program(config, wait_slots=3):
    """A program with a uTOp of every engine class for every token pattern (0 .. ``wait_slots``
    distinct tokens, and with one of them needing two signals), each after a VE uTOp signalling the
    tokens it waits on, so none deadlocks; its DMA uTOps alternately load the input and store it to
    the output (16 rows each, several HBM requests). Nothing races: the stored scratchpad rows are
    written once, behind a fence; the others are written with the same values whatever the order.

    Returns
    -------
    (ProgramImage, dict)
        The image and its inputs.
    """
    config = get_config(config)
    rows, row_bytes = 16, 4
    tokens = (1 << wait_slots) - 1
    producer = utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=4, value=7)], signal=tokens)
    program = utop(EngineClass.DMA, [Instr("dma.load", sram=0x200, hbm=TOKEN_INPUT, rows=1,
                                           row_bytes=rows * row_bytes)])
    program += [Instr("fence")] + producer * 2
    bodies = {EngineClass.VE: [[Instr("ve.fill", dst=0, n=4, value=7)]],
              EngineClass.ME: [[Instr("me.loadw", w=0x100, k=1, n=1, w_stride=4)]],
              EngineClass.DMA: [[Instr("dma.load", sram=0x300, hbm=TOKEN_INPUT, rows=rows, row_bytes=row_bytes,
                                       hbm_stride=row_bytes, sram_stride=row_bytes)],
                                [Instr("dma.store", sram=0x200, hbm=TOKEN_OUTPUT, rows=rows, row_bytes=row_bytes,
                                       hbm_stride=row_bytes, sram_stride=row_bytes)]]}
    for cls in (EngineClass.DMA, EngineClass.ME, EngineClass.VE):
        for i, (n, multi) in enumerate((n, multi) for n in range(wait_slots + 1) for multi in (False, True)
                                       if n or not multi):
            header = {f"{key}{slot}": value for slot in range(n)
                      for key, value in (("wait", slot), ("count", 2 if multi and slot == 0 else 1))}
            program += producer + utop(cls, bodies[cls][i % len(bodies[cls])], signal=tokens, **header)
    symbols = [Symbol("X", "input", "i8", (rows * row_bytes,), TOKEN_INPUT, rows * row_bytes),
               Symbol("Y", "output", "i8", (rows * row_bytes,), TOKEN_OUTPUT, rows * row_bytes)]
    inputs = {"X": np.arange(rows * row_bytes, dtype=np.uint8).view(np.int8)}
    return image(config, program, hbm_bytes=TOKEN_OUTPUT + rows * row_bytes, symbols=symbols), inputs
