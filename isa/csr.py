"""The pNPU's host-visible registers (CSRs), declared once for RTL, runtime and documentation.

All registers are 32 bits at byte offsets. Per-context registers repeat every
:data:`CONTEXT_STRIDE` bytes from :data:`CONTEXT_BASE`; per-engine counters every 4 bytes from
:data:`ENGINE_BASE` (engines numbered DMAs first, then MEs, then VEs; each is named by its class and
its index within the class, as the ``ctx.engines`` masks count: ``dma0``, ``me0``, ``ve0``, ...;
:func:`tcloud.isa.csr.engine_names`). The map has room for the most
contexts and engines any :class:`ArchConfig` may have, so an address means the same register on
every pNPU. The per-context counters are those of :data:`COUNTERS`, which the RTL keeps and the
runtime reports.

Host commands: write the four 32-bit words of a ``ctx.*`` instruction to ``CMD0``..``CMD3``
(``CMD0`` holds bits 0..31) and write 1 to ``DOORBELL``. ``DOORBELL`` reads 1 while the command
runs (``ctx.scrub`` takes time); ``CMD_ERROR`` then holds a :class:`CommandError` code.
"""

from dataclasses import dataclass
from enum import IntEnum

from .config import LIMITS
from .cost import HARVEST_COST_DEFAULT
from .doc import markdown_paragraph
from .table import BY_MNEMONIC, POLICY_DOCS, Policy

ID_VALUE = 0x7C10D001
CONTEXT_BASE = 0x100
MAX_CONTEXTS = LIMITS["contexts"][1]
MAX_ENGINES = sum(LIMITS[count][1] for count in ("dma_count", "me_count", "ve_count"))


class CommandError(IntEnum):
    """Why the pNPU rejected a host command (``CMD_ERROR``)."""

    OK = 0
    NOT_A_HOST_COMMAND = 1
    ILLEGAL_FIELD = 2
    NO_SUCH_CONTEXT = 3
    CONTEXT_RUNNING = 4
    WINDOW_OUT_OF_RANGE = 5
    NO_SUCH_ENGINE = 6
    UNIMPLEMENTED = 7


COMMAND_ERROR_DOCS = {
    CommandError.OK: "The command ran.",
    CommandError.NOT_A_HOST_COMMAND: "The opcode is not in the ISA table, or not a ctx.* command.",
    CommandError.ILLEGAL_FIELD: "Reserved bits set, or a field below its minimum.",
    CommandError.NO_SUCH_CONTEXT: "ctx is not below ArchConfig.contexts.",
    CommandError.CONTEXT_RUNNING: "The context is RUNNING; ctx.kill is the only command it takes.",
    CommandError.WINDOW_OUT_OF_RANGE: "The window (ctx.sram, ctx.hbm) ends beyond the physical scratchpad or HBM.",
    CommandError.NO_SUCH_ENGINE: "ctx.engines names an engine this pNPU does not have.",
    CommandError.UNIMPLEMENTED: "A ctx.* command of the ISA table that this pNPU does not execute.",
}


@dataclass(frozen=True)
class Csr:
    """One 32-bit register: its name, byte offset, access (``R`` or ``RW``) and meaning."""

    name: str
    offset: int
    access: str
    doc: str
    values: range | None = None
    """For a configuration register: the values it accepts. A write of any other value is refused
    (the register keeps its value and ``CONFIG_REFUSED`` says so)."""


@dataclass(frozen=True)
class Counter:
    """One per-context activity counter, cleared by ``ctx.scrub``.

    Parameters
    ----------
    name : str
        The RTL's name for it; upper-cased, its register (``_LO`` and ``_HI`` for a 64-bit counter).
    report : tuple of str
        Where :meth:`~tcloud.runtime.Device.context` reports it: ``("counters", "utops", "dma")``
        is ``info.counters["utops"]["dma"]``.
    doc : str
    bits : int
        32 or 64.
    """

    name: str
    report: tuple
    doc: str
    bits: int = 32

    @property
    def registers(self):
        """Its per-context register names, least significant word first."""
        if self.bits == 32:
            return (self.name.upper(),)
        return tuple(f"{self.name.upper()}_{half}" for half in ("LO", "HI"))


