"""The allocator: which context, engines and windows of which pNPU a vNPU gets.

All-or-nothing: :func:`fit` either returns a complete :class:`Grant` or says what the pNPU lacks;
:func:`reserve` and :func:`release` do the bookkeeping once the context is programmed or scrubbed.
"""

from dataclasses import dataclass, field

from tcloud.isa.errors import TcloudError

from .spec import KIB, MIB

SRAM_ALIGN = 1024
"""Scratchpad windows start on KiB boundaries (and are KiB multiples): every bank alignment."""


class AllocationError(TcloudError):
    """No pNPU can host the requested vNPU; nothing was allocated."""


class FreeList:
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
class PNPUState:
    """What the allocator tracks of one pNPU: free contexts, the owners of each engine and the free
    scratchpad and HBM ranges."""

    index: int
    device: object
    free_contexts: list
    me_owners: list
    ve_owners: list
    dma_owners: list
    sram: FreeList
    hbm: FreeList
    vnpus: dict = field(default_factory=dict)  # context -> VNPU


@dataclass(frozen=True)
class Grant:
    """The resources a vNPU gets on one pNPU: a context, engine masks and window bases."""

    pnpu: PNPUState
    context: int
    me_mask: int
    ve_mask: int
    dma_mask: int
    sram_base: int
    hbm_base: int


def fit(pnpu, spec, config, oversubscribe, reasons):
    """A :class:`Grant` of ``spec`` on ``pnpu``, or ``None`` after appending to ``reasons`` what
    ``pnpu`` lacks. With ``oversubscribe``, engines already owned may be co-owned."""
    lacks = []
    if not pnpu.free_contexts:
        lacks.append(f"all {config.contexts} contexts in use")
    masks = []
    for what, owners, asked in (("MEs", pnpu.me_owners, spec.mes), ("VEs", pnpu.ve_owners, spec.ves)):
        free = [e for e, o in enumerate(owners) if not o]
        if len(free) >= asked:
            chosen = free[:asked]
        elif oversubscribe:
            chosen = sorted(range(len(owners)), key=lambda e: (len(owners[e]), e))[:asked]
        else:
            lacks.append(f"{len(free)} free {what} (asked {asked})")
            chosen = []
        masks.append(sum(1 << e for e in chosen))
    masks.append(dma_mask(pnpu, spec, lacks))
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
    return Grant(pnpu, pnpu.free_contexts[0], *masks, sram_base, hbm_base)

def dma_mask(pnpu, spec, lacks):
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


def reserve(grant, spec, vnpu):
    """Mark ``grant``'s resources as ``vnpu``'s."""
    pnpu = grant.pnpu
    pnpu.free_contexts.remove(grant.context)
    pnpu.sram.used[grant.sram_base] = spec.sram_kib * KIB
    pnpu.hbm.used[grant.hbm_base] = spec.hbm_mib * MIB
    for owners, mask in ((pnpu.me_owners, grant.me_mask), (pnpu.ve_owners, grant.ve_mask),
                         (pnpu.dma_owners, grant.dma_mask)):
        for e, holders in enumerate(owners):
            if mask >> e & 1:
                holders.add(vnpu)
    pnpu.vnpus[grant.context] = vnpu


def release(vnpu):
    """Return every resource of ``vnpu`` to its pNPU's pools."""
    pnpu, grant = vnpu._pnpu, vnpu._grant
    for owners in (pnpu.me_owners, pnpu.ve_owners, pnpu.dma_owners):
        for holders in owners:
            holders.discard(vnpu)
    del pnpu.sram.used[grant.sram_base]
    del pnpu.hbm.used[grant.hbm_base]
    del pnpu.vnpus[grant.context]
    pnpu.free_contexts.append(grant.context)
    pnpu.free_contexts.sort()
