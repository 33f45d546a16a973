"""The hypervisor: sells vNPUs pay-as-you-go on one or more pNPUs.

A :class:`Hypervisor` owns pNPU devices (any backend). :meth:`Hypervisor.create_vnpu` allocates a
hardware context, owned MEs and VEs, and scratchpad and HBM windows on one pNPU, programs the
context table with ``ctx.*`` commands (windows are scrubbed when a vNPU is destroyed, so every
new vNPU starts on zeroed memory). The allocator is all-or-nothing: a
request that cannot be met raises :class:`AllocationError` and changes nothing.

A :class:`VNPU` loads a program image, runs it (:meth:`VNPU.run`, blocking) or submits it
(:meth:`VNPU.submit`, a :class:`concurrent.futures.Future`); while futures are pending a driver
thread clocks the pNPUs, so the vNPUs of one pNPU run concurrently under the hardware scheduler.
:meth:`VNPU.usage` reads the context's hardware counters (engine-cycles on owned and harvested
engines, bytes moved) plus memory-time, and :class:`PriceTable` turns a :class:`Usage` into a
:class:`Bill`.
"""

import itertools
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from pathlib import Path

from tcloud.isa import ContextStatus, EngineClass, Instr, Policy, ProgramImage, get_config, parse_policy
from tcloud.isa.errors import ImageError, TcloudError
from tcloud.isa.csr import HARVEST_COST_RESET

from .device import make_device
from .execute import DeviceFault, HbmWindow, engine_classes, input_writes, program_writes, read_symbols

KIB, MIB = 1024, 1024 * 1024
DRIVER_YIELD_SECONDS = 1e-4
SRAM_ALIGN = 1024
"""Scratchpad windows start on KiB boundaries (and are KiB multiples): every bank alignment."""


class VNPUSpecError(TcloudError, ValueError):
    """A vNPU specification with a missing, unknown or out-of-range field."""


class AllocationError(TcloudError):
    """No pNPU can host the requested vNPU; nothing was allocated."""


class VNPUStateError(TcloudError):
    """An operation that the vNPU's state does not allow (no program loaded, destroyed, ...)."""


