"""A tenant's handle: :class:`VNPU` loads a program image into its windows, runs or submits it, reads
its :class:`~.billing.Usage` from the context's hardware counters, and kills or destroys it.

Loading and input placement go through :mod:`tcloud.runtime.execute`, the same path as
:func:`~tcloud.runtime.run_image`.
"""

from dataclasses import dataclass, field

from tcloud.isa import ContextStatus, EngineClass, Instr, Policy, ProgramImage
from tcloud.isa.errors import ImageError, TcloudError

from ..execute import DeviceFault, HbmWindow, engine_classes, input_writes, program_writes, read_symbols
from .allocator import release
from .billing import Usage
from .spec import KIB, MIB


class VNPUStateError(TcloudError):
    """An operation that the vNPU's state does not allow (no program loaded, destroyed, ...)."""


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

        ``image`` may also be a compiled model (:class:`~tcloud.runtime.CompiledModel`, anything
        with an ``image`` attribute): run it with ``compiled.run(inputs, vnpu=this)``.

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
        image = getattr(image, "image", image)
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
            release(self)
            self.destroyed = True
