"""Pay-as-you-go accounting: a vNPU's :class:`Usage` and the :class:`Bill` a :class:`PriceTable` makes of it."""

from dataclasses import dataclass


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
