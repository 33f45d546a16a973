"""The one architecture configuration object, read by firmware, runtime, golden model and RTL."""

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass

from .errors import ConfigError
from .table import field_max as _field_max

_NOT_FINGERPRINTED = ("name", "clock_mhz", "hbm_gbps", "hbm_latency", "dma_outstanding", "fetch_depth")
_KIB = 1024
_MIB = 1024 * 1024

LIMITS = {
    "me_count": (1, _field_max("ctx.engines", "me_mask").bit_length()),
    "me_rows": (1, _field_max("me.loadw", "k")),
    "me_cols": (1, _field_max("me.loadw", "n")),
    "ve_count": (1, _field_max("ctx.engines", "ve_mask").bit_length()),
    "ve_lanes": (1, 4096),
    "dma_count": (1, _field_max("ctx.engines", "dma_mask").bit_length()),
    "sram_kib": (1, (_field_max("ctx.sram", "base") + 4) // _KIB),
    "sram_banks": (2, 256),
    "sram_line_words": (1, 256),
    "contexts": (1, _field_max("ctx.start", "ctx") + 1),
    "hbm_mib": (1, (_field_max("ctx.hbm", "base") + 4) // _MIB),
    "hbm_port_bytes": (4, 4096),
    "hbm_latency": (1, 100_000),
    "dma_outstanding": (1, 4096),
    "fetch_depth": (1, 64),
}
"""Legal range ``(low, high)`` of each integer field of :class:`ArchConfig`; most follow from the
ISA's field widths (``contexts`` from the ``ctx`` field, engine counts from the ``ctx.engines`` masks)."""


@dataclass(frozen=True)
class ArchConfig:
    """Parameters of one physical NPU (pNPU).

    Every hardware number lives here; derived values are properties. Construction checks each
    value against its range and against the ISA's field widths, raising :class:`ConfigError` that
    names the bad field.

    Parameters
    ----------
    name : str
        Preset name or a user label (not part of the fingerprint).
    me_count, me_rows, me_cols : int
        Number of matrix engines and the systolic array shape (rows = reduction depth k,
        cols = output columns n).
    ve_count, ve_lanes : int
        Number of vector engines and int32 lanes each.
    dma_count : int
        DMA engines (shared by all contexts).
    sram_kib : int
        Scratchpad size.
    sram_banks : int
        Scratchpad banks (a power of two, at least 2): memories of ``sram_line_words``-word rows
        with one read and one write port each; consecutive lines live in consecutive banks.
    sram_line_words : int
        Words per scratchpad line (a power of two): the width of a bank's row and of one access,
        which may start at any word.
    contexts : int
        Hardware vNPU contexts.
    hbm_mib : int
        HBM capacity modelled by the simulators.
    hbm_port_bytes : int
        Width of the HBM port in bytes per cycle (a power of two, at least 4).
    hbm_gbps : float
        HBM bandwidth in GB/s. The simulators' HBM models accept at most
        :attr:`hbm_bytes_per_cycle` bytes per cycle (and at most one ``hbm_port_bytes`` beat).
    clock_mhz : float
        Clock frequency; converts bandwidth and latency between cycles and seconds.
    hbm_latency : int
        Cycles from the HBM accepting a request to its response, before queueing (the simulators'
        default; a device may override it for experiments). Not part of the hardware: programs and
        RTL do not depend on it.
    dma_outstanding : int
        HBM beats each DMA engine (and the scrubber) keeps in flight. One DMA reaches the full
        bandwidth only while ``dma_outstanding`` covers the bandwidth-delay product, about
        ``hbm_latency`` beats; the presets give it twice that.
    fetch_depth : int
        Body instructions each ME and VE fetches ahead of the one it executes (its prefetch buffer,
        all of them in flight at once if need be): enough to hide the HBM latency at the rate the
        engine consumes instructions.
    """

    name: str = "custom"
    me_count: int = 1
    me_rows: int = 4
    me_cols: int = 4
    ve_count: int = 1
    ve_lanes: int = 4
    dma_count: int = 1
    sram_kib: int = 16
    sram_banks: int = 4
    sram_line_words: int = 4
    contexts: int = 2
    hbm_mib: int = 16
    hbm_port_bytes: int = 16
    hbm_gbps: float = 16.0
    clock_mhz: float = 1000.0
    hbm_latency: int = 16
    dma_outstanding: int = 32
    fetch_depth: int = 4

    def __post_init__(self):
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"ArchConfig.{name} must be an int, got {value!r}")
            if not low <= value <= high:
                raise ConfigError(f"ArchConfig.{name}={value!r} is out of range [{low}, {high}]")
        for name in ("me_rows", "me_cols"):
            if getattr(self, name) % 4:
                raise ConfigError(f"ArchConfig.{name}={getattr(self, name)!r} must be a multiple of 4: "
                                  f"tiles start on 4-byte scratchpad words")
        for name in ("sram_banks", "sram_line_words", "hbm_port_bytes"):
            value = getattr(self, name)
            if value & (value - 1):
                raise ConfigError(f"ArchConfig.{name}={value!r} must be a power of two")
        line_bytes = 4 * self.sram_line_words * self.sram_banks
        if self.sram_bytes % line_bytes:
            raise ConfigError(f"ArchConfig.sram_kib={self.sram_kib!r} must hold a whole number of rows of every "
                              f"bank ({self.sram_banks} banks of {4 * self.sram_line_words}-byte lines)")
        for name in ("hbm_gbps", "clock_mhz"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"ArchConfig.{name} must be a positive number, got {value!r}")

    @property
    def sram_bytes(self):
        return self.sram_kib * _KIB

    @property
    def hbm_bytes(self):
        return self.hbm_mib * _MIB

    @property
    def sram_bank_bytes(self):
        return self.sram_bytes // self.sram_banks

    @property
    def me_macs_per_cycle(self):
        """int8 multiply-accumulates per cycle of all matrix engines together."""
        return self.me_count * self.me_rows * self.me_cols

    @property
    def peak_tops(self):
        """Peak int8 tera-operations per second (2 ops per MAC) at ``clock_mhz``."""
        return 2 * self.me_macs_per_cycle * self.clock_mhz * 1e6 / 1e12

    @property
    def hbm_bytes_per_cycle(self):
        """HBM bandwidth expressed per clock cycle."""
        return self.hbm_gbps * 1e9 / (self.clock_mhz * 1e6)

    @property
    def hbm_latency_ns(self):
        """:attr:`hbm_latency` in nanoseconds at ``clock_mhz``."""
        return self.hbm_latency * 1e3 / self.clock_mhz

    def fingerprint(self):
        """8 bytes identifying everything a program depends on (not the name, clock, HBM timing or
        the depths of the DMA's requests and the engines' prefetch)."""
        return _fingerprint(self)

    def replace(self, **changes):
        """Return a copy with ``changes`` applied (and checked)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"ArchConfig has no field(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=256)
def _fingerprint(config):
    """:meth:`ArchConfig.fingerprint`, computed once per configuration (every image load checks it)."""
    data = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).digest()[:8]


PRESETS = {
    "tiny": ArchConfig(name="tiny", me_count=1, me_rows=4, me_cols=4, ve_count=1, ve_lanes=4,
                       dma_count=1, sram_kib=16, sram_banks=4, sram_line_words=4, contexts=2, hbm_mib=16,
                       hbm_port_bytes=16, hbm_gbps=16.0, clock_mhz=1000.0, hbm_latency=16,
                       dma_outstanding=32, fetch_depth=4),
    "small": ArchConfig(name="small", me_count=4, me_rows=8, me_cols=8, ve_count=2, ve_lanes=8,
                        dma_count=2, sram_kib=256, sram_banks=16, sram_line_words=8, contexts=4, hbm_mib=64,
                        hbm_port_bytes=32, hbm_gbps=32.0, clock_mhz=1000.0, hbm_latency=120,
                        dma_outstanding=256, fetch_depth=8),
    "tpu_like": ArchConfig(name="tpu_like", me_count=4, me_rows=128, me_cols=128, ve_count=2,
                           ve_lanes=1024, dma_count=4, sram_kib=32 * 1024, sram_banks=64, sram_line_words=32,
                           contexts=8, hbm_mib=1024, hbm_port_bytes=1024, hbm_gbps=1200.0,
                           clock_mhz=1050.0, hbm_latency=126, dma_outstanding=256, fetch_depth=8),
    "tpu_v4_like": ArchConfig(name="tpu_v4_like", me_count=8, me_rows=128, me_cols=128, ve_count=4,
                              ve_lanes=1024, dma_count=4, sram_kib=32 * 1024, sram_banks=64, sram_line_words=32,
                              contexts=8, hbm_mib=4096, hbm_port_bytes=1024, hbm_gbps=1200.0,
                              clock_mhz=1050.0, hbm_latency=126, dma_outstanding=256, fetch_depth=8),
}
"""Named configurations: ``tiny`` (Amaranth-sim unit tests), ``small`` (integration, Verilator,
multi-tenant RTL experiments), ``tpu_like`` and ``tpu_v4_like`` (performance model only).

``tpu_v4_like`` is one TPUv4 chip as a pNPU: 8 matrix engines of 128 x 128 (its two cores' four MXUs
each), 4 vector engines, 1.2 TB/s of HBM at 1.05 GHz. The ISA's fields bound the rest: the
``ctx.sram`` window field reaches 64 MiB (the chip's 16 MiB of vector memory fits; its 128 MiB
common memory would not), and ``ctx.hbm`` 4 GiB (of the chip's 32 GiB).

HBM timing: ``small`` and ``tpu_like`` answer after 120 ns (120 cycles at 1 GHz, 126 at 1.05 GHz),
inside the 100–150 ns that HBM2/HBM2e reach under load from an accelerator (controller, PHY and DRAM
row access); ``small`` keeps 32 GB/s at 1 GHz (one 32-byte beat per cycle), ``tpu_like`` 1.2 TB/s
at 1.05 GHz (TPUv3/v4 class). ``tiny`` is a unit-test configuration, not an architecture: its
16-cycle latency keeps the Amaranth simulations short.
"""


def get_config(config):
    """Return an :class:`ArchConfig` from a preset name or an ``ArchConfig``.

    Raises
    ------
    ConfigError
        If ``config`` names no preset or is of the wrong type.
    """
    if isinstance(config, ArchConfig):
        return config
    if isinstance(config, str):
        try:
            return PRESETS[config]
        except KeyError:
            raise ConfigError(f"unknown config {config!r}; presets are {', '.join(PRESETS)}") from None
    raise ConfigError(f"config must be a preset name or an ArchConfig, got {config!r}")
