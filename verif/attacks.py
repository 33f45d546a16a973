"""The attack suite: what a hostile tenant has tried against another, under every policy, on the
golden model and on the RTL.

Each :class:`Attack` runs on one pNPU next to a *victim* vNPU computing an int8 GEMM. The attacker
gets its own vNPU (the engines the victim does not own) and the public Python API: it writes
programs and program images, loads and runs them, and kills or destroys its own vNPU. An attack
*holds* when the attacker gets the refusal or fault it should (and, for the timed guarantees, within
their bounds), the victim's outputs are exact and its counters show exactly its own work.

Guarantees checked (issue 14's items and the classes that held before it):

* host loader: negative and out-of-window symbols and segments, mutating an image after load (1);
* harvesting: the owner gets its engine back within :func:`~tcloud.rtl.reclaim_bound` (2);
* watchdog and kill stop a long uTOp within :func:`~tcloud.rtl.abort_bound` (3, 4);
* starvation: a waiting uTOp runs within ``STARVATION`` plus the uTOps in flight under every
  policy (5);
* the golden model and the RTL agree on uTOps reading their own output region (6);
* address edges, privileged and illegal instructions, token deadlocks, declared-cost lies;
* gather indices crafted to read past the tenant's HBM window (past its end, before its start, wrapping
  the address arithmetic);
* leftover state (a new tenant on the old windows reads zeros), image and assembler fuzzing.

Timed guarantees need a cycle-accurate backend; on the golden model they are reported as not
applicable.

    python -m tcloud.verif.attacks                          # every attack x policy x backend
    python -m tcloud.verif.attacks --backend verilator --policy harvest --only kill_long_utop
"""

import argparse
import dataclasses
import random
import sys
import time
from dataclasses import dataclass

import numpy as np

from tcloud.firmware import gemm
from tcloud.firmware.gather import embedding_lookup, gather_reference
from tcloud.isa import (AsmError, EngineClass, FaultCode, ImageError, Instr, Policy, ProgramImage, Segment,
                        Symbol, assemble, encode_stream)
from tcloud.isa.cost import utop_units
from tcloud.rtl import abort_bound
from tcloud.isa.csr import HARVEST_COST_RESET, STARVATION_RESET
from tcloud.runtime import DeviceFault, HostAccessError
from tcloud.runtime.hypervisor import Hypervisor, VNPUSpec

CONFIG = "small"
BACKENDS = ("functional", "verilator")
POLICIES = tuple(p.name.lower() for p in Policy)
HBM_LATENCY = 8
VICTIM = VNPUSpec(mes=2, ves=1, sram_kib=96, hbm_mib=2)
ATTACKER = VNPUSpec(mes=2, ves=1, sram_kib=64, hbm_mib=2)
GEMM_SHAPE = (48, 64, 40)


class Broken(AssertionError):
    """A guarantee did not hold (the message says which and what was measured)."""


class NotApplicable(Exception):
    """The attack needs a cycle-accurate backend."""


@dataclass(frozen=True)
class Outcome:
    attack: str
    backend: str
    policy: str
    held: bool | None        # None: not applicable on this backend
    detail: str


def _utop(cls, body, **header):
    return [Instr("utop", cls=int(cls), len=len(body), **header), *body]


def _image(program, symbols=(), hbm_bytes=0x1000):
    code = program if isinstance(program, bytes) else encode_stream(program + [Instr("halt")])
    return ProgramImage.for_config(CONFIG, code, entry=0, hbm_bytes=max(len(code), hbm_bytes), sram_bytes=16 * 1024,
                                   symbols=list(symbols))


def _expect_fault(future, code):
    try:
        future.result()
    except DeviceFault as fault:
        if fault.fault != code:
            raise Broken(f"the attacker faulted with {fault.fault.name}, expected {code.name}") from None
        return f"attacker faulted {code.name} at pc {fault.pc:#x}"
    raise Broken(f"the attacker finished; expected {code.name}")


def _expect_refusal(action, errors, what):
    try:
        action()
    except errors as exc:
        return f"{what} refused: {type(exc).__name__}: {str(exc)[:80]}"
    raise Broken(f"{what} was accepted")


def _timed(hv):
    if hv.backend == "functional":
        raise NotApplicable("untimed backend")