POLICY_RESET, QUANTUM_RESET, STARVATION_RESET, HARVEST_COST_RESET, HARVEST_GRACE_RESET = (
    Policy.HARVEST, 1024, 256, HARVEST_COST_DEFAULT, 1024)

GLOBAL_CSRS = (
    Csr("ID", 0x000, "R", f"Constant {ID_VALUE:#010x}."),
    Csr("FINGERPRINT_LO", 0x004, "R", "Bytes 0..3 of ArchConfig.fingerprint() (little-endian)."),
    Csr("FINGERPRINT_HI", 0x008, "R", "Bytes 4..7 of ArchConfig.fingerprint()."),
    Csr("CMD0", 0x010, "RW", "Host command, bits 0..31."),
    Csr("CMD1", 0x014, "RW", "Host command, bits 32..63."),
    Csr("CMD2", 0x018, "RW", "Host command, bits 64..95."),
    Csr("CMD3", 0x01C, "RW", "Host command, bits 96..127."),
    Csr("DOORBELL", 0x020, "RW", "Write 1: execute the command. Read: 1 while it runs."),
    Csr("CMD_ERROR", 0x024, "R", "CommandError of the last command."),
    Csr("CYCLES_LO", 0x030, "R", "Cycles since reset, low word."),
    Csr("CYCLES_HI", 0x034, "R", "Cycles since reset, high word."),
    Csr("RUNNING", 0x038, "R", "Bit c set while context c is RUNNING (or draining after a fault)."),
    Csr("POLICY", 0x040, "RW", "Scheduling policy (tcloud.isa.Policy: "
        + ", ".join(f"{int(p)} {p.name.lower()}" for p in Policy)
        + f"); reset: {POLICY_RESET.name.lower()}. Takes effect at the next dispatch.", range(len(Policy))),
    Csr("QUANTUM", 0x044, "RW", "Temporal policy: time slice in cycles per priority step (slice = "
        f"QUANTUM x (priority + 1)); reset {QUANTUM_RESET}.", range(1, 1 << 16)),
    Csr("STARVATION", 0x048, "RW", "Cycles a ready uTOp waits before its context outranks every "
        f"non-starving one, whatever the priorities; reset {STARVATION_RESET}.", range(1, 1 << 16)),
    Csr("HARVEST_COST", 0x04C, "RW", "Harvest policy: the largest cost (work units, tcloud.isa.cost) a "
        "uTOp may declare to run on an engine its context does not own; 0 disables harvesting. An owner "
        f"then waits at most tcloud.rtl.reclaim_bound cycles for its engine; reset {HARVEST_COST_RESET}.",
        range(1 << BY_MNEMONIC["utop"].field("cost").width)),
    Csr("HARVEST_GRACE", 0x050, "RW", "Harvest policy: cycles an engine's owners must have left it idle (no "
        "ready uTOp of its class, nothing of theirs running on it) before another context may harvest it, so "
        f"an owner running a chain of uTOps keeps its engine through the gaps; reset {HARVEST_GRACE_RESET}.",
        range(1 << 16)),
    Csr("CONFIG_REFUSED", 0x054, "R", "1 if the last write to a configuration register (one with a range "
        "below) was refused because the value is outside its range (the register kept its value); 0 if it "
        "was taken."),
)