@dataclass(frozen=True)
class VNPUSpec:
    """What a tenant buys.

    Parameters
    ----------
    mes, ves : int
        Matrix and vector engines the vNPU owns (0 is allowed for a class the program never uses).
    dmas : int
        DMA engines the vNPU owns alone (as MIG gives each instance its copy engines); 0 (default)
        shares the pool of DMA engines that no vNPU owns alone.
    sram_kib : int
        Scratchpad window in KiB.
    hbm_mib : int
        HBM window in MiB (program, data, inputs and outputs).
    priority : int
        Scheduling weight 0..255 (higher is served first; waiting lifts anyone eventually).
    budget_cycles : int
        Watchdog: a run longer than this faults with ``WATCHDOG`` (0: unlimited).
    """

    mes: int = 1
    ves: int = 1
    sram_kib: int = 64
    hbm_mib: int = 4
    priority: int = 0
    budget_cycles: int = 0
    dmas: int = 0

    _LIMITS = {"mes": (0, 16), "ves": (0, 16), "dmas": (0, 16), "sram_kib": (1, 1 << 20), "hbm_mib": (1, 1 << 20),
               "priority": (0, 255), "budget_cycles": (0, (1 << 32) - 1)}

    def __post_init__(self):
        for name, (low, high) in self._LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise VNPUSpecError(f"vNPU spec field {name} must be an integer, got {value!r}")
            if not low <= value <= high:
                raise VNPUSpecError(f"vNPU spec field {name}={value} is outside {low}..{high}")
        if self.mes == 0 and self.ves == 0:
            raise VNPUSpecError("a vNPU needs at least one engine: mes and ves are both 0")

    @classmethod
    def from_dict(cls, values):
        """Build a spec from a mapping (e.g. parsed YAML), rejecting unknown keys by name."""
        if not isinstance(values, dict):
            raise VNPUSpecError(f"a vNPU spec must be a mapping, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise VNPUSpecError(f"unknown vNPU spec field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class Usage:
    """What a vNPU consumed (cumulative since it was created).

    Engine-cycles count cycles an engine spent on this vNPU's uTOps, split into engines it owns and
    engines it harvested from others. ``sram_kib_cycles`` and ``hbm_mib_cycles`` are memory-time:
    window size times cycles the vNPU has existed. ``reclaim_wait_cycles`` counts cycles a ready uTOp
    waited while an engine the vNPU owns ran another vNPU's uTOp, ``reclaim_max_cycles`` the longest
    such wait (at most :attr:`Hypervisor.reclaim_bound`). Backends without timing report 0 cycles.
    """

    runs: int = 0
    active_cycles: int = 0
    me_owned_cycles: int = 0
    me_harvested_cycles: int = 0
    ve_owned_cycles: int = 0
    ve_harvested_cycles: int = 0
    dma_cycles: int = 0
    hbm_bytes_read: int = 0
    hbm_bytes_written: int = 0
    macs: int = 0
    sram_kib_cycles: int = 0
    hbm_mib_cycles: int = 0
    reclaim_wait_cycles: int = 0
    reclaim_max_cycles: int = 0


@dataclass(frozen=True)
class BillLine:
    item: str
    quantity: float
    unit_price: float
    amount: float


@dataclass(frozen=True)
class Bill:
    """An itemised bill; ``total`` is the sum of the lines' amounts."""

    lines: tuple
    total: float

    def __str__(self):
        """The lines with a non-zero quantity, then the total."""
        rows = [f"  {line.item:<22} {line.quantity:>14,.6g} x {line.unit_price:<8.3g} = {line.amount:10.6f}"
                for line in self.lines if line.quantity]
        return "\n".join(rows + [f"  {'total':<22} {'':>14}   {'':8}   {self.total:10.6f}"])


@dataclass(frozen=True)
class PriceTable:
    """Prices in credits per unit; harvested engine-cycles are cheaper than owned ones.

    Owned engines are billed for every engine-cycle they do work; the reservation itself is billed
    as memory-time only, so an idle vNPU costs only its memory.
    """

    me_cycle: float = 1e-6
    me_harvested_cycle: float = 0.5e-6
    ve_cycle: float = 0.25e-6
    ve_harvested_cycle: float = 0.125e-6
    dma_cycle: float = 0.1e-6
    hbm_gib_moved: float = 0.01
    sram_kib_cycle: float = 1e-10
    hbm_mib_cycle: float = 1e-11

    def bill(self, usage):
        """Return the :class:`Bill` for a :class:`Usage`."""
        items = (
            ("ME cycles (owned)", usage.me_owned_cycles, self.me_cycle),
            ("ME cycles (harvested)", usage.me_harvested_cycles, self.me_harvested_cycle),
            ("VE cycles (owned)", usage.ve_owned_cycles, self.ve_cycle),
            ("VE cycles (harvested)", usage.ve_harvested_cycles, self.ve_harvested_cycle),
            ("DMA cycles", usage.dma_cycles, self.dma_cycle),
            ("HBM GiB moved", (usage.hbm_bytes_read + usage.hbm_bytes_written) / (1 << 30), self.hbm_gib_moved),
            ("SRAM KiB-cycles", usage.sram_kib_cycles, self.sram_kib_cycle),
            ("HBM MiB-cycles", usage.hbm_mib_cycles, self.hbm_mib_cycle),
        )
        lines = tuple(BillLine(item, quantity, price, quantity * price) for item, quantity, price in items)
        return Bill(lines, sum(line.amount for line in lines))


@dataclass(frozen=True)
class RunRecord:
    """One finished run.

    Attributes
    ----------
    latency_cycles : int or None
        Cycles from ``ctx.start`` to halt (``None`` on the untimed golden model).
    outputs : dict
    finish_cycle : int or None
        pNPU cycle counter when the hypervisor saw the run finish (within ``poll_cycles``).
    engine_cycles : dict
        Engine-cycles this run used per class (``me``, ``ve``, ``dma``; owned plus harvested).
    """

    latency_cycles: int | None
    outputs: dict
    finish_cycle: int | None = None
    engine_cycles: dict = field(default_factory=dict)


class _FreeList:
    """First-fit allocator of contiguous ranges in ``[0, size)``."""

    def __init__(self, size):
        self.size = size
        self.used = {}  # base -> length

    def find(self, length, align):
        cursor = 0
        for base in sorted(self.used):
            if base - cursor >= length:
                return cursor
            cursor = -(-(base + self.used[base]) // align) * align
        return cursor if self.size - cursor >= length else None

    def largest_free(self, align):
        cursor, best = 0, 0
        for base in sorted(self.used):
            best = max(best, base - cursor)
            cursor = -(-(base + self.used[base]) // align) * align
        return max(best, self.size - cursor)


@dataclass
class _PNPU:
    index: int
    device: object
    free_contexts: list
    me_owners: list
    ve_owners: list
    dma_owners: list
    sram: _FreeList
    hbm: _FreeList
    vnpus: dict = field(default_factory=dict)  # context -> VNPU


@dataclass(frozen=True)
class _Grant:
    pnpu: _PNPU
    context: int
    me_mask: int
    ve_mask: int
    dma_mask: int
    sram_base: int
    hbm_base: int


class Hypervisor:
    """Manage vNPUs on ``pnpus`` pNPUs of one configuration.

    Parameters
    ----------
    config : str or ArchConfig
    backend : str
        ``"verilator"`` (default), ``"amaranth"`` or ``"functional"`` (golden model, untimed).
    policy : Policy or str
        Scheduling policy programmed into every pNPU (``static``, ``harvest``, ``temporal``,
        ``operator``).
    pnpus : int
        Number of pNPUs.
    oversubscribe : bool
        When the free engines do not cover a request, let the new vNPU co-own engines with
        existing vNPUs (time-shared by the hardware scheduler) instead of failing.
    prices : PriceTable
    poll_cycles : int
        Cycles the driver thread runs between checks for finished runs.
    quantum, starvation : int, optional
        Temporal-policy slice per priority step and the anti-starvation threshold, in cycles
        (the ``QUANTUM`` and ``STARVATION`` registers; defaults: the hardware's reset values).
    hbm_timing : dict, optional
        HBM model options of the RTL backends (see :func:`~tcloud.runtime.device.make_device`).
    reclaim_cycles : int, optional
        Under ``harvest``: the longest an owner may wait for an engine another vNPU harvested. The
        hypervisor programs the largest ``HARVEST_COST`` whose :func:`~tcloud.rtl.reclaim_bound`
        fits (uTOps declaring more are not harvested). Default: the hardware's reset value;
        :attr:`reclaim_bound` gives the resulting bound either way (``None`` when untimed).
    harvest_grace : int, optional
        Under ``harvest``: cycles an engine's owners must have left it idle before it is harvested
        (the ``HARVEST_GRACE`` register; default: its reset value, 1,024).
    vcd : path, optional
        RTL backends: write each pNPU's waveform (see :func:`~tcloud.runtime.device.make_device`),
        to ``vcd`` itself with one pNPU, else to ``<stem>.pnpu<i><suffix>``; complete after
        :meth:`close`.

    Raises
    ------
    ConfigError, DeviceError, ValueError
        Unknown config, backend or policy.
    """

    def __init__(self, config="small", backend="verilator", policy="harvest", *, pnpus=1, oversubscribe=False,
                 prices=PriceTable(), poll_cycles=2048, hbm_timing=None, quantum=None, starvation=None,
                 reclaim_cycles=None, harvest_grace=None, vcd=None):
        self.config = get_config(config)
        self.policy = parse_policy(policy)
        for name, value in (("pnpus", pnpus), ("poll_cycles", poll_cycles)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.backend, self.oversubscribe, self.prices, self.poll_cycles = backend, oversubscribe, prices, poll_cycles
        cfg = self.config
        self.pnpus = []
        self.reclaim_bound = None
        for index in range(pnpus):
            waves = None if vcd is None or pnpus == 1 else Path(vcd).with_suffix(f".pnpu{index}{Path(vcd).suffix}")
            device = make_device(backend, cfg, vcd=waves or vcd, **(hbm_timing or {}))
            harvest_cost = self._harvest_cost(device, reclaim_cycles)
            device.set_policy(self.policy, quantum=quantum, starvation=starvation, harvest_cost=harvest_cost,
                              harvest_grace=harvest_grace)
            self.pnpus.append(_PNPU(index, device, list(range(cfg.contexts)), [set() for _ in range(cfg.me_count)],
                                    [set() for _ in range(cfg.ve_count)], [set() for _ in range(cfg.dma_count)],
                                    _FreeList(cfg.sram_bytes), _FreeList(cfg.hbm_bytes)))
        self._names = itertools.count()
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)
        self._pending = []  # (vnpu, future, inputs) in submission order
        self._closed = False
        self._error = None
        self._driver = threading.Thread(target=self._drive, name="tcloud-hypervisor", daemon=True)
        self._driver.start()

    def _harvest_cost(self, device, reclaim_cycles):
        """HARVEST_COST for ``reclaim_cycles`` on ``device``; sets :attr:`reclaim_bound`."""
        latency = getattr(device, "hbm_worst_latency", None)
        if reclaim_cycles is not None and (isinstance(reclaim_cycles, bool) or not isinstance(reclaim_cycles, int)):
            raise ValueError(f"reclaim_cycles must be an integer number of cycles, got {reclaim_cycles!r}")
        if latency is None:
            return None
        from tcloud.rtl import harvest_cost_for, reclaim_bound  # timed backends only: keeps the runtime free of Amaranth

        cost = HARVEST_COST_RESET if reclaim_cycles is None else harvest_cost_for(self.config, latency, reclaim_cycles)
        if cost == 0:
            raise ValueError(f"reclaim_cycles={reclaim_cycles} is below the shortest reclaim bound of config "
                             f"{self.config.name!r} at HBM latency {latency} "
                             f"({reclaim_bound(self.config, latency, 1)} cycles)")
        self.reclaim_bound = reclaim_bound(self.config, latency, cost)
        return cost

    # --- allocation ---------------------------------------------------------------------------

    def create_vnpu(self, spec, name=None):
        """Allocate and configure a vNPU.

        Parameters
        ----------
        spec : VNPUSpec or dict
        name : str, optional
            Label used in reports (default ``vnpu<N>``).

        Raises
        ------
        VNPUSpecError
            A malformed spec.
        AllocationError
            No pNPU has a free context, the engines (unless ``oversubscribe``) or contiguous
            windows of the sizes asked for; the message says what each pNPU lacks.
        """
        spec = spec if isinstance(spec, VNPUSpec) else VNPUSpec.from_dict(spec)
        cfg = self.config
        for what, asked, have in (("MEs", spec.mes, cfg.me_count), ("VEs", spec.ves, cfg.ve_count),
                                  ("DMA engines", spec.dmas, cfg.dma_count),
                                  ("KiB of scratchpad", spec.sram_kib, cfg.sram_kib),
                                  ("MiB of HBM", spec.hbm_mib, cfg.hbm_mib)):
            if asked > have:
                raise AllocationError(f"a vNPU asks for {asked} {what}, but a {cfg.name!r} pNPU has only {have}")
        with self._lock:
            self._check_open()
            reasons = []
            for pnpu in self.pnpus:
                grant = self._fit(pnpu, spec, reasons)
                if grant is not None:
                    return self._commit(grant, spec, name)
            raise AllocationError(f"cannot allocate {spec}: " + "; ".join(reasons))

    def _fit(self, pnpu, spec, reasons):
        lacks = []
        if not pnpu.free_contexts:
            lacks.append(f"all {self.config.contexts} contexts in use")
        masks = []
        for what, owners, asked in (("MEs", pnpu.me_owners, spec.mes), ("VEs", pnpu.ve_owners, spec.ves)):
            free = [e for e, o in enumerate(owners) if not o]
            if len(free) >= asked:
                chosen = free[:asked]
            elif self.oversubscribe:
                chosen = sorted(range(len(owners)), key=lambda e: (len(owners[e]), e))[:asked]
            else:
                lacks.append(f"{len(free)} free {what} (asked {asked})")
                chosen = []
            masks.append(sum(1 << e for e in chosen))
        masks.append(self._dma_mask(pnpu, spec, lacks))
        sram_base = pnpu.sram.find(spec.sram_kib * KIB, SRAM_ALIGN)
        if sram_base is None:
            lacks.append(f"largest free scratchpad window {pnpu.sram.largest_free(SRAM_ALIGN) // KIB} KiB "
                         f"(asked {spec.sram_kib})")
        hbm_base = pnpu.hbm.find(spec.hbm_mib * MIB, MIB)
        if hbm_base is None:
            lacks.append(f"largest free HBM window {pnpu.hbm.largest_free(MIB) // MIB} MiB (asked {spec.hbm_mib})")
        if lacks:
            reasons.append(f"pNPU {pnpu.index}: " + ", ".join(lacks))
            return None
        return _Grant(pnpu, pnpu.free_contexts[0], *masks, sram_base, hbm_base)

    def _dma_mask(self, pnpu, spec, lacks):
        """DMA engines for ``spec``: ``spec.dmas`` engines nobody uses yet, or the shared pool (every
        engine no vNPU owns alone; a pool engine is never taken away from the vNPUs sharing it)."""
        owners = pnpu.dma_owners
        if spec.dmas == 0:
            pool = [e for e, holders in enumerate(owners) if all(v.spec.dmas == 0 for v in holders)]
            if not pool:
                lacks.append("no shared DMA engine (every one is owned alone; ask for dmas >= 1)")
            return sum(1 << e for e in pool)
        free = [e for e, holders in enumerate(owners) if not holders]
        if len(free) < spec.dmas:
            lacks.append(f"{len(free)} DMA engines nobody uses (asked {spec.dmas})")
            return 0
        return sum(1 << e for e in free[:spec.dmas])

    def _commit(self, grant, spec, name):
        pnpu, ctx = grant.pnpu, grant.context
        device = pnpu.device
        for command in (Instr("ctx.hbm", ctx=ctx, base=grant.hbm_base, size=spec.hbm_mib * MIB),
                        Instr("ctx.sram", ctx=ctx, base=grant.sram_base, size=spec.sram_kib * KIB),
                        Instr("ctx.engines", ctx=ctx, me_mask=grant.me_mask, ve_mask=grant.ve_mask,
                              dma_mask=grant.dma_mask),
                        Instr("ctx.prio", ctx=ctx, priority=spec.priority),
                        Instr("ctx.budget", ctx=ctx, cycles=spec.budget_cycles)):
            device.host(command)
        pnpu.free_contexts.remove(ctx)
        pnpu.sram.used[grant.sram_base] = spec.sram_kib * KIB
        pnpu.hbm.used[grant.hbm_base] = spec.hbm_mib * MIB
        vnpu = VNPU(self, grant, spec, name or f"vnpu{next(self._names)}")
        for owners, mask in ((pnpu.me_owners, grant.me_mask), (pnpu.ve_owners, grant.ve_mask),
                             (pnpu.dma_owners, grant.dma_mask)):
            for e, holders in enumerate(owners):
                if mask >> e & 1:
                    holders.add(vnpu)
        pnpu.vnpus[ctx] = vnpu
        return vnpu

    def _release(self, vnpu):
        pnpu, grant = vnpu._pnpu, vnpu._grant
        for owners in (pnpu.me_owners, pnpu.ve_owners, pnpu.dma_owners):
            for holders in owners:
                holders.discard(vnpu)
        del pnpu.sram.used[grant.sram_base]
        del pnpu.hbm.used[grant.hbm_base]
        del pnpu.vnpus[grant.context]
        pnpu.free_contexts.append(grant.context)
        pnpu.free_contexts.sort()

    @property
    def vnpus(self):
        """Every live vNPU, by pNPU and context."""
        return [v for pnpu in self.pnpus for _, v in sorted(pnpu.vnpus.items())]

    def stats(self):
        """Per-pNPU device statistics (cycles, engine busy cycles where the backend has timing)."""
        with self._lock:
            return [pnpu.device.stats() for pnpu in self.pnpus]

    # --- running ------------------------------------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise VNPUStateError("the hypervisor is closed")
        if self._error is not None:
            raise VNPUStateError(f"the hypervisor's driver failed: {self._error!r}")

    def _submit(self, vnpu, inputs):
        future = Future()
        with self._work:
            self._check_open()
            self._pending.append((vnpu, future, inputs))
            self._work.notify_all()
        return future

    def wait(self, futures=None):
        """Block until the given futures (default: everything submitted) have finished."""
        with self._work:
            targets = list(futures) if futures is not None else [f for _, f, _ in self._pending]
        for future in targets:
            future.exception()

    def _drive(self):
        while True:
            with self._work:
                while not self._closed and not self._pending:
                    self._work.wait()
                if self._closed:
                    return
                try:
                    self._step()
                except Exception as exc:  # a backend failure fails every waiting run, never silently
                    self._error = exc
                    for _, future, _ in self._pending:
                        future.set_exception(exc)
                    self._pending.clear()
            time.sleep(DRIVER_YIELD_SECONDS)  # let callers (submit, kill, usage) take the lock

    def _step(self):
        """Start runs on idle contexts, clock every busy pNPU, and finish runs that stopped."""
        for vnpu, future, inputs in list(self._pending):
            if vnpu._running is None and future.set_running_or_notify_cancel():
                try:
                    vnpu._start(inputs)
                    vnpu._running = future
                except Exception as exc:  # bad inputs fail this run only
                    future.set_exception(exc)
            if future.done():
                self._pending.remove((vnpu, future, inputs))
        for pnpu in self.pnpus:
            if any(v._running is not None for v in pnpu.vnpus.values()):
                pnpu.device.run(self.poll_cycles)
        for vnpu, future, inputs in list(self._pending):
            if vnpu._running is future and vnpu._finish_if_stopped():
                self._pending.remove((vnpu, future, inputs))

    def close(self):
        """Stop the driver thread; pending runs fail with :class:`VNPUStateError`."""
        with self._work:
            self._closed = True
            for _, future, _ in self._pending:
                if not future.done():
                    future.set_exception(VNPUStateError("the hypervisor was closed before the run finished"))
            self._pending.clear()
            self._work.notify_all()
        self._driver.join()
        for pnpu in self.pnpus:
            close = getattr(pnpu.device, "close", None)
            if close is not None:
                close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VNPU:
    """A tenant's virtual NPU (create it with :meth:`Hypervisor.create_vnpu`).

    Attributes
    ----------
    name : str
    spec : VNPUSpec
    pnpu : int
        Index of the pNPU it lives on.
    context : int
        Its hardware context there.
    me_mask, ve_mask, dma_mask : int
        Engines it owns (DMA engines alone when ``spec.dmas`` > 0, else shared with other vNPUs).
    runs : list of RunRecord
        Finished runs, oldest first.
    """

    def __init__(self, hypervisor, grant, spec, name):
        self._hv, self._grant, self._pnpu = hypervisor, grant, grant.pnpu
        self.name, self.spec = name, spec
        self.pnpu, self.context = grant.pnpu.index, grant.context
        self.me_mask, self.ve_mask, self.dma_mask = grant.me_mask, grant.ve_mask, grant.dma_mask
        self._window = HbmWindow(grant.hbm_base, spec.hbm_mib * MIB)
        self.image = None
        self.runs = []
        self.destroyed = False
        self._running = None
        self._engine_totals = {}
        self._created_at = self._cycles()

    def __repr__(self):
        return (f"VNPU({self.name!r}, pnpu={self.pnpu}, context={self.context}, mes={self.me_mask:#x}, "
                f"ves={self.ve_mask:#x}, dmas={self.dma_mask:#x}{'' if self.spec.dmas else ' (shared)'}, "
                f"sram={self.spec.sram_kib} KiB, hbm={self.spec.hbm_mib} MiB)")

    @property
    def config(self):
        return self._hv.config

    @property
    def _device(self):
        return self._pnpu.device

    def _cycles(self):
        stats = self._pnpu.device.stats()
        return stats.get("cycles", 0)

    def _check_live(self):
        if self.destroyed:
            raise VNPUStateError(f"{self.name} was destroyed")

    def load(self, image):
        """Load a program image (its code and data segments) into the vNPU's HBM window.

        Raises
        ------
        ImageError
            An image built for another config, one whose footprint exceeds the vNPU's windows, or
            one with uTOps of an engine class the vNPU has no engine of under the ``static`` and
            ``harvest`` policies (where the hardware would fault them ``NO_ENGINE``).
        HostAccessError
            A piece of the image outside the vNPU's HBM window (checked on every host access).
        VNPUStateError
            The vNPU is destroyed or a run is in flight.
        """
        if isinstance(image, (bytes, bytearray)):
            image = ProgramImage.from_bytes(image, self.config)
        image.check_config(self.config)
        for what, need, have in (("HBM", image.hbm_bytes, self.spec.hbm_mib * MIB),
                                 ("scratchpad", image.sram_bytes, self.spec.sram_kib * KIB)):
            if need > have:
                raise ImageError(f"the image needs {need} bytes of {what} but {self.name} has a "
                                 f"{have}-byte window; create the vNPU with a larger one")
        if self._hv.policy in (Policy.STATIC, Policy.HARVEST):
            masks = {EngineClass.ME: (self.me_mask, "mes"), EngineClass.VE: (self.ve_mask, "ves"),
                     EngineClass.DMA: (self.dma_mask, "dmas")}
            for cls in sorted(engine_classes(image)):
                mask, field = masks[cls]
                if not mask:
                    raise ImageError(f"the program runs {cls.name} uTOps but {self.name} has no {cls.name} "
                                     f"({field}={getattr(self.spec, field)}); under the "
                                     f"{self._hv.policy.name.lower()} policy they would fault NO_ENGINE")
        with self._hv._lock:
            self._check_live()
            if self._running is not None or any(v is self for v, _, _ in self._hv._pending):
                raise VNPUStateError(f"{self.name} has runs in flight; wait for them before loading")
            for address, data in program_writes(self._window, image):
                self._device.write_hbm(address, data)
            self.image = image

    def submit(self, inputs):
        """Queue a run with ``inputs`` and return a Future of its outputs (dict of arrays).

        Runs of one vNPU execute in submission order; runs of different vNPUs on one pNPU run
        concurrently. The future raises :class:`DeviceFault` if the run faulted and
        :class:`ImageError` for inputs that do not match the image.
        """
        with self._hv._lock:
            self._check_live()
            if self.image is None:
                raise VNPUStateError(f"{self.name} has no program; call load() first")
            input_writes(self._window, self.image, inputs)  # bad inputs fail here, not in the driver
            return self._hv._submit(self, dict(inputs))

    def run(self, inputs):
        """Run the loaded program on ``inputs`` and return its outputs (blocking)."""
        return self.submit(inputs).result()

    def _start(self, inputs):
        for address, data in input_writes(self._window, self.image, inputs):
            self._device.write_hbm(address, data)
        self._device.host(Instr("ctx.start", ctx=self.context, pc=self.image.entry))

    def _finish_if_stopped(self):
        info = self._device.context(self.context)
        if info.status == ContextStatus.RUNNING:
            return False
        future, self._running = self._running, None
        if info.status == ContextStatus.FAULTED:
            future.set_exception(DeviceFault(self.context, info.fault, info.fault_pc, info.detail))
            return True
        try:
            outputs = read_symbols(self._device.read_hbm, self._window, self.image.outputs)
        except TcloudError as exc:  # this vNPU's failure, never the driver's
            future.set_exception(exc)
            return True
        engine = info.timing.get("engine_cycles", {})
        totals = {"me": engine.get("me_owned", 0) + engine.get("me_harvested", 0),
                  "ve": engine.get("ve_owned", 0) + engine.get("ve_harvested", 0), "dma": engine.get("dma_cycles", 0)}
        used = {cls: totals[cls] - self._engine_totals.get(cls, 0) for cls in totals}
        self._engine_totals = totals
        self.runs.append(RunRecord(info.timing.get("run_cycles"), outputs, getattr(self._device, "cycles", None),
                                   used))
        future.set_result(outputs)
        return True

    def usage(self):
        """The :class:`Usage` so far (hardware counters of the context plus memory-time)."""
        with self._hv._lock:
            self._check_live()
            info = self._device.context(self.context)
            alive = self._cycles() - self._created_at
        counters, engine = info.counters, info.timing.get("engine_cycles", {})
        return Usage(
            runs=len(self.runs), active_cycles=info.timing.get("active_cycles", 0),
            me_owned_cycles=engine.get("me_owned", 0), me_harvested_cycles=engine.get("me_harvested", 0),
            ve_owned_cycles=engine.get("ve_owned", 0), ve_harvested_cycles=engine.get("ve_harvested", 0),
            dma_cycles=engine.get("dma_cycles", 0), hbm_bytes_read=counters["hbm_bytes_read"],
            hbm_bytes_written=counters["hbm_bytes_written"], macs=counters["macs"],
            sram_kib_cycles=self.spec.sram_kib * alive, hbm_mib_cycles=self.spec.hbm_mib * alive,
            reclaim_wait_cycles=info.timing.get("reclaim_wait_cycles", 0),
            reclaim_max_cycles=info.timing.get("reclaim_max_cycles", 0))

    def bill(self, prices=None):
        """The :class:`Bill` for :meth:`usage` under ``prices`` (default: the hypervisor's)."""
        return (prices or self._hv.prices).bill(self.usage())

    def kill(self):
        """Stop the run in flight (it fails with :class:`DeviceFault` ``KILLED``); queued runs go on."""
        with self._hv._lock:
            self._check_live()
            self._device.host(Instr("ctx.kill", ctx=self.context))

    def destroy(self):
        """Kill any run in flight, scrub the windows and return every resource to the pool.

        Queued runs fail with :class:`VNPUStateError`. Destroying twice is an error.
        """
        with self._hv._work:
            self._check_live()
            for entry in [p for p in self._hv._pending if p[0] is self]:
                self._hv._pending.remove(entry)
                if not entry[1].done():
                    entry[1].set_exception(VNPUStateError(f"{self.name} was destroyed before the run finished"))
            self._running = None
            device = self._device
            device.host(Instr("ctx.kill", ctx=self.context))
            while device.context(self.context).status == ContextStatus.RUNNING:
                device.run(self._hv.poll_cycles)
            device.host(Instr("ctx.scrub", ctx=self.context))
            self._hv._release(self)
            self.destroyed = True
