"""Work units: the cost a uTOp declares in its header and the hardware enforces.

A ``utop`` header may declare ``cost``, the work units its body may use. Every body instruction
costs :func:`instruction_units`; a uTOp whose declared cost is not zero faults with
``COST_EXCEEDED`` at the first body instruction that would take its total past the declaration
(before that instruction has any effect), in the golden model and in the RTL alike. Only uTOps
that declare a cost within the ``HARVEST_COST`` register run on engines their context does not own,
so a harvested engine returns to its owner within a bound the operator sets
(:func:`tcloud.rtl.reclaim_bound`): the harvester cannot run longer than it declared.

One work unit is about one engine cycle when the engine runs alone: an instruction's fetch, decode
and dispatch (:data:`INSTRUCTION_UNITS`), one scratchpad row access of a matrix engine, one systolic
array weight row, one HBM beat of a DMA, one FSM step of a vector engine per chunk of ``ve_lanes``
elements. The formula works on plain integers (the golden model, the assembler) and on Amaranth
values (the engines' decoders) alike, so both evaluate the same expression.
"""

from .table import BY_MNEMONIC, LUT_BYTES, WORD_BYTES

HARVEST_COST_DEFAULT = 2048
"""Reset value of the ``HARVEST_COST`` register, and the cost the firmware keeps its harvestable
uTOps within by default."""

INSTRUCTION_UNITS = 8
"""Units every body instruction costs on top of its data work: its decode and dispatch, and its
share of the instruction fetch from HBM, which a prefetch hides only behind longer instructions."""

VE_STEPS_PER_CHUNK = {
    **{name: 5 for name in ("ve.add", "ve.sub", "ve.mul", "ve.max", "ve.min", "ve.requantf")},
    "ve.relu": 3, "ve.copy": 3, "ve.requant": 3, "ve.fill": 1,
    "ve.redsum": 3, "ve.redmax": 3,
    "ve.fma": 5, "ve.fmav": 5,
}
"""Vector-engine steps per chunk of ``ve_lanes`` elements: reads of each source, then the write
(``ve.fill`` writes only; reductions accumulate instead of writing, and write once per row). ``ve.fma``
with ``src2_zero`` skips the second source's read and its wait: :data:`FMA_NO_ADDEND_STEPS` fewer; ``ve.fmav``
always reads its multiplier row. ``ve.shape.src2_row`` changes no cost: the row's element is read again
for every chunk."""

FMA_NO_ADDEND_STEPS = VE_STEPS_PER_CHUNK["ve.fma"] - VE_STEPS_PER_CHUNK["ve.copy"]

VE_STEPS_PER_CHUNK["ve.lut"] = VE_STEPS_PER_CHUNK["ve.relu"]
"""``ve.lut`` streams like the other one-source ops (read, wait, write); its lookup is combinational,
in the cycle of the write."""

LUT_WORDS = LUT_BYTES // WORD_BYTES
"""Words of a ``ve.lutload`` table."""
VE_STEPS_PER_LUT_READ = 2
"""Vector-engine steps per scratchpad read of a ``ve.lutload``: the request, then the data."""

GATHER_INDEX_UNITS = 2 * 2
"""Units per row of a ``dma.gather`` on top of its HBM beats: its index is read from the scratchpad
twice (once to check every index before any byte moves, once to copy the row), request and data each."""

_REDUCTIONS = ("ve.redsum", "ve.redmax")


def lut_read_words(config):
    """Words per scratchpad read of a ``ve.lutload``: a whole line (at most the table; both are powers
    of two, so the reads cover the table exactly)."""
    return min(config.sram_line_words, LUT_WORDS)