COUNTERS = (
    Counter("utops_dma", ("counters", "utops", "dma"), "DMA uTOps retired."),
    Counter("utops_me", ("counters", "utops", "me"), "ME uTOps retired."),
    Counter("utops_ve", ("counters", "utops", "ve"), "VE uTOps retired."),
    Counter("instructions", ("counters", "instructions"), "Instructions decoded (headers, control and bodies)."),
    Counter("hbm_read", ("counters", "hbm_bytes_read"), "Bytes DMA read from HBM."),
    Counter("hbm_write", ("counters", "hbm_bytes_written"), "Bytes DMA wrote to HBM."),
    Counter("macs", ("counters", "macs"), "Matrix multiply-accumulates.", bits=64),
    Counter("ve_elements", ("counters", "ve_elements"), "Vector elements processed."),
    Counter("active_cycles", ("timing", "active_cycles"), "Cycles spent RUNNING (cumulative)."),
    Counter("run_cycles", ("timing", "run_cycles"), "Cycles since the last ctx.start while RUNNING: the "
            "latency of the last run once it stopped; the watchdog compares it with the budget."),
    Counter("me_owned", ("timing", "engine_cycles", "me_owned"),
            "Engine-cycles of this context's uTOps on MEs it owns."),
    Counter("me_harvested", ("timing", "engine_cycles", "me_harvested"),
            "Engine-cycles of this context's uTOps on MEs it does not own."),
    Counter("ve_owned", ("timing", "engine_cycles", "ve_owned"),
            "Engine-cycles of this context's uTOps on VEs it owns."),
    Counter("ve_harvested", ("timing", "engine_cycles", "ve_harvested"),
            "Engine-cycles of this context's uTOps on VEs it does not own."),
    Counter("dma_cycles", ("timing", "engine_cycles", "dma_cycles"),
            "Engine-cycles of this context's uTOps on DMA engines."),
    Counter("reclaim_wait", ("timing", "reclaim_wait_cycles"), "Cycles a ready uTOp waited while an engine "
            "the context owns ran a uTOp of a context that does not own it (the price of being harvested; "
            "co-owners sharing an engine do not count)."),
    Counter("reclaim_max", ("timing", "reclaim_max_cycles"), "Longest single such wait, in cycles."),
)
"""The per-context counters: the RTL keeps them, the runtime reports them, the CSR map places them."""


def _counter_csrs(counter):
    if counter.bits == 32:
        return [(counter.registers[0], counter.doc)]
    return [(name, f"{counter.doc} {half} word.") for name, half in zip(counter.registers, ("Low", "High"))]


CONTEXT_CSRS = tuple(Csr(name, 4 * i, "R", doc) for i, (name, doc) in enumerate([
    ("STATUS", "ContextStatus."),
    ("FAULT", "FaultCode."),
    ("FAULT_PC", "Context-relative byte address of the faulting instruction."),
    ("PC", "Context-relative byte address of the next top-level instruction."),
    *(csr for counter in COUNTERS for csr in _counter_csrs(counter)),
    ("BUDGET", "Watchdog budget (ctx.budget); 0 is unlimited."),
]))
"""Every context's registers, 4 bytes apart in this order."""


def counter_report(words):
    """The counters as :class:`~tcloud.runtime.ContextInfo` reports them.

    Parameters
    ----------
    words : dict of str to int
        The value of every counter register (:attr:`Counter.registers`).

    Returns
    -------
    dict
        ``{"counters": {...}, "timing": {...}}``, nested as :attr:`Counter.report` says.
    """
    report = {"counters": {}, "timing": {}}
    for counter in COUNTERS:
        *path, key = counter.report
        node = report
        for part in path:
            node = node.setdefault(part, {})
        node[key] = sum(words[name] << 32 * i for i, name in enumerate(counter.registers))
    return report


ENGINE_CSR_DOC = "Cycles the engine was busy (ENGINE_BASE + 4 × engine index)."

GLOBAL = {c.name: c.offset for c in GLOBAL_CSRS}
CONFIG_CSRS = tuple(c for c in GLOBAL_CSRS if c.values is not None)
"""The configuration registers: the host may write each within its ``values``."""
CONTEXT = {c.name: c.offset for c in CONTEXT_CSRS}
CONTEXT_STRIDE = 1 << (max(CONTEXT.values()) + 3).bit_length()
"""Bytes between two contexts' registers: the power of two that holds one context's."""
ENGINE_BASE = CONTEXT_BASE + MAX_CONTEXTS * CONTEXT_STRIDE
"""First engine counter, after the registers of :data:`MAX_CONTEXTS` contexts."""


def context_csr(context, name):
    """Byte offset of per-context register ``name`` of ``context``."""
    return CONTEXT_BASE + CONTEXT_STRIDE * context + CONTEXT[name]


