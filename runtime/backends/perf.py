"""The ``perf`` backend: the pNPU in virtual time at uTOp granularity.

An event loop advances from event to event (an instruction fetched by a context's front end, a uTOp
dispatched, a DMA transfer finished, an engine done), never cycle by cycle, so its cost grows with
the uTOps a program runs, not with its cycles. What happens at each event is what the RTL's
scheduler (:mod:`tcloud.rtl.scheduler`) does in that cycle:

* one shared fetch unit serves the contexts' front ends round-robin, one top-level instruction at a
  time (``hbm_latency`` + a few cycles each), so a context issues at most one uTOp per round trip;
* at most one uTOp is dispatched per cycle, to a free engine its context may use under the policy
  (``static``, ``harvest`` with ``HARVEST_COST`` and ``HARVEST_GRACE``, ``temporal`` slices of
  ``QUANTUM`` x (priority + 1), ``operator`` class holders that yield to a starving context), ranked
  by starvation (``STARVATION``), then priority, then round-robin;
* tokens are consumed at dispatch and signalled when the engine finishes; a context stops on its
  earliest fault, on ``ctx.kill`` or on its watchdog budget and reports FAULTED once its in-flight
  uTOps have ended;
* each engine is busy for the cycles its timing model gives (:mod:`.perf_timing`); DMA transfers
  share the HBM's request slots and bandwidth (processor sharing).

With ``data=True`` (the default) the golden model (:class:`tcloud.isa.Machine`) executes each uTOp when
it is dispatched, in each context's program order, so outputs and activity counters are exactly
the golden model's; faults found in a uTOp's body are reported as it reports them. With
``data=False`` nothing is computed, which makes TPU-scale models cheap: the counters come from the
instructions' fields, and a context takes every fault the golden model would (found from the fields and
its window sizes: :mod:`tcloud.isa.body_faults`) but one that depends on data, a ``dma.gather`` index
outside the HBM window; a faulting uTOp's partial work is not counted.
Timing only, :meth:`PerfDevice.run` goes through a compiled copy of this event loop
(:mod:`.perf_native`, ``perf_core.cpp``) that leaves the same state, and so do the cycles a host
command takes; ``native=False`` keeps the Python loop, the reference.
"""

import heapq
import math

from tcloud.isa import ContextStatus, DecodeError, EngineClass, FaultCode, Machine, decode, get_config, parse_policy
from tcloud.isa import csr
from tcloud.isa.body_faults import (fetch_bounds_detail, no_engine_detail, privileged_detail, token_overflow_detail,
                                   utop_body_fault, wrong_class_detail)
from tcloud.isa.errors import HostCommandError
from tcloud.isa.table import HARVESTED_CLASSES, INSTRUCTION_BYTES, NUM_TOKENS, TOKEN_MAX_COUNT, Policy

from . import perf_timing as timing
from .device import ContextInfo, DeviceError, check_context_index
from .functional import GoldenMemory

_CLASSES = (EngineClass.DMA, EngineClass.ME, EngineClass.VE)
_VE_COUNTED = frozenset({"ve.add", "ve.sub", "ve.mul", "ve.max", "ve.min", "ve.relu", "ve.copy", "ve.fill",
                         "ve.requant", "ve.requantf", "ve.redsum", "ve.redmax", "ve.lut", "ve.fma", "ve.fmav"})
_ENGINE_CYCLES = ("me_owned", "me_harvested", "ve_owned", "ve_harvested", "dma_cycles")
FAR_FUTURE = 1 << 62
"""``_Engine.end`` of a DMA engine whose transfer has not finished."""
HELD_CLASSES = (EngineClass.ME, EngineClass.VE)
"""Classes ``operator`` hands from context to context (:attr:`PerfDevice._class_holder`)."""
FLOW_MIN_WORK = 1e-9
"""Work a DMA transfer starts with at least (one of no beats still finishes through the flows)."""
FLOW_DONE = 1e-6
"""Work left at or below which a DMA transfer has finished (the shared progress is rounded)."""
TOKEN_DEADLOCK_DETAIL = "uTOp waits for signals nothing will send"
WATCHDOG_DETAIL = "over its watchdog budget"


def utop_bytes(hbm, window, pc, length):
    """The encoding of the uTOp of ``length`` body instructions at ``pc`` of an HBM ``window``, cut at the
    window's end (a body word past it faults ``FETCH_BOUNDS``; it is never read from a neighbour's HBM)."""
    begin = window.base + pc
    return hbm[begin:min(begin + INSTRUCTION_BYTES * (length + 1), window.base + window.size)].tobytes()


class _Utop:
    """A decoded uTOp and its timing, cached by its encoding."""

    __slots__ = ("cls", "length", "signal", "need", "cost", "busy", "phases", "counters", "fault", "header", "body",
                 "config", "_window_faults")

    def __init__(self, header, body, config, latency, jitter, fault):
        self.header, self.body, self.config, self._window_faults = header, tuple(body), config, {}
        self.cls = EngineClass(header["cls"])
        self.length = header["len"]
        self.signal = header["signal"]
        need = {}
        for slot in range(3):
            count = header[f"count{slot}"]
            if count:
                need[header[f"wait{slot}"]] = need.get(header[f"wait{slot}"], 0) + count
        self.need = tuple(need.items())
        self.cost = header["cost"]
        self.fault = fault
        self.phases = None
        if self.cls == EngineClass.DMA:
            self.phases = timing.dma_phases(config, latency - timing.JITTER_SHARE * jitter, body, jitter)
            self.busy = None
        elif self.cls == EngineClass.ME:
            self.busy = max(1, math.ceil(timing.me_busy(config, latency, body)))
        else:
            self.busy = max(1, math.ceil(timing.ve_busy(config, latency, body)))
        self.counters = _activity(self.cls, body)

    def fault_in(self, sram_size, hbm_size):
        """The uTOp's first fault in a context with these window sizes, ``(code, offset from its PC,
        detail)`` or ``None``: a body fault that does not depend on data (:mod:`tcloud.isa.body_faults`:
        windows, engine state, declared cost) before its first instruction that does not decode or
        lies past the window (``FETCH_BOUNDS``, whose detail, ``None`` here, names the PC)."""
        key = (sram_size, hbm_size)
        fault = self._window_faults.get(key, False)
        if fault is False:
            fault = self.fault
            found = utop_body_fault(self.config, self.header, self.body, sram_size, hbm_size)
            if found is not None:
                code, index, detail = found
                fault = (code, INSTRUCTION_BYTES * (index + 1), detail)
            if len(self._window_faults) > _WINDOWS_LIMIT:
                self._window_faults.clear()
            self._window_faults[key] = fault
        return fault


