"""The ``Device`` protocol every backend implements, its errors and the context report."""

import operator
from typing import NamedTuple, Protocol, runtime_checkable

from tcloud.isa import ContextStatus, FaultCode, Instr
from tcloud.isa.errors import TcloudError


class DeviceError(TcloudError):
    """A backend could not be created or driven."""


def check_hbm_range(config, address, size):
    """Raise :class:`DeviceError` unless ``[address, address + size)`` lies in the device's HBM."""
    if address < 0 or size < 0 or address + size > config.hbm_bytes:
        raise DeviceError(f"HBM access [{address:#x}, {address + size:#x}) outside the "
                          f"{config.hbm_bytes:#x}-byte HBM")


def check_context_index(config, index):
    """Raise :class:`DeviceError` unless ``index`` names one of the device's hardware contexts."""
    try:
        number = operator.index(index)
    except TypeError:
        number = None
    if isinstance(index, bool) or number is None or not 0 <= number < config.contexts:
        raise DeviceError(f"no context {index!r}: the {config.name!r} pNPU has contexts 0..{config.contexts - 1}")


class ContextInfo(NamedTuple):
    """What the host can read about one hardware context: an immutable record (a named tuple, which
    costs less to make than a frozen dataclass: a short ``perf`` run reads one per context).

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
        Cycle counters of cycle-accurate backends (an empty dict for the untimed golden model):
        ``active_cycles``, ``run_cycles`` (latency of the last run), ``engine_cycles`` (owned and
        harvested engine-cycles per class), ``reclaim_wait_cycles``, ``reclaim_max_cycles``.
    """

    status: ContextStatus
    fault: FaultCode
    fault_pc: int
    detail: str
    counters: dict
    timing: dict


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