def lutload_units(config):
    """Work units of ``ve.lutload``: its instruction, then one read per :func:`lut_read_words`."""
    return INSTRUCTION_UNITS + VE_STEPS_PER_LUT_READ * (LUT_WORDS // lut_read_words(config))


def _ceil_div(value, divisor):
    return (value + (divisor - 1)) // divisor


def instruction_units(mnemonic, field, config, ve_rows=1, continues=0):
    """Work units of one body instruction.

    Parameters
    ----------
    mnemonic : str
        A DMA, ME or VE instruction.
    field : callable
        ``field(name)`` returns the instruction's *encoded* field value (words for byte fields),
        an ``int`` or an Amaranth value.
    config : ArchConfig
    ve_rows : int or Amaranth value
        Rows set by the uTOp's last ``ve.shape`` (1 before any).
    continues : int or Amaranth value
        1 if this ``me.matmul`` continues the uTOp's output region (:func:`continues_region`): it
        neither loads nor writes back its output rows, so it costs one unit per row.

    Returns
    -------
    int or Amaranth value
    """
    if mnemonic in ("dma.load", "dma.store", "dma.gather"):
        beat_words = config.hbm_port_bytes // 4
        per_row = _ceil_div(field("row_bytes"), beat_words) + (GATHER_INDEX_UNITS if mnemonic == "dma.gather" else 0)
        return INSTRUCTION_UNITS + field("rows") * per_row
    if mnemonic == "me.loadw":
        return INSTRUCTION_UNITS + config.me_rows
    if mnemonic == "me.matmul":
        # stream; a new region also writes back, and loads first when accumulating
        return INSTRUCTION_UNITS + field("m") * (1 + (1 - continues) * (1 + field("acc")))
    if mnemonic in ("ve.shape", "ve.setf"):
        return INSTRUCTION_UNITS
    if mnemonic == "ve.lutload":
        return lutload_units(config)
    chunks = _ceil_div(field("n"), config.ve_lanes)
    steps = VE_STEPS_PER_CHUNK[mnemonic]
    if mnemonic == "ve.fma":
        steps = steps - FMA_NO_ADDEND_STEPS * field("src2_zero")
    per_row = chunks * steps + (1 if mnemonic in _REDUCTIONS else 0)
    return INSTRUCTION_UNITS + ve_rows * per_row


def words(byte_count):
    """Words holding ``byte_count`` bytes (an int or an Amaranth value)."""
    return (byte_count + 3) >> 2


def region_end(addr, rows, stride, row_words):
    """Word just past a 2-D region (``addr + (rows-1)*stride + row_words``); ints or Amaranth values."""
    return addr + (rows - 1) * stride + row_words


def overlap(start0, end0, start1, end1):
    """Whether word intervals ``[start0, end0)`` and ``[start1, end1)`` share a word (ints or values)."""
    return (start0 < end1) & (start1 < end0)


def continues_region(region, matmul, k, n):
    """Whether ``matmul`` continues the output region of the uTOp's previous matmul.

    It does when ``region`` (the previous matmul's ``(out, out_stride, m, n)`` and word interval,
    or ``None`` once a later instruction read it) names the same output and this matmul's input A
    does not read it. ``k`` and ``n`` are those of the last ``me.loadw``; fields are encoded.
    """
    if region is None:
        return 0
    key, (start, end) = region
    a_end = region_end(matmul("a"), matmul("m"), matmul("a_stride"), words(k))
    return int(key == (matmul("out"), matmul("out_stride"), matmul("m"), n) and not overlap(matmul("a"), a_end,
                                                                                          start, end))


def encoded_field(instr):
    """``field`` callable for :func:`instruction_units` reading an :class:`~tcloud.isa.Instr`."""
    spec = BY_MNEMONIC[instr.mnemonic]
    return lambda name: instr[name] // spec.field(name).scale


def utop_units(body, config):
    """Total work units of a uTOp body (a sequence of :class:`~tcloud.isa.Instr`).

    This is the smallest ``cost`` the uTOp can declare and complete.
    """
    state = UnitState(config)
    return sum(state.units(instr) for instr in body)


class UnitState:
    """What the cost of the next body instruction depends on: the rows of the last ``ve.shape``,
    the tile of the last ``me.loadw`` and the output region of the last ``me.matmul``.

    Parameters
    ----------
    config : ArchConfig
    """

    def __init__(self, config):
        self.config = config
        self.rows, self.tile, self.region = 1, (0, 0), None

    def units(self, instr):
        """Work units of ``instr`` (an :class:`~tcloud.isa.Instr`); then record its effect on the state."""
        field = encoded_field(instr)
        continues = continues_region(self.region, field, *self.tile) if instr.mnemonic == "me.matmul" else 0
        units = instruction_units(instr.mnemonic, field, self.config, self.rows, continues)
        if instr.mnemonic == "ve.shape":
            self.rows = instr["rows"]
        elif instr.mnemonic == "me.loadw":
            w_end = region_end(field("w"), field("k"), field("w_stride"), words(field("n")))
            if self.region is not None and overlap(field("w"), w_end, *self.region[1]):
                self.region = None
            self.tile = (field("k"), field("n"))
        elif instr.mnemonic == "me.matmul":
            k, n = self.tile
            key = (field("out"), field("out_stride"), field("m"), n)
            self.region = (key, (field("out"), region_end(field("out"), field("m"), field("out_stride"), n)))
        return units