def context_report(status, stop, counters, engine_cycles, reclaim_wait, reclaim_max, reclaim_since, start, end,
                   active_before, now):
    """A context's :class:`~tcloud.runtime.ContextInfo` from its timing state (the Python loop's
    objects; the compiled core ports it): a reclaim wait still going on (since ``reclaim_since``, or
    ``None``) counts up to ``now``, as the RTL's counters count every cycle."""
    if stop is not None and status == ContextStatus.FAULTED:
        fault, fault_pc, detail = stop
    else:
        fault, fault_pc, detail = _NO_FAULT
    if status == ContextStatus.RUNNING:
        run = max(0, now - start)
        active = active_before + run
        if reclaim_since is not None:
            reclaim_wait, reclaim_max = reclaim_wait + (now - reclaim_since), max(reclaim_max, now - reclaim_since)
    else:
        run = 0 if end is None else end - start
        active = active_before
    timing_report = {"active_cycles": int(active), "run_cycles": int(run),
                     "engine_cycles": {name: int(value) for name, value in engine_cycles.items()},
                     "reclaim_wait_cycles": int(reclaim_wait), "reclaim_max_cycles": int(reclaim_max)}
    return ContextInfo(status, fault, fault_pc, detail, counters, timing_report)


_NO_FAULT = (FaultCode.NONE, 0, "")


def stats_report(now, names, busy_totals, starts, ends, running):
    """:meth:`PerfDevice.stats` from the time and, per engine (in ``names``' order), its finished uTOps'
    busy cycles, its running uTOp's start and end, and whether it runs one (a running uTOp counts
    up to ``now``)."""
    return {"backend": PerfDevice.name, "cycles": int(now),
            "engine_busy_cycles": {name: int(total + (max(0, min(now, end) - start) if on else 0))
                                   for name, total, start, end, on in zip(names, busy_totals, starts, ends, running)}}


def _activity(cls, body):
    """Activity counters of a uTOp body, from its fields (the golden model's definitions)."""
    read = written = macs = elements = 0
    rows, tile = 1, (0, 0)
    for instr in body:
        name = instr.mnemonic
        if name in ("dma.load", "dma.gather"):
            read += instr["rows"] * instr["row_bytes"]
        elif name == "dma.store":
            written += instr["rows"] * instr["row_bytes"]
        elif name == "me.loadw":
            tile = (instr["k"], instr["n"])
        elif name == "me.matmul":
            macs += instr["m"] * tile[0] * tile[1]
        elif name == "ve.shape":
            rows = instr["rows"]
        elif name in _VE_COUNTED:
            elements += rows * instr["n"]
    return {"utops": cls.name.lower(), "instructions": 1 + len(body), "hbm_bytes_read": read,
            "hbm_bytes_written": written, "macs": macs, "ve_elements": elements}


_UTOP_CACHE = {}
"""``(config, latency)`` → uTOp encoding → :class:`_Utop`: decoded uTOps and their timing, shared by every
device of a process (a sweep runs the same programs many times)."""
_CACHE_LIMIT = 200_000
_WINDOWS_LIMIT = 64
"""Window sizes a :class:`_Utop` remembers its fault for."""
_WORDS = {}
"""Encoded instruction → decoded :class:`~tcloud.isa.Instr` (decoding is the cost of a cold uTOp)."""


class _Context:
    """Timing state of one hardware context."""

    def __init__(self, index):
        self.index = index
        self.masks = {}
        self.status = ContextStatus.IDLE
        self.state = "idle"
        self.pc = self.start_pc = 0
        self.head = None
        self.issue_from = 0
        self.want_from = 0
        self.decoded_at = 0
        self.tokens = [0] * NUM_TOKENS
        self.inflight = 0
        self.last_end = 0
        self.start = 0
        self.end = None
        self.active_before = 0
        self.ready_since = None
        self.stop = None  # (code, pc, detail)
        self.epoch = 0
        self.timing = {name: 0 for name in _ENGINE_CYCLES}
        self.reclaim_wait = self.reclaim_max = 0
        self.reclaim_since = None  # when its current wait to reclaim an engine began (None: it does not wait)
        self.counters = _empty_counters()
        self.native_program = None  # its program as the compiled core reads it (perf_native.Program)


def _empty_counters():
    return {"utops": {cls.name.lower(): 0 for cls in _CLASSES}, "instructions": 0, "hbm_bytes_read": 0,
            "hbm_bytes_written": 0, "macs": 0, "ve_elements": 0}


class _Engine:
    __slots__ = ("index", "cls", "slot", "name", "ctx", "start", "end", "busy_total", "owned", "token", "phase",
                 "utop", "owner_active", "harvested_until")

    def __init__(self, index, cls, slot):
        self.index, self.cls, self.slot = index, cls, slot
        self.name = f"{cls.name.lower()}{slot}"
        self.ctx = None
        self.start = self.end = 0
        self.busy_total = 0
        self.owned = True
        self.token = 0
        self.phase = 0
        self.utop = None
        self.owner_active = -(1 << 62)
        self.harvested_until = 0


