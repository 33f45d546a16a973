"""The ``Device`` protocol every backend implements, and the functional (golden-model) backend."""

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from tcloud.isa import ContextStatus, FaultCode, Instr, Machine, get_config
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
        Activity counters (uTOps per engine class, bytes moved, MACs, ...).
    """

    status: ContextStatus
    fault: FaultCode
    fault_pc: int
    detail: str
    counters: dict


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

    def run(self, max_cycles=None):
        return self.machine.run(max_steps=max_cycles)

    def context(self, index):
        ctx = self.machine.contexts[index]
        return ContextInfo(ctx.status, ctx.fault, ctx.fault_pc, ctx.fault_detail, ctx.counters.as_dict())

    def stats(self):
        return {"backend": self.name}


def _amaranth(config):
    from .rtl_device import AmaranthDevice
    return AmaranthDevice(config)


def _verilator(config):
    from .verilator_device import VerilatorDevice
    return VerilatorDevice(config)


BACKENDS = {"functional": FunctionalDevice, "amaranth": _amaranth, "verilator": _verilator}
"""Backend name → device factory: ``functional`` (golden model), ``amaranth`` (RTL in Amaranth's
simulator) and ``verilator`` (RTL compiled with Verilator)."""


def make_device(backend, config):
    """Create a device for ``backend`` (a name in :data:`BACKENDS`).

    Raises
    ------
    DeviceError
        If the backend is unknown.
    """
    try:
        factory = BACKENDS[backend]
    except (KeyError, TypeError):
        raise DeviceError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}") from None
    return factory(config)