# --- the attacks ----------------------------------------------------------------------------------
# Each receives the hypervisor and ``start_victim`` (submits the victim's GEMM once and returns its
# future); it starts the victim when its own program is about to run and returns what it measured.


def _faulting_program(program, code):
    def attack(hv, start_victim):
        attacker = hv.create_vnpu(ATTACKER, name="attacker")
        attacker.load(_image(program))
        start_victim()
        return _expect_fault(attacker.submit({}), code)
    return attack


def _loader_negative_offsets(hv, start_victim):
    start_victim()
    details = [_expect_refusal(lambda: Symbol("L", "output", "i8", (16, 16), -(1 << 20), 16), ImageError,
                               "a symbol at a negative offset"),
               _expect_refusal(lambda: Segment(-(1 << 20), b"\xee" * 16), ImageError,
                               "a segment at a negative offset")]
    attacker = hv.create_vnpu(ATTACKER, name="attacker")
    beyond = ATTACKER.hbm_mib << 20
    image = _image(_utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=1)]),
                   symbols=[Symbol("L", "output", "i8", (16,), beyond, 16)], hbm_bytes=beyond + 16)
    details.append(_expect_refusal(lambda: attacker.load(image), (HostAccessError, ImageError),
                                   "an image reaching past the attacker's HBM window"))
    return "; ".join(details)


def _image_mutation_after_load(hv, start_victim):
    attacker = hv.create_vnpu(ATTACKER, name="attacker")
    image = _image(_utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=1)]),
                   symbols=[Symbol("Z", "output", "i8", (4,), 0x800, 4)])
    attacker.load(image)
    start_victim()
    sneaky = Symbol("L", "output", "i8", (4,), 0x800, 4)
    detail = _expect_refusal(lambda: image.symbols.append(sneaky), AttributeError, "appending a symbol")
    detail += "; " + _expect_refusal(lambda: setattr(image, "hbm_bytes", 1 << 30),
                                     dataclasses.FrozenInstanceError, "growing the image")
    attacker.run({})
    return detail


def _harvest_at_the_limit(hv, start_victim):
    _timed(hv)
    if hv.policy != Policy.HARVEST:
        raise NotApplicable("harvesting happens under the harvest policy only")
    cfg = hv.config
    k, n = cfg.me_rows, cfg.me_cols
    body = [Instr("me.loadw", w=0, k=k, n=n, w_stride=n)]
    matmul = Instr("me.matmul", a=0x100, out=0x400, m=256, a_stride=0, out_stride=0, acc=1)
    while utop_units(body + [matmul], cfg) <= HARVEST_COST_RESET:
        body.append(matmul)
    attacker = hv.create_vnpu(ATTACKER, name="attacker")
    attacker.load(_image(_utop(EngineClass.ME, body, cost=utop_units(body, cfg)) * 200))
    future = attacker.submit({})
    start_victim()
    future.result()
    return f"uTOps declaring {utop_units(body, cfg)} units harvested; bound {hv.reclaim_bound} cycles"


REVIEWED_BODY = [Instr("me.loadw", w=0, k=8, n=8, w_stride=8)] + \
    [Instr("me.matmul", a=0x100, out=0x200, m=4095, a_stride=0, out_stride=0, acc=1)] * 40
"""The review's hog: 40 matmuls of 4,095 rows in one uTOp (``small``'s 8 x 8 array)."""


def _watchdog(hv, start_victim):
    _timed(hv)
    budget = 5000
    attacker = hv.create_vnpu(dataclasses.replace(ATTACKER, budget_cycles=budget), name="attacker")
    attacker.load(_image(_utop(EngineClass.ME, REVIEWED_BODY)))
    future = attacker.submit({})
    start_victim()
    detail = _expect_fault(future, FaultCode.WATCHDOG)
    active, bound = attacker.usage().active_cycles, budget + abort_bound(hv.config, HBM_LATENCY)
    if not budget <= active <= bound:
        raise Broken(f"WATCHDOG after {active} cycles, bound {bound}")
    return f"{detail} after {active} cycles (bound {bound})"


