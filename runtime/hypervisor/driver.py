"""The :class:`Hypervisor`: sells vNPUs pay-as-you-go on one or more pNPUs and drives them.

A :class:`Hypervisor` owns pNPU devices (any backend). :meth:`Hypervisor.create_vnpu` allocates a
hardware context, owned MEs and VEs, and scratchpad and HBM windows on one pNPU (see
:mod:`.allocator`) and programs the context table with ``ctx.*`` commands (windows are scrubbed when
a vNPU is destroyed, so every new vNPU starts on zeroed memory). While runs are pending a driver
thread clocks the pNPUs, so the vNPUs of one pNPU run concurrently under the hardware scheduler.
"""

import itertools
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

from tcloud.isa import Instr, get_config, parse_policy
from tcloud.isa.csr import HARVEST_COST_RESET

from ..backends import make_device
from .allocator import AllocationError, FreeList, PNPUState, fit, reserve
from .billing import PriceTable
from .spec import KIB, MIB, VNPUSpec
from .vnpu import VNPU, VNPUStateError

DRIVER_YIELD_SECONDS = 1e-4


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
        HBM model options of the RTL backends (see :func:`~tcloud.runtime.backends.make_device`).
    reclaim_cycles : int, optional
        Under ``harvest``: the longest an owner may wait for an engine another vNPU harvested. The
        hypervisor programs the largest ``HARVEST_COST`` whose :func:`~tcloud.rtl.reclaim_bound`
        fits (uTOps declaring more are not harvested). Default: the hardware's reset value;
        :attr:`reclaim_bound` gives the resulting bound either way (``None`` when untimed).
    harvest_grace : int, optional
        Under ``harvest``: cycles an engine's owners must have left it idle before it is harvested
        (the ``HARVEST_GRACE`` register; default: its reset value, 1,024).
    vcd : path, optional
        RTL backends: write each pNPU's waveform (see :func:`~tcloud.runtime.backends.make_device`),
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
            self.pnpus.append(PNPUState(index, device, list(range(cfg.contexts)), [set() for _ in range(cfg.me_count)],
                                    [set() for _ in range(cfg.ve_count)], [set() for _ in range(cfg.dma_count)],
                                    FreeList(cfg.sram_bytes), FreeList(cfg.hbm_bytes)))
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
                grant = fit(pnpu, spec, cfg, self.oversubscribe, reasons)
                if grant is not None:
                    return self._commit(grant, spec, name)
            raise AllocationError(f"cannot allocate {spec}: " + "; ".join(reasons))

    def _commit(self, grant, spec, name):
        ctx = grant.context
        for command in (Instr("ctx.hbm", ctx=ctx, base=grant.hbm_base, size=spec.hbm_mib * MIB),
                        Instr("ctx.sram", ctx=ctx, base=grant.sram_base, size=spec.sram_kib * KIB),
                        Instr("ctx.engines", ctx=ctx, me_mask=grant.me_mask, ve_mask=grant.ve_mask,
                              dma_mask=grant.dma_mask),
                        Instr("ctx.prio", ctx=ctx, priority=spec.priority),
                        Instr("ctx.budget", ctx=ctx, cycles=spec.budget_cycles)):
            grant.pnpu.device.host(command)
        vnpu = VNPU(self, grant, spec, name or f"vnpu{next(self._names)}")
        reserve(grant, spec, vnpu)
        return vnpu

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

    @contextmanager
    def start_together(self):
        """A block whose submissions all start on the same cycle.

        The driver waits until the block ends, then starts every run submitted in it (on idle vNPUs)
        in one step, so their timings do not depend on when the driver thread happened to wake; used
        to measure a run next to busy co-tenants. Waiting for a run inside the block (``result()``,
        :meth:`wait`) deadlocks: the driver cannot step until the block ends.
        """
        with self._work:
            yield

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