def engine_csr(engine):
    """Byte offset of the busy-cycle counter of engine ``engine``."""
    return ENGINE_BASE + 4 * engine


def engine_names(config):
    """Names of a pNPU's engines, in engine-index order.

    Each engine is named by its class and its index within the class (bit ``i`` of a ``ctx.engines``
    mask is engine ``i`` of that class): ``dma0, dma1, me0, ..., ve0, ...``. Engine ``e`` has the busy
    counter ``ENGINE_BUSY[e]`` (:func:`engine_csr`); the runtime's ``engine_busy_cycles`` statistics
    and the engines' instances in the generated Verilog (``core.me0``) carry these names.

    Parameters
    ----------
    config : ArchConfig

    Returns
    -------
    list of str
    """
    return ([f"dma{i}" for i in range(config.dma_count)] + [f"me{i}" for i in range(config.me_count)]
            + [f"ve{i}" for i in range(config.ve_count)])


def _addresses():
    """Every register of the largest pNPU: ``(name, address)`` pairs."""
    yield from GLOBAL.items()
    for context in range(MAX_CONTEXTS):
        yield from ((f"ctx{context}.{name}", context_csr(context, name)) for name in CONTEXT)
    yield from ((f"ENGINE_BUSY[{e}]", engine_csr(e)) for e in range(MAX_ENGINES))


def _check_map():
    owner = {}
    for name, address in _addresses():
        if address % 4 or address in owner:
            raise AssertionError(f"CSR {name} at {address:#x} is misaligned or shared with {owner.get(address)}")
        owner[address] = name
    return max(owner).bit_length()


ADDR_BITS = _check_map()
"""Width of the pNPU's ``csr_addr``: enough for every register of the largest pNPU."""


def config_writes(policy, **values):
    """The configuration register writes that set ``policy`` and the given ``values`` (keyword
    names: the registers' names in lower case; ``None`` leaves a register as it is), each checked
    against its register's range as the pNPU checks it.

    Returns
    -------
    list of (Csr, int)

    Raises
    ------
    ValueError
        Naming the first value the pNPU would refuse.
    """
    values = {"policy": int(policy), **values}
    writes = []
    for register in CONFIG_CSRS:
        value = values.pop(register.name.lower(), None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value not in register.values:
            raise ValueError(f"{register.name.lower()} must be an integer within {register.values.start}.."
                             f"{register.values.stop - 1}, got {value!r}")
        writes.append((register, value))
    if values:
        raise ValueError(f"no configuration register {sorted(values)[0]!r}")
    return writes


def _values(register):
    return "" if register.values is None else f"{register.values.start}..{register.values.stop - 1}"


def csr_markdown():
    """The CSR map as Markdown (appended to ``tcloud isa doc``)."""
    out = ["## Host CSRs", ""]
    for paragraph in __doc__.split("\n\n")[1:]:
        out += [markdown_paragraph(paragraph), ""]
    out += ["| register | offset | access | values | meaning |", "|---|---|---|---|---|"]
    out += [f"| {c.name} | {c.offset:#05x} | {c.access} | {_values(c)} | {c.doc} |" for c in GLOBAL_CSRS]
    out += [f"| ctx*.{c.name} | {CONTEXT_BASE:#x} + {CONTEXT_STRIDE:#x}·ctx + {c.offset:#04x} | {c.access} "
            f"| | {c.doc} |" for c in CONTEXT_CSRS]
    out += [f"| ENGINE_BUSY[e] | {ENGINE_BASE:#x} + 4·e | R | | {ENGINE_CSR_DOC} |", "",
            "| CMD_ERROR | value | meaning |", "|---|---|---|"]
    out += [f"| {e.name} | {int(e)} | {doc} |" for e, doc in COMMAND_ERROR_DOCS.items()]
    out += ["", "## Scheduling policies (POLICY)", "", "| policy | value | meaning |", "|---|---|---|"]
    out += [f"| {p.name.lower()} | {int(p)} | {POLICY_DOCS[p]} |" for p in Policy]
    return "\n".join(out) + "\n"