def _kill(hv, start_victim):
    _timed(hv)
    attacker = hv.create_vnpu(ATTACKER, name="attacker")
    attacker.load(_image(_utop(EngineClass.ME, REVIEWED_BODY)))
    future = attacker.submit({})
    start_victim()
    time.sleep(0.05)
    before = attacker.usage().active_cycles
    attacker.kill()
    detail = _expect_fault(future, FaultCode.KILLED)
    taken, bound = attacker.usage().active_cycles - before, hv.poll_cycles + abort_bound(hv.config, HBM_LATENCY)
    if taken > bound:
        raise Broken(f"the kill took {taken} cycles, bound {bound} (driver poll + abort)")
    attacker.destroy()
    return f"{detail} {taken} cycles after the request (bound {bound}, driver poll + abort)"


def _starving_hog(hv, start_victim):
    _timed(hv)
    hog = hv.create_vnpu(ATTACKER, name="attacker")
    body = [Instr("me.loadw", w=0, k=8, n=8, w_stride=8), Instr("me.matmul", a=0x100, out=0x1000, m=256)]
    hog.load(_image(_utop(EngineClass.ME, body) * 400))
    hog_future = hog.submit({})
    start_victim().result()
    hog_future.result()
    victim = next(v for v in hv.vnpus if v.name == "victim")
    victim_cycles, hog_cycles = victim.runs[-1].latency_cycles, hog.runs[-1].latency_cycles
    if victim_cycles > hog_cycles / 2:
        raise Broken(f"the victim took {victim_cycles} cycles next to a hog of {hog_cycles}: it waited for the hog")
    return f"victim {victim_cycles} cycles next to a hog of {hog_cycles} (400 ME uTOps)"


def _own_output_region(hv, start_victim):
    attacker = hv.create_vnpu(ATTACKER, name="attacker")
    program = _utop(EngineClass.VE, [Instr("ve.fill", dst=0x100, n=64, value=3, dst_i8=1),
                                     Instr("ve.fill", dst=0, n=64, value=5, dst_i8=1)], signal=1)
    program += _utop(EngineClass.ME, [Instr("me.loadw", w=0, k=8, n=8, w_stride=8),
                                      Instr("me.matmul", a=0x100, out=0x400, m=8, a_stride=8, out_stride=32),
                                      Instr("me.matmul", a=0x400, out=0x400, m=8, a_stride=32, out_stride=32, acc=1)],
                     wait0=0, count0=1, signal=2)
    program += _utop(EngineClass.DMA, [Instr("dma.store", sram=0x400, hbm=0x800, rows=1, row_bytes=256)],
                     wait0=1, count0=1)
    image = _image(program, symbols=[Symbol("O", "output", "i32", (8, 8), 0x800, 32)])
    attacker.load(image)
    start_victim()
    out = attacker.run({})["O"]
    a = np.full((8, 8), 3, np.int64)
    first = a @ np.full((8, 8), 5, np.int64)
    a2 = first.astype(np.int32).view(np.uint8).reshape(8, 32)[:, :8].view(np.int8).astype(np.int64)
    expected = first + a2 @ np.full((8, 8), 5, np.int64)
    if not np.array_equal(out, expected.astype(np.int32)):
        raise Broken(f"matmul reading its own output region: row 0 {out[0][:4]} vs golden {expected[0][:4]}")
    return "a matmul reading the region the previous one wrote sees it (as the golden model)"


GATHER_TABLE = (32, 64)
"""Rows and bytes per row of the attacker's own embedding table (at the start of its HBM window)."""


def _gather_crafted_indices(hv, start_victim):
    attacker = hv.create_vnpu(ATTACKER, name="attacker")
    rows, row_bytes = GATHER_TABLE
    attacker.load(embedding_lookup(CONFIG, rows, row_bytes, 4, sram_bytes=0x1000))
    table = np.random.default_rng(16).integers(-128, 128, GATHER_TABLE, dtype=np.int8)
    start_victim()
    good = np.array([rows - 1, 0, 7, 7], np.int32)
    if not np.array_equal(attacker.run({"T": table, "I": good})["Y"], gather_reference(table, good)):
        raise Broken("a gather of the attacker's own rows returned other bytes")
    window_rows = (ATTACKER.hbm_mib << 20) // row_bytes
    crafted = {"the first row past its window": window_rows, "the row before its window": -1,
               "the far end of the address space": -(1 << 31), "a row at 2**32 bytes (a wrapped address)": 1 << 26,
               "the largest index": (1 << 31) - 1}
    details = []
    for what, index in crafted.items():
        indices = np.array([0, 1, index, 2], np.int32)
        details.append(f"{what}: " + _expect_fault(attacker.submit({"T": table, "I": indices}), FaultCode.HBM_BOUNDS))
    return "own rows exact; " + "; ".join(details)


