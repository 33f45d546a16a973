"""The ``Device`` protocol every backend implements, and the functional (golden-model) backend."""

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from tcloud.isa import ContextStatus, FaultCode, Instr, Machine, get_config, parse_policy
from tcloud.isa import csr
from tcloud.isa.errors import TcloudError


class DeviceError(TcloudError):
    """A backend could not be created or driven."""


def check_hbm_range(config, address, size):
    """Raise :class:`DeviceError` unless ``[address, address + size)`` lies in the device's HBM."""
    if address < 0 or size < 0 or address + size > config.hbm_bytes:
        raise DeviceError(f"HBM access [{address:#x}, {address + size:#x}) outside the "
                          f"{config.hbm_bytes:#x}-byte HBM")


@dataclass(frozen=True)
class ContextInfo:
    """What the host can read about one hardware context.

    Attributes
    ----------
    status : ContextStatus
    fault : FaultCode
    fault_pc : int
        Context-relative HBM address of the faulting instruction.
    detail : str
        Human-readable explanation (empty when the backend has none).
    counters : dict
        Activity counters (uTOps per engine class, bytes moved, MACs, ...); every backend has
        the same keys and, for the same program, the same values.
    timing : dict
        Cycle counters of cycle-accurate backends (empty for the untimed golden model):
        ``active_cycles``, ``run_cycles`` (latency of the last run), ``engine_cycles`` (owned and
        harvested engine-cycles per class), ``reclaim_wait_cycles``, ``reclaim_max_cycles``.
    """

    status: ContextStatus
    fault: FaultCode
    fault_pc: int
    detail: str
    counters: dict
    timing: dict = field(default_factory=dict)


@runtime_checkable
class Device(Protocol):
    """A pNPU the runtime can drive: functional model, RTL simulators or the performance model.

    Memory addresses are physical; contexts are configured with privileged ``ctx.*`` commands.
    """

    config: object

    def write_hbm(self, address: int, data: bytes) -> None:
        """Write bytes to physical HBM."""

    def read_hbm(self, address: int, size: int) -> bytes:
        """Read bytes from physical HBM."""

    def host(self, command: Instr) -> None:
        """Execute one privileged ``ctx.*`` command (raises ``HostCommandError`` if rejected)."""

    def set_policy(self, policy: object, *, quantum: int | None = None, starvation: int | None = None,
                   harvest_cost: int | None = None, harvest_grace: int | None = None) -> None:
        """Choose the scheduling policy (a :class:`~tcloud.isa.Policy` or its name) and, on timed
        backends, the temporal slice quantum and the starvation threshold in cycles, the largest
        declared uTOp cost that may run on a harvested engine (``HARVEST_COST``) and the cycles an
        engine must have been left idle by its owners before it is harvested (``HARVEST_GRACE``)."""

    def run(self, max_cycles: int | None = None) -> bool:
        """Run until no context is running (``True``) or the limit is reached (``False``)."""

    def context(self, index: int) -> ContextInfo:
        """Read a context's status, fault and counters."""

    def stats(self) -> dict:
        """Device-wide statistics of the last :meth:`run` (cycles, utilization where known)."""


class FunctionalDevice:
    """The golden model behind the :class:`Device` protocol (instant, no timing).

    Parameters
    ----------
    config : ArchConfig or str
    trace : bool
        Record the golden model's uTOp trace (see :mod:`tcloud.verif.races`).
    """

    name = "functional"

    def __init__(self, config, *, trace=False):
        self.config = get_config(config)
        self.machine = Machine(self.config, trace=trace)

    def write_hbm(self, address, data):
        check_hbm_range(self.config, address, len(data))
        self.machine.hbm[address:address + len(data)] = np.frombuffer(bytes(data), dtype=np.uint8)

    def read_hbm(self, address, size):
        check_hbm_range(self.config, address, size)
        return self.machine.hbm[address:address + size].tobytes()

    def host(self, command):
        self.machine.host(command)

    def set_policy(self, policy, *, quantum=None, starvation=None, harvest_cost=None, harvest_grace=None):
        csr.config_writes(parse_policy(policy), quantum=quantum, starvation=starvation, harvest_cost=harvest_cost,
                          harvest_grace=harvest_grace)  # refuses what the pNPU refuses
        self.machine.policy = parse_policy(policy)  # the untimed model has no slices, aging or harvesting

    def run(self, max_cycles=None):
        return self.machine.run(max_steps=max_cycles)

    def context(self, index):
        ctx = self.machine.contexts[index]
        return ContextInfo(ctx.status, ctx.fault, ctx.fault_pc, ctx.fault_detail, ctx.counters.as_dict())

    def stats(self):
        return {"backend": self.name}


def _amaranth(config, vcd=None, **timing):
    from .rtl_device import AmaranthDevice
    if vcd is not None and str(vcd).endswith(".fst"):
        raise DeviceError(f"Amaranth's simulator writes VCD only, not {vcd}; name a .vcd file or use the "
                          f"verilator backend")
    return AmaranthDevice(config, vcd=vcd, **timing)


def _verilator(config, vcd=None, **timing):
    from .verilator_device import VerilatorDevice
    return VerilatorDevice(config, trace=vcd, **timing)


BACKENDS = {"functional": FunctionalDevice, "amaranth": _amaranth, "verilator": _verilator}
"""Backend name → device factory: ``functional`` (golden model), ``amaranth`` (RTL in Amaranth's
simulator) and ``verilator`` (RTL compiled with Verilator)."""

TIMED_BACKENDS = ("amaranth", "verilator")


def make_device(backend, config, *, vcd=None, **hbm_timing):
    """Create a device for ``backend`` (a name in :data:`BACKENDS`).

    Parameters
    ----------
    backend : str
    config : str or ArchConfig
    vcd : path, optional
        For the RTL backends: write a waveform of every signal here (FST if the name ends with
        ``.fst``, on ``verilator`` only; else VCD). The file is complete once the device is closed.
    **hbm_timing
        For the RTL backends: ``hbm_latency``, ``hbm_jitter``, ``hbm_accept_probability``, ``seed``.

    Raises
    ------
    DeviceError
        If the backend is unknown, or HBM timing or a waveform is asked of the ``functional`` backend.
    """
    try:
        factory = BACKENDS[backend]
    except (KeyError, TypeError):
        raise DeviceError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}") from None
    if hbm_timing and backend not in TIMED_BACKENDS:
        raise DeviceError(f"the {backend} backend is untimed; HBM timing {sorted(hbm_timing)} applies only to "
                          f"{', '.join(TIMED_BACKENDS)}")
    if vcd is None:
        return factory(config, **hbm_timing)
    if backend not in TIMED_BACKENDS:
        raise DeviceError(f"the {backend} backend has no signals to trace; waveforms come from "
                          f"{' and '.join(TIMED_BACKENDS)}")
    return factory(config, vcd=vcd, **hbm_timing)
