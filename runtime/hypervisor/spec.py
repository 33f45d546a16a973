"""What a tenant buys: :class:`VNPUSpec`."""

from dataclasses import dataclass, fields

from tcloud.isa.errors import TcloudError

KIB, MIB = 1024, 1024 * 1024


class VNPUSpecError(TcloudError, ValueError):
    """A vNPU specification with a missing, unknown or out-of-range field."""


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