def _leftover_state(hv, start_victim):
    first = hv.create_vnpu(ATTACKER, name="previous")
    first.load(_image(_utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=4096, value=-1)])
                      + _utop(EngineClass.DMA, [Instr("dma.store", sram=0, hbm=0x10000, rows=1, row_bytes=0x4000)]),
                      hbm_bytes=0x30000))
    first.run({})
    first.destroy()
    start_victim()
    second = hv.create_vnpu(ATTACKER, name="attacker")
    dump = _utop(EngineClass.DMA, [Instr("dma.store", sram=0, hbm=0x20000, rows=1, row_bytes=0x4000)])
    second.load(_image(dump, symbols=[Symbol("S", "output", "i32", (0x1000,), 0x20000, 0x4000),
                                      Symbol("H", "output", "i32", (0x1000,), 0x10000, 0x4000)],
                       hbm_bytes=0x30000))
    outputs = second.run({})
    if outputs["S"].any() or outputs["H"].any():
        raise Broken("a new tenant read the previous tenant's data")
    return "a new tenant on the same windows reads zeros"


def _image_fuzz(hv, start_victim):
    start_victim()
    rng = random.Random(14)
    good = _image(_utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=1)])).to_bytes()
    for _ in range(300):
        blob = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        try:
            ProgramImage.from_bytes(bytes(blob[:rng.randint(0, len(blob))] if rng.random() < 0.2 else blob))
        except ImageError:
            pass
    return "300 corrupted images: every one loads or raises ImageError"


def _assembler_fuzz(hv, start_victim):
    start_victim()
    rng = random.Random(15)
    words = [".config small", "utop", "ve.fill", "dst=0", "n=4", "cls=ve", "len=1", "halt", "dma.load", "rows=-1",
             "0x", "=", "\n", "cost=99999999", "me.matmul", "m=0", ".entry", "sram=3"]
    for _ in range(300):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        try:
            assemble(text, config=CONFIG)
        except AsmError:
            pass
    return "300 random sources: every one assembles or raises AsmError"


@dataclass(frozen=True)
class Attack:
    """One attack: its name, the guarantee it probes and the function that runs it."""

    name: str
    guarantee: str
    run: object


CATALOGUE = (
    Attack("loader_negative_offsets", "host accesses stay in the tenant's HBM window (item 1)",
           _loader_negative_offsets),
    Attack("image_mutation_after_load", "loaded images are immutable (item 1)", _image_mutation_after_load),
    Attack("harvest_at_the_limit", "an owner gets a harvested engine back within reclaim_bound (item 2)",
           _harvest_at_the_limit),
    Attack("watchdog_long_utop", "the watchdog stops a long uTOp within abort_bound (item 3)", _watchdog),
    Attack("kill_long_utop", "kill and destroy stop a long uTOp at once (item 4)", _kill),
    Attack("starving_hog", "a hog starves nobody under any policy (item 5)", _starving_hog),
    Attack("own_output_region", "golden model and RTL agree within a uTOp (item 6)", _own_output_region),
    Attack("dma_read_outside_window", "addresses are checked against the windows",
           _faulting_program(_utop(EngineClass.DMA, [Instr("dma.load", sram=0, hbm=(2 << 20) - 0x100, rows=1,
                                                           row_bytes=0x200)]), FaultCode.HBM_BOUNDS)),
    Attack("dma_write_one_byte_past", "addresses are checked against the windows",
           _faulting_program(_utop(EngineClass.DMA, [Instr("dma.store", sram=0, hbm=(2 << 20) - 4, rows=1,
                                                           row_bytes=8)]), FaultCode.HBM_BOUNDS)),
    Attack("scratchpad_overflow", "addresses are checked against the windows",
           _faulting_program(_utop(EngineClass.VE, [Instr("ve.fill", dst=(64 << 10) - 16, n=8, value=-1)]),
                             FaultCode.SRAM_BOUNDS)),
    Attack("privileged_instruction", "tenants cannot run hypervisor instructions",
           _faulting_program([Instr("ctx.scrub", ctx=0)], FaultCode.PRIVILEGED)),
    Attack("illegal_opcode", "illegal instructions fault their context alone",
           _faulting_program(bytes([0xEE]) + bytes(15), FaultCode.ILLEGAL_OPCODE)),
    Attack("token_deadlock", "a deadlocked program faults its context alone",
           _faulting_program(_utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=1)], wait0=3, count0=1),
                             FaultCode.TOKEN_DEADLOCK)),
    Attack("cost_lie", "a uTOp cannot run past the cost it declared",
           _faulting_program(_utop(EngineClass.ME, REVIEWED_BODY, cost=2048), FaultCode.COST_EXCEEDED)),
    Attack("gather_crafted_indices", "every index of a gather is checked against the HBM window",
           _gather_crafted_indices),
    Attack("leftover_state", "destroy scrubs the windows before they are reused", _leftover_state),
    Attack("image_fuzz", "corrupted images raise ImageError, nothing else", _image_fuzz),
    Attack("assembler_fuzz", "random assembly raises AsmError, nothing else", _assembler_fuzz),
)
BY_NAME = {attack.name: attack for attack in CATALOGUE}