class PerfDevice(GoldenMemory):
    """The performance model behind the :class:`~tcloud.runtime.backends.Device` protocol.

    Parameters
    ----------
    config : ArchConfig or str
    hbm_latency : int, optional
        HBM latency in cycles; default the configuration's ``hbm_latency``.
    hbm_jitter : int
        The RTL backends add 0 .. ``hbm_jitter`` random cycles to each request; the model uses the
        mean, ``hbm_jitter / 2``.
    hbm_accept_probability : float
        The RTL backends' HBM refuses a request with probability ``1 - p``; the model stretches each
        beat to ``1 / p`` cycles.
    seed : int
        Accepted for the RTL backends' signature (the model is deterministic).
    data : bool
        Compute data with the golden model (exact outputs and counters). ``False``: timing only.
    native : bool, optional
        Timing only: run the event loop in the compiled core (:mod:`.perf_native`; the same cycles and
        counters, much faster). Default: when the C++ compiler can build it. ``False``: the Python
        event loop (the reference). ``True`` with ``data=True`` is an error.

    Attributes
    ----------
    cycles : int
        Virtual cycles since the device was created.
    hbm_worst_latency : int
        ``hbm_latency + hbm_jitter`` (what the hypervisor bounds reclaim times with).
    """

    name = "perf"
    command_poll_cycles = 64
    """Cycles a host command takes after its CSR writes (as :class:`~.amaranth.CsrDevice` polls)."""

    def __init__(self, config, *, hbm_latency=None, hbm_jitter=0, hbm_accept_probability=1.0, seed=0, data=True,
                 native=None):
        self.config = cfg = get_config(config)
        latency = cfg.hbm_latency if hbm_latency is None else hbm_latency
        if isinstance(latency, bool) or not isinstance(latency, int) or latency < 1:
            raise DeviceError(f"hbm_latency must be a positive number of cycles, got {hbm_latency!r}")
        if isinstance(hbm_jitter, bool) or not isinstance(hbm_jitter, int) or hbm_jitter < 0:
            raise DeviceError(f"hbm_jitter must be a non-negative number of cycles, got {hbm_jitter!r}")
        if not 0 < hbm_accept_probability <= 1:
            raise DeviceError(f"hbm_accept_probability must be in (0, 1], got {hbm_accept_probability!r}")
        self.hbm_worst_latency = latency + hbm_jitter
        self.latency = latency + hbm_jitter * timing.JITTER_SHARE
        self.jitter = hbm_jitter
        self.front_latency = latency + hbm_jitter * timing.FRONT_JITTER_SHARE
        self.beat_stretch = 1 / hbm_accept_probability
        self.data = data
        if native and data:
            raise DeviceError("native=True needs data=False: the compiled core times without data")
        self.machine = Machine(cfg)
        self.contexts = [_Context(i) for i in range(cfg.contexts)]
        self.engines = []
        for cls, count in ((EngineClass.DMA, cfg.dma_count), (EngineClass.ME, cfg.me_count),
                           (EngineClass.VE, cfg.ve_count)):
            self.engines += [_Engine(len(self.engines) + slot, cls, slot) for slot in range(count)]
        self.by_class = {cls: [e for e in self.engines if e.cls == cls] for cls in _CLASSES}
        self.now = 0
        self._events = []
        self._sequence = 0
        self._cache_key = (cfg, self.latency, self.jitter)
        self._cache = _UTOP_CACHE.setdefault(self._cache_key, {})
        self._fetch_free = 0
        self._fetch_last = -1
        self._dispatch_last = -1
        self._dispatched_at = -1
        self._flows = {}  # engine index -> remaining solo cycles of its transfer
        self._flows_at = 0
        self._flows_version = 0
        self.policy = Policy(csr.POLICY_RESET)
        self.quantum, self.starvation = csr.QUANTUM_RESET, csr.STARVATION_RESET
        self.harvest_cost, self.harvest_grace = csr.HARVEST_COST_RESET, csr.HARVEST_GRACE_RESET
        self._holder, self._slice_end = cfg.contexts - 1, 0  # the slice arbiter grants context 0 first
        self._class_holder = {cls: 0 for cls in HELD_CLASSES}
        self._class_since = {cls: 0 for cls in HELD_CLASSES}
        self._utops_dispatched = 0
        self._engine_changes = 0  # counts the calls that may change an engine (the compiled core re-packs them)
        self._running = []
        self._handlers = {name: getattr(self, name) for name in (
            "_on_wake", "_on_fetched", "_on_engine_done", "_on_dma_transfer", "_on_flows", "_on_budget")}
        self._native = None
        self._native_paused = False
        if not data and native is not False:
            from . import perf_native
            try:
                self._native = perf_native.NativeCore(self)
            except perf_native.NativeBuildError as error:
                if native:
                    raise
                perf_native.warn_python_loop(error)

    # --- the Device protocol ---------------------------------------------------------------------

    @property
    def cycles(self):
        """Virtual cycles since the device was created."""
        return int(self._native.now() if self._native is not None else self.now)

    @property
    def utops_dispatched(self):
        """uTOps dispatched since the device was created."""
        self._sync()
        return self._utops_dispatched

    def _sync(self):
        """Bring the state back from the compiled core, if it holds it."""
        if self._native is not None:
            self._native.sync()

    def write_hbm(self, address, data):
        if self._native is not None and self._native.code_written(address, len(data)):
            # The core runs programs decoded before; the Python loop reads code as it fetches, so it
            # goes on until no context runs (:meth:`_resume_native`).
            self._sync()
            self._native, self._native_paused = None, True
        super().write_hbm(address, data)

    def _resume_native(self):
        """Go back to the compiled core, after a write to running code, once no context runs."""
        if self._native_paused and not self._running:
            from . import perf_native

            self._native, self._native_paused = perf_native.NativeCore(self), False

    def set_policy(self, policy, *, quantum=None, starvation=None, harvest_cost=None, harvest_grace=None):
        """Choose the scheduling policy and its registers (the values the RTL accepts; ``ValueError``
        for others)."""
        self._sync()
        policy = parse_policy(policy)
        csr.config_writes(policy, quantum=quantum, starvation=starvation, harvest_cost=harvest_cost,
                          harvest_grace=harvest_grace)
        self.policy = self.machine.policy = policy
        for name, value in (("quantum", quantum), ("starvation", starvation), ("harvest_cost", harvest_cost),
                            ("harvest_grace", harvest_grace)):
            if value is not None:
                setattr(self, name, value)

    def host(self, command):
        """Execute one privileged ``ctx.*`` command; it takes the cycles the CSR protocol takes
        (its writes, then a doorbell poll; ``ctx.scrub`` as long as the scrubber needs)."""
        self._resume_native()
        self._advance_any((self.now if self._native is None else self._native.now()) + timing.HOST_COMMAND_WRITES)
        self._sync()
        ctx = None
        index = command.values.get("ctx")
        if index is not None and index < len(self.contexts):
            ctx = self.contexts[index]
        gctx = self.machine.contexts[index] if ctx is not None else None
        if ctx is not None and self._native is not None:
            self._native.touch(index)
        if command.mnemonic == "ctx.kill":
            if ctx is not None and ctx.status == ContextStatus.RUNNING:
                self._abandon(ctx, FaultCode.KILLED, "killed by the hypervisor")
            self._advance_any(self.now + self.command_poll_cycles)
            return
        if ctx is not None and ctx.status == ContextStatus.RUNNING:
            raise HostCommandError(f"the pNPU rejected {command!r}: {command.mnemonic}: context {index} is running")
        try:
            self.machine.host(command)
        except HostCommandError as error:
            raise HostCommandError(f"the pNPU rejected {command!r}: {error}") from None
        wait = self.command_poll_cycles
        if command.mnemonic == "ctx.start":
            self._start(ctx, gctx)
        elif command.mnemonic == "ctx.scrub":
            ctx.counters = _empty_counters()
            ctx.timing = {name: 0 for name in _ENGINE_CYCLES}
            ctx.reclaim_wait = ctx.reclaim_max = ctx.active_before = 0
            ctx.start, ctx.end = self.now, self.now
            beats = gctx.hbm.size / self.config.hbm_port_bytes + gctx.sram.size / (4 * self.config.sram_line_words)
            wait = self.command_poll_cycles * max(1, math.ceil(beats / self.command_poll_cycles))
        self._advance_any(self.now + wait)

    def _advance_any(self, limit):
        """:meth:`_advance` in the compiled core if the device has one (the core then holds the state,
        so a ``run()`` after a host command starts at once), else in Python."""
        if self._native is not None:
            self._native.run_to(limit)
        else:
            self._advance(limit)

    def run(self, max_cycles=None):
        if self._native_paused:
            self._resume_native()
        if self._native is not None:
            limit = None if max_cycles is None else self._native.now() + max_cycles
            self._native.run_to(limit)
            return not self._native.running()
        limit = None if max_cycles is None else self.now + max_cycles
        self._advance(limit)
        return not self._busy()

    def context(self, index):
        if type(index) is not int or not 0 <= index < self.config.contexts:
            check_context_index(self.config, index)
        if self._native is not None and self._native.holds_state:
            report = self._native.report(index)
            if report is not None:
                return report
            self._native.sync()
        ctx = self.contexts[index]
        counters = (self.machine.contexts[index].counters.as_dict() if self.data
                    else {**ctx.counters, "utops": dict(ctx.counters["utops"])})
        return context_report(ctx.status, ctx.stop, counters, ctx.timing, ctx.reclaim_wait, ctx.reclaim_max,
                              ctx.reclaim_since, ctx.start, ctx.end, ctx.active_before, self.now)

    def stats(self):
        """Cycles since creation and busy cycles per engine (cumulative), as the RTL backends report."""
        if self._native is not None and self._native.holds_state:
            report = self._native.stats()
            if report is not None:
                return report
            self._native.sync()
        engines = self.engines
        return stats_report(self.now, [engine.name for engine in engines], [engine.busy_total for engine in engines],
                            [engine.start for engine in engines], [engine.end for engine in engines],
                            [engine.ctx is not None for engine in engines])

    def csr_read(self, address):
        """Read a context's ``PC`` or ``STATUS`` register (what the profiler polls)."""
        self._sync()
        for ctx in self.contexts:
            if address == csr.context_csr(ctx.index, "PC"):
                return ctx.pc
            if address == csr.context_csr(ctx.index, "STATUS"):
                return int(ctx.status)
        raise DeviceError(f"the perf backend models no CSR at {address:#x} (only the contexts' PC and STATUS)")

    def close(self):
        """Nothing to free (for symmetry with the RTL backends)."""

    # --- the event loop --------------------------------------------------------------------------

    def _push(self, time, kind, payload=None):
        self._sequence += 1
        heapq.heappush(self._events, (time, self._sequence, self._handlers[kind], payload))

    def _busy(self):
        return bool(self._running)

    def _advance(self, limit):
        """Process events up to ``limit`` (``None``: until no context runs); ``now`` ends at the limit
        or at the cycle the last context stopped (the Python loop: a device with a compiled core
        advances in it, :meth:`_advance_any`)."""
        events = self._events
        while True:
            if not self._running:  # as the RTL backends: a run ends when no context runs
                return
            if not events:
                raise DeviceError("perf model deadlock: contexts are running but no event is pending "
                                  f"(at cycle {self.now}); please report it")
            time = events[0][0]
            if limit is not None and time > limit:
                self.now = max(self.now, limit)
                return
            self.now = time
            while events and events[0][0] == time:
                _, _, handler, payload = heapq.heappop(events)
                handler(time, payload)
            self._settle(time)

    # --- front ends ------------------------------------------------------------------------------

    def _start(self, ctx, gctx):
        ctx.epoch += 1
        ctx.masks = {EngineClass.DMA: gctx.dma_mask, EngineClass.ME: gctx.me_mask, EngineClass.VE: gctx.ve_mask}
        ctx.status = ContextStatus.RUNNING
        self._running = [c for c in self.contexts if c.status == ContextStatus.RUNNING]
        ctx.state = "fetch"
        ctx.pc = ctx.start_pc = gctx.pc
        ctx.tokens = [0] * NUM_TOKENS
        ctx.inflight = 0
        ctx.stop = None
        ctx.start = self.now + 1
        ctx.end = None
        ctx.want_from = self.now + 1
        ctx.head = None
        ctx.ready_since = None
        ctx.last_end = 0
        if gctx.budget:
            self._push(ctx.start + gctx.budget, "_on_budget", (ctx.index, ctx.epoch))
        self._push(ctx.want_from, "_on_wake")

    def _fetch_grant(self, time):
        """Give the fetch unit to the next context (round-robin) that wants an instruction."""
        if self._fetch_free > time:
            if any(ctx.state == "fetch" for ctx in self.contexts):
                self._push(self._fetch_free, "_on_wake")
            return
        n = len(self.contexts)
        for step in range(1, n + 1):
            ctx = self.contexts[(self._fetch_last + step) % n]
            if ctx.state == "fetch" and ctx.want_from <= time:
                gctx = self.machine.contexts[ctx.index]
                if ctx.pc + INSTRUCTION_BYTES > gctx.hbm.size:
                    self._stop(ctx, time, FaultCode.FETCH_BOUNDS, ctx.pc, fetch_bounds_detail(ctx.pc, gctx.hbm.size))
                    continue
                self._fetch_last = ctx.index
                ctx.state = "fetching"
                done = time + self.front_latency + timing.FETCH_READY
                done = math.ceil(done)
                self._fetch_free = done  # the unit takes the next request in the decoding cycle
                self._push(done, "_on_fetched", (ctx.index, ctx.epoch))
                return

    def _on_fetched(self, time, payload):
        index, epoch = payload
        ctx = self.contexts[index]
        if ctx.epoch != epoch or ctx.state != "fetching":
            return
        ctx.decoded_at = time
        if ctx.stop is not None:
            ctx.state = "stopping"
            return
        gctx = self.machine.contexts[index]
        base = gctx.hbm.base + ctx.pc
        word = self.machine.hbm[base:base + INSTRUCTION_BYTES].tobytes()
        try:
            instr = _WORDS.get(word)
            if instr is None:
                instr = _WORDS[word] = decode(word)
        except DecodeError as error:
            self._front_fault(ctx, time, error.fault, str(error))
            return
        name = instr.mnemonic
        if name == "utop":
            key = utop_bytes(self.machine.hbm, gctx.hbm, ctx.pc, instr["len"])
            utop = self._cache.get(key)
            if utop is None:
                utop = self._decode_utop(ctx.pc, instr, key)
            ctx.head = utop
            ctx.state = "issue"
            ctx.issue_from = time + 1
            ctx.ready_since = None
            self._push(time + 1, "_on_wake")
        elif name in ("halt", "fence"):
            ctx.state = name
            ctx.issue_from = time + 1
            self._push(time + 1, "_on_wake")
        elif instr.engine == EngineClass.HOST:
            self._front_fault(ctx, time, FaultCode.PRIVILEGED, privileged_detail(name))
        elif instr.engine != EngineClass.CTRL:
            self._front_fault(ctx, time, FaultCode.WRONG_CLASS, wrong_class_detail(name))
        else:
            self._golden_step(ctx)
            ctx.pc += INSTRUCTION_BYTES
            self._count_top(ctx)
            ctx.state = "fetch"
            ctx.want_from = time + 1
            self._push(time + 1, "_on_wake")

    def _decode_utop(self, pc, header, key):
        if header["cls"] not in [int(cls) for cls in _CLASSES]:
            raise DeviceError(f"uTOp header of class {header['cls']} at {pc:#x}")
        body, fault = [], None
        words = _WORDS
        for i in range(header["len"]):
            word = key[INSTRUCTION_BYTES * (i + 1):INSTRUCTION_BYTES * (i + 2)]
            if len(word) < INSTRUCTION_BYTES:  # past the window (utop_bytes)
                fault = (FaultCode.FETCH_BOUNDS, INSTRUCTION_BYTES * (i + 1), None)
                break
            try:
                instr = words.get(word)
                if instr is None:
                    instr = decode(word)
                    if len(words) > _CACHE_LIMIT:
                        words.clear()
                    words[word] = instr
            except DecodeError as error:
                fault = (error.fault, INSTRUCTION_BYTES * (i + 1), str(error))
                break
            if int(instr.engine) != header["cls"]:
                fault = (FaultCode.WRONG_CLASS, INSTRUCTION_BYTES * (i + 1),
                         wrong_class_detail(instr.mnemonic, EngineClass(header["cls"])))
                break
            body.append(instr)
        utop = _Utop(header, body, self.config, self.latency, self.jitter, fault)
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = utop
        return utop

    def _count_top(self, ctx):
        if not self.data:
            ctx.counters["instructions"] += 1

    def _golden_step(self, ctx):
        """Execute the context's next top-level instruction in the golden model (data mode); return
        its fault ``(code, pc, detail)`` or ``None``."""
        if not self.data:
            return None
        gctx = self.machine.contexts[ctx.index]
        if gctx.status != ContextStatus.RUNNING:
            gctx.status = ContextStatus.RUNNING
        gctx.pc = ctx.pc
        self.machine.step(gctx)
        if gctx.status == ContextStatus.FAULTED:
            gctx.status = ContextStatus.RUNNING  # the timing model reports the fault when the context stops
            return gctx.fault, gctx.fault_pc, gctx.fault_detail
        return None

    def _front_fault(self, ctx, time, code, detail):
        fault = self._golden_step(ctx)
        if fault is None:
            fault = (code, ctx.pc, detail)
        if not self.data and code in (FaultCode.PRIVILEGED, FaultCode.WRONG_CLASS):
            ctx.counters["instructions"] += 1
        self._stop(ctx, time, *fault)
        ctx.state = "stopping"  # the front end found the fault, so no fetch is in flight

    def _stop(self, ctx, time, code, pc, detail):
        """Stop issuing; the context reports FAULTED once its in-flight uTOps have ended (the earliest
        fault in program order wins)."""
        if ctx.stop is None or pc < ctx.stop[1]:
            ctx.stop = (FaultCode(code), pc, detail)
        if ctx.state != "fetching":
            ctx.state = "stopping"
        self._push(time, "_on_wake")

    def _abandon(self, ctx, code, detail):
        """Kill or watchdog: stop now and abort the context's in-flight uTOps."""
        self._engine_changes += 1
        time = self.now
        self._stop(ctx, time, code, ctx.pc, detail)
        ctx.stop = (FaultCode(code), ctx.pc, detail)
        gctx = self.machine.contexts[ctx.index]
        gctx.status, gctx.fault, gctx.fault_pc, gctx.fault_detail = ContextStatus.FAULTED, code, ctx.pc, detail
        bound = math.ceil(self.latency) + timing.FETCH_READY + timing.UTOP_TAIL
        for engine in self.engines:
            if engine.ctx is ctx and engine.end > time + bound:
                self._flows.pop(engine.index, None)
                engine.end = time + bound
                engine.token += 1
                self._push(engine.end, "_on_engine_done", (engine.index, engine.token, True))
        ctx.state = "stopping"

    def _on_budget(self, time, payload):
        index, epoch = payload
        ctx = self.contexts[index]
        if ctx.epoch == epoch and ctx.status == ContextStatus.RUNNING:
            self._abandon(ctx, FaultCode.WATCHDOG, WATCHDOG_DETAIL)

    def _on_wake(self, time, payload):
        """A wake-up does nothing itself: :meth:`_advance` settles every context after each cycle's events."""

    # --- engines ---------------------------------------------------------------------------------

    def _dispatch_to(self, ctx, engine, time):
        utop = ctx.head
        for token, count in utop.need:
            ctx.tokens[token] -= count
        owned = self._owns(ctx, engine)
        if owned:
            engine.owner_active = max(engine.owner_active, time)
        fault = None
        if self.data:
            fault = self._golden_step(ctx)
        else:
            windows = self.machine.contexts[ctx.index]
            found = utop.fault_in(windows.sram.size, windows.hbm.size)
            if found is not None:
                code, offset, detail = found
                fault = (code, ctx.pc + offset, detail or fetch_bounds_detail(ctx.pc + offset, windows.hbm.size))
        engine.ctx, engine.utop, engine.owned = ctx, (utop, ctx.pc, fault), owned
        engine.start = time + 1
        engine.token += 1
        ctx.inflight += 1
        self._utops_dispatched += 1
        if utop.phases is None:
            sharing = sum(1 for other in self.engines if other.ctx is not None and other is not engine
                          and other.cls != EngineClass.DMA) + len(self._flows)
            extra = math.ceil(timing.SHARED_ACCESS_CYCLES * utop.length * sharing)
            engine.end = time + 1 + utop.busy + extra
            self._push(engine.end, "_on_engine_done", (engine.index, engine.token, False))
        elif not utop.phases:  # a DMA uTOp whose first body instruction does not decode: its overhead, then its fault
            engine.phase = 0
            engine.end = time + 1 + timing.DMA_UTOP_EXTRA
            self._push(engine.end, "_on_engine_done", (engine.index, engine.token, False))
        else:
            engine.phase = 0
            engine.end = FAR_FUTURE
            first = time + 1 + timing.DMA_UTOP_EXTRA // 2 + utop.phases[0].before
            self._push(math.ceil(first), "_on_dma_transfer", (engine.index, engine.token))
        if ctx.state == "issue":
            ctx.pc += INSTRUCTION_BYTES * (utop.length + 1)
            ctx.head = None
            ctx.state = "fetch"
            ctx.want_from = time + 1
            ctx.ready_since = None
            self._push(time + 1, "_on_wake")
        if fault is not None:
            self._stop(ctx, time, *fault)

    def _on_dma_transfer(self, time, payload):
        index, token = payload
        engine = self.engines[index]
        if engine.token != token:
            return
        phase = engine.utop[0].phases[engine.phase]
        self._update_flows(time)
        fetching = sum(other.utop[0].length / other.utop[0].busy for other in self.engines
                       if other.ctx is not None and other.cls != EngineClass.DMA)
        work = timing.transfer_cycles(self.config, self.latency, phase) * self.beat_stretch * (1 + fetching)
        self._flows[index] = max(work, FLOW_MIN_WORK)
        self._reschedule_flows(time)

    def _update_flows(self, time):
        if self._flows:
            progress = (time - self._flows_at) / len(self._flows)
            for index in self._flows:
                self._flows[index] -= progress
        self._flows_at = time

    def _reschedule_flows(self, time):
        self._flows_version += 1
        if self._flows:
            soonest = min(self._flows.values()) * len(self._flows)
            self._push(time + max(soonest, 0.0), "_on_flows", self._flows_version)

    def _on_flows(self, time, version):
        if version != self._flows_version:
            return
        self._engine_changes += 1
        self._update_flows(time)
        finished = [index for index, left in self._flows.items() if left <= FLOW_DONE]
        for index in finished:
            del self._flows[index]
            engine = self.engines[index]
            utop = engine.utop[0]
            phase = utop.phases[engine.phase]
            engine.phase += 1
            after = time + phase.after
            if engine.phase < len(utop.phases):
                self._push(math.ceil(after + utop.phases[engine.phase].before), "_on_dma_transfer",
                           (index, engine.token))
            else:
                engine.end = math.ceil(after + timing.DMA_UTOP_EXTRA - timing.DMA_UTOP_EXTRA // 2)
                self._push(engine.end, "_on_engine_done", (index, engine.token, False))
        self._reschedule_flows(time)

    def _on_engine_done(self, time, payload):
        index, token, aborted = payload
        engine = self.engines[index]
        if engine.token != token or engine.ctx is None:
            return
        self._engine_changes += 1
        ctx, (utop, pc, fault) = engine.ctx, engine.utop
        busy = time - engine.start
        engine.busy_total += busy
        if engine.cls == EngineClass.DMA:
            ctx.timing["dma_cycles"] += busy
        else:
            kind = "owned" if engine.owned else "harvested"
            ctx.timing[f"{engine.cls.name.lower()}_{kind}"] += busy
        if engine.owned:
            engine.owner_active = max(engine.owner_active, time)
        else:
            engine.harvested_until = time
        engine.ctx = engine.utop = None
        ctx.inflight -= 1
        ctx.last_end = max(ctx.last_end, time)
        if not aborted and fault is None:
            if not self.data:
                counters = ctx.counters
                for name in ("instructions", "hbm_bytes_read", "hbm_bytes_written", "macs", "ve_elements"):
                    counters[name] += utop.counters[name]
                counters["utops"][utop.counters["utops"]] += 1
            for token in range(NUM_TOKENS):
                if utop.signal >> token & 1:
                    if ctx.tokens[token] >= TOKEN_MAX_COUNT:
                        self._stop(ctx, time, FaultCode.TOKEN_OVERFLOW, pc, token_overflow_detail(token))
                    else:
                        ctx.tokens[token] += 1

    # --- the scheduler ---------------------------------------------------------------------------

    def _owns(self, ctx, engine):
        return bool(ctx.masks[engine.cls] >> engine.slot & 1)

    def _owns_none(self, ctx, cls):
        return ctx.masks[cls] == 0 and self.policy in (Policy.STATIC, Policy.HARVEST)

    def _enough(self, ctx):
        tokens = ctx.tokens
        return all(tokens[token] >= count for token, count in ctx.head.need)

    def _settle(self, time):
        """Everything the RTL does in cycle ``time`` once the events of that cycle are in: front ends
        finishing halts, fences and stops, one dispatch, the fetch unit's next grant."""
        issuing = False
        fetching = False
        for ctx in tuple(self._running):
            state = ctx.state
            if state == "fetch":
                fetching = True
            elif state == "fetching":
                continue
            elif state == "stopping" and ctx.inflight == 0:
                self._finish(ctx, max(time, ctx.last_end), ContextStatus.FAULTED)
            elif state == "halt" and ctx.inflight == 0 and ctx.issue_from <= time:
                self._golden_step(ctx)
                self._count_top(ctx)
                ctx.pc += INSTRUCTION_BYTES
                self._finish(ctx, max(time, ctx.last_end), ContextStatus.DONE)
            elif state == "fence" and ctx.inflight == 0 and ctx.issue_from <= time:
                self._golden_step(ctx)
                self._count_top(ctx)
                ctx.pc += INSTRUCTION_BYTES
                ctx.state = "fetch"
                ctx.want_from = time
                fetching = True
            elif state == "issue" and ctx.issue_from <= time:
                enough = not ctx.head.need or self._enough(ctx)
                issuing = issuing or (enough and ctx.stop is None)
                if not enough and ctx.inflight == 0:
                    self._front_fault(ctx, time, FaultCode.TOKEN_DEADLOCK, TOKEN_DEADLOCK_DETAIL)
                elif self._owns_none(ctx, ctx.head.cls):
                    self._front_fault(ctx, time, FaultCode.NO_ENGINE, no_engine_detail(ctx.head.cls, self.policy))
        if self.policy == Policy.TEMPORAL:
            self._temporal_slice(time)
        if issuing and self._dispatched_at != time:
            dispatched, others = self._dispatch(time)
            if dispatched:
                self._dispatched_at = time
                if others:
                    self._push(time + 1, "_on_wake")
        if fetching or any(ctx.state == "fetch" for ctx in self._running):
            self._fetch_grant(time)
        self._reclaim_waits(time)

    def _finish(self, ctx, time, status):
        ctx.status = status
        self._running.remove(ctx)
        ctx.state = "idle"
        ctx.end = time
        ctx.active_before += time - ctx.start
        gctx = self.machine.contexts[ctx.index]
        if status == ContextStatus.DONE:
            gctx.status = ContextStatus.DONE
        else:
            code, pc, detail = ctx.stop
            gctx.status, gctx.fault, gctx.fault_pc, gctx.fault_detail = ContextStatus.FAULTED, code, pc, detail

    def _ready(self, ctx, time):
        return (ctx.status == ContextStatus.RUNNING and ctx.state == "issue" and ctx.issue_from <= time
                and ctx.stop is None and self._enough(ctx) and not self._owns_none(ctx, ctx.head.cls))

    def _dispatch(self, time):
        """Dispatch at most one ready uTOp at ``time``; return whether one was and whether other
        contexts were ready too."""
        ready = [ctx for ctx in self._running if self._ready(ctx, time)]
        if not ready:
            return False, False
        self._engine_changes += 1
        for ctx in ready:
            if ctx.ready_since is None:
                ctx.ready_since = time
        policy = self.policy
        wants = {cls: [ctx for ctx in ready if ctx.head.cls == cls] for cls in _CLASSES}
        if policy == Policy.HARVEST:
            for engine in self.engines:
                if engine.cls in HARVESTED_CLASSES and any(self._owns(ctx, engine) for ctx in wants[engine.cls]):
                    engine.owner_active = max(engine.owner_active, time + 1)
        options = {}
        wake = None
        for ctx in ready:
            allowed, later = self._allowed(ctx, wants, time)
            if allowed:
                options[ctx.index] = allowed
            elif later is not None:
                wake = later if wake is None else min(wake, later)
        if wake is not None:
            self._push(max(wake, time + 1), "_on_wake")
        if not options:
            return False, True
        rank = {index: (time - self.contexts[index].ready_since >= self.starvation,
                        self.machine.contexts[index].priority) for index in options}
        best = max(rank.values())
        n = len(self.contexts)
        for step in range(1, n + 1):
            index = (self._dispatch_last + step) % n
            if index in options and rank[index] == best:
                break
        self._dispatch_last = index
        ctx = self.contexts[index]
        allowed = options[index]
        owned = [engine for engine in allowed if self._owns(ctx, engine)]
        engine = (owned or allowed)[0]
        cls = ctx.head.cls
        if policy == Policy.OPERATOR and cls in self._class_holder and self._class_holder[cls] != index:
            self._class_holder[cls], self._class_since[cls] = index, time + 1
        self._dispatch_to(ctx, engine, time)
        return True, len(ready) > 1

    def _reclaim_waits(self, time):
        """The RTL's ``reclaim_wait``/``reclaim_max``, under every policy: a context waits to reclaim an
        engine in every cycle in which it is ready, is not dispatched, and an engine of its head's class
        that it owns runs another context's uTOp. The state only changes at events, so a wait is an
        interval from the settle that opens it to the one that closes it. An engine counts as busy from
        the cycle after its dispatch (its ``start``), as the RTL's ``busy`` rises."""
        for ctx in self.contexts:
            waiting = False
            if self._ready(ctx, time):
                waiting = any(engine.ctx is not None and engine.start <= time and not engine.owned
                              and self._owns(ctx, engine) for engine in self.by_class[ctx.head.cls])
            if waiting and ctx.reclaim_since is None:
                ctx.reclaim_since = time
            elif not waiting and ctx.reclaim_since is not None:
                wait = time - ctx.reclaim_since
                ctx.reclaim_wait += wait
                ctx.reclaim_max = max(ctx.reclaim_max, wait)
                ctx.reclaim_since = None

    def _temporal_slice(self, time):
        """Advance the ``temporal`` slices to ``time``: whenever a slice ends (or its holder stops
        running) the next running context, round-robin, holds the pNPU for QUANTUM x (priority + 1)."""
        n = len(self.contexts)
        while True:
            running = [ctx for ctx in self.contexts if ctx.status == ContextStatus.RUNNING]
            if not running:
                return
            holder = self.contexts[self._holder]
            if self._slice_end > time and holder.status == ContextStatus.RUNNING:
                break
            at = self._slice_end if holder.status == ContextStatus.RUNNING else time
            for step in range(1, n + 1):
                candidate = self.contexts[(self._holder + step) % n]
                if candidate.status == ContextStatus.RUNNING:
                    break
            self._holder = candidate.index
            self._slice_end = at + self.quantum * (self.machine.contexts[candidate.index].priority + 1)
        self._push(self._slice_end, "_on_wake")

    def _allowed(self, ctx, wants, time):
        """Free engines ``ctx``'s head may be dispatched to now, and when to look again if none."""
        cls = ctx.head.cls
        free = [engine for engine in self.by_class[cls] if engine.ctx is None]
        policy = self.policy
        if policy == Policy.STATIC:
            return [engine for engine in free if self._owns(ctx, engine)], None
        if policy == Policy.HARVEST:
            allowed, later = [], None
            harvestable = ctx.head.cost != 0 and ctx.head.cost <= self.harvest_cost
            for engine in free:
                if self._owns(ctx, engine):
                    allowed.append(engine)
                elif cls in HARVESTED_CLASSES and harvestable:
                    if any(self._owns(other, engine) for other in wants[cls]):
                        continue
                    idle_from = engine.owner_active + self.harvest_grace
                    if time >= idle_from:
                        allowed.append(engine)
                    else:
                        later = idle_from if later is None else min(later, idle_from)
            return allowed, later
        if policy == Policy.TEMPORAL:
            return (free if self._holder == ctx.index else []), None
        if cls not in self._class_holder:
            return free, None
        holder = self._class_holder[cls]
        class_idle = all(engine.ctx is None for engine in self.by_class[cls])
        if class_idle:
            return free, None
        if holder != ctx.index:
            since = ctx.ready_since if ctx.ready_since is not None else time
            return [], since + self.starvation
        slice_end = self._class_since[cls] + self.quantum * (self.machine.contexts[holder].priority + 1)
        yields = time >= slice_end and any(
            other.index != holder and time - other.ready_since >= self.starvation for other in wants[cls])
        if yields:
            return [], None
        later = slice_end if any(other.index != holder for other in wants[cls]) else None
        return free, later