def _victim(config):
    m, k, n = GEMM_SHAPE
    rng = np.random.default_rng(7)
    inputs = {"A": rng.integers(-128, 128, (m, k), dtype=np.int8), "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}
    return gemm(config, m, k, n), inputs, inputs["A"].astype(np.int32) @ inputs["B"].astype(np.int32)


def run_attack(attack, backend, policy):
    """Run ``attack`` (a name or :class:`Attack`) next to a victim; return an :class:`Outcome`."""
    attack = BY_NAME[attack] if isinstance(attack, str) else attack
    image, inputs, expected = _victim(CONFIG)
    timing = {"hbm_latency": HBM_LATENCY} if backend != "functional" else None
    with Hypervisor(CONFIG, backend, policy, hbm_timing=timing, starvation=STARVATION_RESET) as hv:
        victim = hv.create_vnpu(VICTIM, name="victim")
        victim.load(image)
        futures = []

        def start_victim():
            if not futures:
                futures.append(victim.submit(inputs))
            return futures[0]

        try:
            detail = attack.run(hv, start_victim)
        except NotApplicable as reason:
            return Outcome(attack.name, backend, policy, None, str(reason))
        except Broken as broken:
            return Outcome(attack.name, backend, policy, False, str(broken))
        outputs = start_victim().result()
        usage = victim.usage()
        m, k, n = GEMM_SHAPE
        problems = []
        if not np.array_equal(outputs["C"], expected):
            problems.append("the victim's outputs are wrong")
        if usage.macs != m * k * n:
            problems.append(f"the victim's MAC counter reads {usage.macs}, its own work is {m * k * n}")
        if backend != "functional" and hv.policy == Policy.HARVEST and usage.reclaim_max_cycles > hv.reclaim_bound:
            problems.append(f"the victim waited {usage.reclaim_max_cycles} cycles for its own engine, "
                            f"bound {hv.reclaim_bound}")
        if problems:
            return Outcome(attack.name, backend, policy, False, "; ".join(problems))
        extra = f"; victim reclaim max {usage.reclaim_max_cycles}" if backend != "functional" else ""
        return Outcome(attack.name, backend, policy, True, detail + extra)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--policy", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--only", nargs="+", metavar="ATTACK", choices=sorted(BY_NAME))
    args = parser.parse_args(argv)
    names = args.only or [a.name for a in CATALOGUE]
    broken = 0
    for name in names:
        for backend in args.backend:
            for policy in args.policy:
                outcome = run_attack(name, backend, policy)
                verdict = {True: "held", False: "BROKEN", None: "n/a"}[outcome.held]
                broken += outcome.held is False
                print(f"{name:28} {backend:10} {policy:8} {verdict:6} {outcome.detail}", flush=True)
    print(f"{broken} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
