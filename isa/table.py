"""The TCloud instruction set as one declarative table.

Everything else — the Python encoder/decoder, the assembler and disassembler, the golden model, the
reference documentation and the RTL's instruction views and decode ROM (:mod:`tcloud.rtl.decode`) — is
derived from :data:`INSTRUCTIONS`. Nothing restates an opcode, a field width or a bit position.

Encoding rules
--------------
* Every instruction is one 128-bit word, stored little-endian (16 bytes).
* Bits ``[0:8)`` hold the opcode; the fields follow in table order from bit 8 upwards, each
  ``width`` bits wide, least significant bit first. Bits above the last field are reserved and must
  be zero.
* A field's *value* (what the assembler shows and the golden model uses) is its encoded integer
  times ``scale``. Addresses, strides and byte counts have ``scale=4``: every memory access in the
  ISA is word-aligned by construction.
* Signed fields are two's complement.

Program structure
-----------------
A context's program is a straight-line stream of *top-level* instructions: control instructions
(``nop``, ``fence``, ``halt``) and ``utop`` headers. A ``utop`` header is followed by ``len`` body
instructions, all of the engine class the header names (DMA, ME or VE); the uTOp is the unit the
hardware schedules. Privileged ``ctx.*`` instructions are the hypervisor's: the host issues them
through the command queue; in a tenant program they fault with ``PRIVILEGED``.
"""

from dataclasses import dataclass
from functools import cached_property
from enum import IntEnum

from .errors import EncodingError

INSTRUCTION_BITS = 128
INSTRUCTION_BYTES = INSTRUCTION_BITS // 8
OPCODE_BITS = 8
WORD_BYTES = 4
NUM_TOKENS = 16
TOKEN_MAX_COUNT = 255
"""Token counters saturate at this value; a signal beyond it faults with ``TOKEN_OVERFLOW``."""
LUT_INDEX_BITS = 8
"""``ve.lut`` indexes its table with an int8 element read as an unsigned byte."""
LUT_BYTES = 1 << LUT_INDEX_BITS
"""Size of a ``ve.lutload`` table: one int8 output for each of the 256 int8 inputs."""


SCALE_FRACTION_BITS = 23
"""Stored fraction bits of the IEEE-754 binary32 scale words ``ve.requantf`` reads (bits [0:23)); the
significand has one more, the hidden bit."""
SCALE_EXPONENT_BITS = 8
"""Exponent bits of a binary32 scale word (bits [23:31)); bit 31 is the sign."""
SCALE_EXPONENT_BIAS = 127
"""Exponent bias of binary32: a normal scale is ``(1 + fraction / 2**23) * 2**(exponent - 127)``."""


class FmaSource(IntEnum):
    """What ``ve.fma``'s ``src1_kind`` field reads from src1: an exact integer or a binary32 word."""

    INT8 = 0
    """int8 bytes, sign-extended."""
    UINT8 = 1
    """uint8 values as the pNPU holds them: ``q − 128`` in an int8 byte; X is ``byte + 128 = q`` (0..255)."""
    INT32 = 2
    """int32 words, exact (no rounding to binary32 before the multiply)."""
    FP32 = 3
    """binary32 words (bit patterns)."""


class FmaResult(IntEnum):
    """What ``ve.fma``'s ``dst_kind`` field writes: the binary32 result, or it rounded to an integer."""

    FP32 = 0
    """The binary32 bit pattern, one word per element."""
    INT8 = 1
    """round_half_even of the binary32 result, saturated to [-128, 127], one byte per element."""
    UINT8 = 2
    """round_half_even of the binary32 result, saturated to [0, 255], written as the pNPU holds uint8
    values: ``q − 128`` in one int8 byte per element."""
    INT32 = 3
    """round_half_even of the binary32 result, saturated to int32, one word per element."""


FMA_BYTE_SOURCES = (FmaSource.INT8, FmaSource.UINT8)
FMA_BYTE_RESULTS = (FmaResult.INT8, FmaResult.UINT8)

UINT8_OFFSET = 128
"""The pNPU holds a uint8 value ``q`` as the int8 byte ``q − UINT8_OFFSET`` (bit 7 flipped), so int8 and
uint8 tensors share every int8 instruction."""


class EngineClass(IntEnum):
    """Which unit executes an instruction."""

    CTRL = 0
    DMA = 1
    ME = 2
    VE = 3
    HOST = 4


UTOP_CLASSES = (EngineClass.DMA, EngineClass.ME, EngineClass.VE)
"""Engine classes a uTOp can target."""


class FaultCode(IntEnum):
    """Why a context stopped with status ``FAULTED``."""

    NONE = 0
    ILLEGAL_OPCODE = 1
    ILLEGAL_FIELD = 2
    PRIVILEGED = 3
    WRONG_CLASS = 4
    SRAM_BOUNDS = 5
    HBM_BOUNDS = 6
    FETCH_BOUNDS = 7
    TOKEN_DEADLOCK = 8
    TOKEN_OVERFLOW = 9
    ME_STATE = 10
    KILLED = 11
    WATCHDOG = 12
    NO_ENGINE = 13
    COST_EXCEEDED = 14
    VE_STATE = 15


FAULT_DOCS = {
    FaultCode.NONE: "No fault.",
    FaultCode.ILLEGAL_OPCODE: "The opcode is not in the ISA table.",
    FaultCode.ILLEGAL_FIELD: "Reserved bits set, or a field outside its legal range "
    "(a zero count, a tile larger than the engine, an unknown engine class).",
    FaultCode.PRIVILEGED: "A tenant program executed a hypervisor (ctx.*) instruction.",
    FaultCode.WRONG_CLASS: "A body instruction outside a uTOp, or of another class than its uTOp header.",
    FaultCode.SRAM_BOUNDS: "A scratchpad access outside the context's scratchpad window.",
    FaultCode.HBM_BOUNDS: "An HBM access outside the context's HBM window.",
    FaultCode.FETCH_BOUNDS: "Instruction fetch outside the context's HBM window "
    "(also: a program that runs off its end without halt).",
    FaultCode.TOKEN_DEADLOCK: "A uTOp waits for more token signals than earlier uTOps can provide.",
    FaultCode.TOKEN_OVERFLOW: f"A token counter would exceed {TOKEN_MAX_COUNT}.",
    FaultCode.ME_STATE: "me.matmul without a preceding me.loadw in the same uTOp.",
    FaultCode.KILLED: "The hypervisor killed the context (ctx.kill); its uTOps in flight are aborted.",
    FaultCode.WATCHDOG: "The context ran longer than its cycle budget (ctx.budget) since ctx.start; its uTOps "
    "in flight are aborted.",
    FaultCode.NO_ENGINE: "Under the static or harvest policy, a uTOp for an engine class (DMA, ME, VE) of which "
    "the context owns no engine (ctx.engines).",
    FaultCode.COST_EXCEEDED: "A uTOp that declared a cost ran a body instruction that would take its "
    "work units past it (the instruction has no effect).",
    FaultCode.VE_STATE: "ve.lut without a preceding ve.lutload in the same uTOp.",
}


class Policy(IntEnum):
    """How the uTOp scheduler shares engines between contexts (the pNPU's ``POLICY`` register).

    Under ``STATIC`` and ``HARVEST`` ownership (``ctx.engines``) covers DMA engines as well as MEs and
    VEs; under ``OPERATOR`` DMA engines are shared by all contexts. ``HARVEST`` harvests only the
    classes in :data:`HARVESTED_CLASSES`.
    """

    STATIC = 0
    HARVEST = 1
    TEMPORAL = 2
    OPERATOR = 3


HARVESTED_CLASSES = frozenset({EngineClass.ME, EngineClass.VE})
"""Engine classes the ``harvest`` policy lends to contexts that do not own them. Not DMA engines: how
long a DMA uTOp runs depends on the other contexts' HBM traffic queued ahead of it, which its
declared cost cannot bound, so an owner could not be promised its DMA engine back in bounded time."""

POLICY_DOCS = {
    Policy.STATIC: "A context runs uTOps only on the engines (MEs, VEs, DMA engines) it owns (spatial "
    "partitioning, MIG-like).",
    Policy.HARVEST: "As static, and a free ME or VE whose owners have left it idle for HARVEST_GRACE cycles runs "
    "another context's uTOp that declares a cost within HARVEST_COST; the owner gets it back at the end of that "
    "uTOp, within a bound the declared cost sets (tcloud.rtl.reclaim_bound) (TCloud).",
    Policy.TEMPORAL: "The whole pNPU is time-sliced between running contexts, switching at uTOp boundaries "
    "(PREMA-like); a slice lasts QUANTUM x (priority + 1) cycles; ownership is ignored.",
    Policy.OPERATOR: "Each engine class (ME, VE) runs one context's uTOps at a time on all its engines; "
    "another context takes the class over once it drains (V10-like); a uTOp that has waited STARVATION "
    "cycles for a class makes its holder stop issuing to it once the holder has had it for QUANTUM x "
    "(priority + 1) cycles; ownership is ignored.",
}


def parse_policy(policy):
    """Return the :class:`Policy` named by ``policy`` (a Policy, its value or its name).

    Raises
    ------
    ValueError
        If ``policy`` names no policy; the message lists the valid names.
    """
    if isinstance(policy, str):
        try:
            return Policy[policy.upper()]
        except KeyError:
            pass
    else:
        try:
            return Policy(policy)
        except ValueError:
            pass
    names = ", ".join(p.name.lower() for p in Policy)
    raise ValueError(f"unknown scheduling policy {policy!r}; choose one of {names}")


class ContextStatus(IntEnum):
    """Life-cycle state of a hardware context."""

    IDLE = 0
    RUNNING = 1
    DONE = 2
    FAULTED = 3


@dataclass(frozen=True)
class Field:
    """One field of an instruction.

    Parameters
    ----------
    name : str
        Field name as written in assembly (``name=value``).
    width : int
        Encoded width in bits.
    doc : str
        One-line meaning, used in the generated reference.
    scale : int
        Value = encoded integer × ``scale`` (4 for byte addresses/strides/sizes).
    signed : bool
        Two's-complement field.
    minimum : int, optional
        Smallest legal value (after scaling); defaults to the encodable minimum.
    default : int, optional
        Value used when assembly omits the field; ``None`` makes the field required.
    kind : str
        ``"int"``, ``"flag"``, ``"mask"`` (token bit mask, shown as ``t0|t3``), ``"token"``
        (token index, shown as ``t5``) or ``"class"`` (engine class, shown by name).
    """

    name: str
    width: int
    doc: str
    scale: int = 1
    signed: bool = False
    minimum: int | None = None
    default: int | None = None
    kind: str = "int"

    @property
    def encoded_min(self):
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def encoded_max(self):
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @cached_property
    def min_value(self):
        """Smallest legal value."""
        low = self.encoded_min * self.scale
        return low if self.minimum is None else max(low, self.minimum)

    @cached_property
    def max_value(self):
        """Largest legal value."""
        return self.encoded_max * self.scale


@dataclass(frozen=True)
class InstructionSpec:
    """One row of the ISA table.

    Parameters
    ----------
    mnemonic : str
        Assembly name, e.g. ``"me.matmul"``.
    opcode : int
        8-bit opcode.
    engine : EngineClass
        Class of unit that executes it.
    fields : tuple of Field
        Operand fields in encoding order.
    doc : str
        Semantics, used in the generated reference.
    """

    mnemonic: str
    opcode: int
    engine: EngineClass
    fields: tuple
    doc: str

    def field(self, name):
        """Return the field called ``name``; raise :class:`EncodingError` if there is none."""
        for f in self.fields:
            if f.name == name:
                return f
        raise EncodingError(f"{self.mnemonic} has no field {name!r}; its fields are "
                            f"{', '.join(f.name for f in self.fields) or '(none)'}")

    def bit_offsets(self):
        """``(field, low_bit)`` pairs in encoding order."""
        return self._bit_offsets

    @cached_property
    def _bit_offsets(self):
        offsets, low = [], OPCODE_BITS
        for f in self.fields:
            offsets.append((f, low))
            low += f.width
        return tuple(offsets)

    @cached_property
    def field_names(self):
        """The names of the fields, as a set."""
        return frozenset(f.name for f in self.fields)

    @property
    def used_bits(self):
        return OPCODE_BITS + sum(f.width for f in self.fields)


def _sram(name, doc):
    return Field(name, 24, doc, scale=WORD_BYTES)


def _hbm(name, doc):
    return Field(name, 30, doc, scale=WORD_BYTES)


def _stride(name, width, doc):
    return Field(name, width, doc, scale=WORD_BYTES, default=0)


def _count(name, width, doc):
    return Field(name, width, doc, minimum=1)


def _flag(name, doc, default=0):
    return Field(name, 1, doc, default=default, kind="flag")


_CTX = Field("ctx", 4, "Hardware context index.")

_DMA_FIELDS = (
    _sram("sram", "Scratchpad byte address (context-relative)."),
    _hbm("hbm", "HBM byte address (context-relative)."),
    _count("rows", 12, "Number of rows."),
    Field("row_bytes", 14, "Bytes per row.", scale=WORD_BYTES, minimum=WORD_BYTES),
    _stride("hbm_stride", 20, "HBM bytes between row starts."),
    _stride("sram_stride", 16, "Scratchpad bytes between row starts."),
)

_VE_BINARY_FIELDS = (
    _sram("dst", "Destination scratchpad address."),
    _sram("src1", "First source scratchpad address."),
    _sram("src2", "Second source scratchpad address."),
    _count("n", 16, "Elements per row."),
    _flag("src1_i8", "First source holds int8 (else int32)."),
    _flag("src2_i8", "Second source holds int8 (else int32)."),
    _flag("dst_i8", "Destination is int8, saturated (else int32, wrapping)."),
)

_VE_UNARY_FIELDS = (
    _sram("dst", "Destination scratchpad address."),
    _sram("src", "Source scratchpad address."),
    _count("n", 16, "Elements per row."),
    _flag("src_i8", "Source holds int8 (else int32)."),
    _flag("dst_i8", "Destination is int8, saturated (else int32, wrapping)."),
)

_VE_REDUCE_FIELDS = (
    _sram("dst", "Destination: one int32 per row, rows ve.shape.dst_stride apart."),
    _sram("src", "Source scratchpad address (rows ve.shape.src1_stride apart)."),
    _count("n", 16, "Elements per row."),
    _flag("src_i8", "Source holds int8 (else int32)."),
)

_FMA_SRC1_KIND = Field("src1_kind", 2, "src1 holds int8 (0), uint8 held as q - 128 in int8 (1; X = q), int32 (2) "
                       "or binary32 words (3).", default=0)
_FMA_DST_KIND = Field("dst_kind", 2, "dst gets binary32 words (0) or the rounded integer saturated to int8 (1), "
                      "uint8 (2; written as q - 128 in int8) or int32 (3).", default=0)

_ROW_STRIDES = {"dst": "dst_stride", "src1": "src1_stride", "src": "src1_stride", "src2": "src2_stride"}
"""The ``ve.shape`` stride that steps each address field of a VE instruction from row to row (the one
source of a one-source instruction steps by ``src1_stride``)."""


def _ve(mnemonic, opcode, fields, semantics):
    """A VE instruction whose description ends with how its own address fields step from row to row."""
    steps = [f"{f.name} + r·ve.shape.{_ROW_STRIDES[f.name]}" for f in fields if f.name in _ROW_STRIDES]
    rows = ", ".join(steps[:-1]) + (" and " if len(steps) > 1 else "") + steps[-1]
    return InstructionSpec(mnemonic, opcode, EngineClass.VE, fields,
                           f"{semantics} Applies to each of the rows set by ve.shape: row r uses {rows}.")

INSTRUCTIONS = (
    # --- control (top level) -------------------------------------------------------------------
    InstructionSpec("nop", 0x00, EngineClass.CTRL, (), "Does nothing."),
    InstructionSpec("halt", 0x01, EngineClass.CTRL, (),
                    "Waits until every uTOp of the context has completed, then ends the program "
                    "(status DONE)."),
    InstructionSpec("fence", 0x02, EngineClass.CTRL, (),
                    "Waits until every earlier uTOp of the context has completed."),
    InstructionSpec("utop", 0x03, EngineClass.CTRL, (
        Field("cls", 2, "Engine class of the body: dma, me or ve.", minimum=int(EngineClass.DMA),
              kind="class"),
        _count("len", 12, "Number of body instructions that follow."),
        Field("signal", NUM_TOKENS, "Tokens incremented when the uTOp completes.", default=0,
              kind="mask"),
        Field("wait0", 4, "Token of wait slot 0.", default=0, kind="token"),
        Field("count0", 4, "Signals consumed from wait0 before dispatch (0: slot unused).", default=0),
        Field("wait1", 4, "Token of wait slot 1.", default=0, kind="token"),
        Field("count1", 4, "Signals consumed from wait1 (0: unused).", default=0),
        Field("wait2", 4, "Token of wait slot 2.", default=0, kind="token"),
        Field("count2", 4, "Signals consumed from wait2 (0: unused).", default=0),
        Field("cost", 24, "Work units the body may use (tcloud.isa.cost); 0: undeclared.", default=0,
              kind="int"),
    ), "Header of a micro tensor operator. The uTOp is issued in program order once every used "
       "wait slot's token holds at least its count (the counts are then consumed); it runs on one "
       "engine of class cls, leaves no state in the engine, and on completion increments every "
       "token in signal. Waits must be satisfiable by uTOps earlier in program order, otherwise the "
       "context faults with TOKEN_DEADLOCK. A declared cost is enforced: the body instruction that "
       "would exceed it faults with COST_EXCEEDED; only uTOps declaring a cost within HARVEST_COST "
       "run on engines their context does not own."),
    # --- DMA -----------------------------------------------------------------------------------
    InstructionSpec("dma.load", 0x10, EngineClass.DMA, _DMA_FIELDS,
                    "Copies rows × row_bytes from HBM to the scratchpad (2-D strided)."),
    InstructionSpec("dma.store", 0x11, EngineClass.DMA, _DMA_FIELDS,
                    "Copies rows × row_bytes from the scratchpad to HBM (2-D strided)."),
    InstructionSpec("dma.gather", 0x12, EngineClass.DMA, (
        *_DMA_FIELDS[:4],
        _sram("idx", "Scratchpad address of the rows int32 indices (context-relative)."),
        _DMA_FIELDS[5],
    ), "Copies the table rows an index vector selects from HBM to the scratchpad (an embedding lookup): "
       "for r in 0..rows-1, with i the int32 at idx + 4·r, copies row_bytes bytes from hbm + i·row_bytes "
       "to sram + r·sram_stride. The table is dense (rows row_bytes apart): with the indices, the sram, hbm, "
       "rows and row_bytes fields of dma.load (in its bits) fill the 128-bit word, leaving no room for an "
       "HBM stride. Every index is checked before any byte is written, in this order: the index vector "
       "[idx, idx + 4·rows) and the destination [sram, sram + (rows-1)·sram_stride + row_bytes) lie in the "
       "scratchpad window (else SRAM_BOUNDS); the two do not overlap (else ILLEGAL_FIELD: a row written "
       "must not change an index); each index i, in row order, has 0 ≤ i and its row [hbm + i·row_bytes, "
       "hbm + (i + 1)·row_bytes) inside the HBM window, computed without wrapping (else HBM_BOUNDS)."),
    # --- matrix engine -------------------------------------------------------------------------
    InstructionSpec("me.loadw", 0x20, EngineClass.ME, (
        _sram("w", "Scratchpad address of the int8 weight tile W[k][n]."),
        _count("k", 8, "Rows of W (reduction depth), at most ArchConfig.me_rows."),
        _count("n", 8, "Columns of W, at most ArchConfig.me_cols."),
        _stride("w_stride", 16, "Bytes between rows of W."),
    ), "Loads the stationary int8 operand into the systolic array for the rest of the uTOp."),
    InstructionSpec("me.matmul", 0x21, EngineClass.ME, (
        _sram("a", "Scratchpad address of the int8 input A[m][k]."),
        _sram("out", "Scratchpad address of the int32 output O[m][n]."),
        _count("m", 12, "Rows of A streamed through the array."),
        _stride("a_stride", 16, "Bytes between rows of A."),
        _stride("out_stride", 16, "Bytes between rows of O."),
        _flag("acc", "Accumulate into O (else overwrite)."),
    ), "O[i][j] = (acc ? O[i][j] : 0) + sum_k A[i][k]·W[k][j] with int32 wrap-around, using the "
       "k and n of the last me.loadw in this uTOp."),
    # --- vector engine -------------------------------------------------------------------------
    InstructionSpec("ve.shape", 0x30, EngineClass.VE, (
        _count("rows", 12, "Rows processed by each following VE instruction."),
        _stride("dst_stride", 16, "Bytes between destination rows."),
        _stride("src1_stride", 16, "Bytes between rows of the first source (0 broadcasts one row)."),
        _stride("src2_stride", 16, "Bytes between rows of the second source (0 broadcasts one row)."),
        _flag("src2_row", "The second source of the two-source instructions (ve.add, ve.sub, ve.mul, ve.max, "
              "ve.min, ve.requantf, ve.fma, ve.fmav) holds one element per row: row r reads one element, at the "
              "second source's address plus r·src2_stride, and uses it for all its n elements (with src2_stride 0, one scalar for "
              "every element). A per-row scalar such as a row's max, mean or reciprocal sum then needs no "
              "copy across the row."),
    ), "Sets the 2-D shape used by the rest of the uTOp (each uTOp starts with rows=1, strides 0, "
       "src2_row 0)."),
    _ve("ve.add", 0x31, _VE_BINARY_FIELDS, "dst = src1 + src2."),
    _ve("ve.sub", 0x32, _VE_BINARY_FIELDS, "dst = src1 - src2."),
    _ve("ve.mul", 0x33, _VE_BINARY_FIELDS, "dst = src1 * src2."),
    _ve("ve.max", 0x34, _VE_BINARY_FIELDS, "dst = max(src1, src2)."),
    _ve("ve.min", 0x35, _VE_BINARY_FIELDS, "dst = min(src1, src2)."),
    _ve("ve.relu", 0x38, _VE_UNARY_FIELDS, "dst = max(src, 0)."),
    _ve("ve.copy", 0x39, _VE_UNARY_FIELDS, "dst = src (int8 sign-extends, int32 to int8 saturates)."),
    _ve("ve.fill", 0x3A, (
        _sram("dst", "Destination scratchpad address."),
        _count("n", 16, "Elements per row."),
        Field("value", 32, "Value written (saturated when dst_i8).", signed=True, default=0),
        _flag("dst_i8", "Destination is int8 (else int32)."),
    ), "dst = value."),
    _ve("ve.requant", 0x3B, (
        _sram("dst", "Destination scratchpad address."),
        _sram("src", "Source scratchpad address (int32)."),
        _count("n", 16, "Elements per row."),
        Field("mult", 31, "Fixed-point multiplier (unsigned)."),
        Field("shift", 6, "Right shift applied to src*mult."),
        Field("zp", 8, "Output zero point added after rounding.", signed=True, default=0),
        _flag("dst_i8", "Saturate to int8 (else to int32).", default=1),
    ), "dst = saturate(round_half_even(src*mult / 2^shift) + zp), computed exactly in 64 bits; "
       "the same rule as ONNX QuantizeLinear."),
    _ve("ve.requantf", 0x3E, (
        _sram("dst", "Destination scratchpad address."),
        _sram("src1", "Accumulators (int32)."),
        _sram("src2", "Scales: one IEEE-754 binary32 word per element (bit pattern of the fp32 scale)."),
        _count("n", 16, "Elements per row."),
        Field("zp", 8, "Output zero point added after rounding.", signed=True, default=0),
        _flag("dst_i8", "Saturate to int8 (else to int32).", default=1),
    ), "dst = saturate(round_half_even(fl32(fl32(src1) * src2)) + zp) with src2 the binary32 scale and fl32 "
       "rounding to binary32: onnxruntime's requantization (QLinearConv, QLinearMatMul, QGemm) bit for bit, "
       "computed in integers on magnitudes (the signs of src1 and src2 set the sign): a = |src1| rounded to 24 "
       "significant bits, p = a·M rounded to 24 significant bits, q = p / 2^(150 - E) rounded to an integer, "
       "every rounding half to even, where M is the 24-bit significand (hidden bit included) and E the biased "
       "exponent of the scale. Every word is defined: E = 0 (zero, subnormal) gives zp; E = 255 (inf, NaN) "
       "continues the rule (a scale of 2^128·(1 + fraction)), so a nonzero src1 saturates. int8 results "
       "saturate to [-128, 127]; for uint8 outputs take zp - 128 and flip bit 7 of the result."),
    InstructionSpec("ve.setf", 0x42, EngineClass.VE, (
        Field("value", 32, "IEEE-754 binary32 bit pattern of the multiplier R.", default=0, kind="int"),
    ), "Sets the binary32 scalar R for the rest of the uTOp: the multiplier of every following ve.fma and "
       "the addend of every following ve.fmav (each uTOp starts with R = +0.0, bit pattern 0)."),
    _ve("ve.fma", 0x43, (
        _sram("dst", "Destination scratchpad address."),
        _sram("src1", "Multiplicand X (kind src1_kind)."),
        _sram("src2", "Addend C: one binary32 word per element (ignored when src2_zero)."),
        _count("n", 16, "Elements per row."),
        _FMA_SRC1_KIND,
        _flag("src2_zero", "No addend: C = +0.0 and src2 is not read."),
        _FMA_DST_KIND,
    ), "v = fl32(X·R + C), the fused multiply-add rounded once (half to even) to binary32, with R from "
       "ve.setf; dst_kind 0 writes v's bit pattern, dst_kind 1-3 write round_half_even(v) saturated "
       "(so int outputs are rounded twice: to binary32, then to an integer, as onnxruntime's "
       "QLinearAdd). Integer X (int8, uint8, int32) is exact, not first rounded to binary32. Binary32 "
       "operands with exponent field 0 (zero, subnormal) read as zero; exponent field 255 (inf, NaN) "
       "is not special: the word reads as 2^128·(1 + fraction/2^23) with its sign. A result whose "
       "rounded magnitude is below 2^-126 is written as +0.0 (subnormal results flush to zero; a zero "
       "result is always +0.0), one of 2^128 or more as ±inf (exponent 255, fraction 0), which the "
       "integer kinds saturate. Int8 data with scales of magnitude at least 2^-100 never reach "
       "either: X·R + C is a multiple of 2^(min(eR, eC) - 23), so a nonzero result is normal. "
       "QLinearAdd: ve.setf rBC, ve.fma t = b·rBC + K; ve.setf rAC, ve.fma y = a·rAC + t to int8/uint8. "
       "QLinearMul: p = (a - zA)·(b - zB) as int32; ve.setf r, ve.fma x = p·r + 0; ve.setf 1.0, "
       "ve.fma y = x·1.0 + zC (a broadcast row) to int8/uint8."),
    _ve("ve.fmav", 0x44, (
        _sram("dst", "Destination scratchpad address."),
        _sram("src1", "Multiplicand X (kind src1_kind)."),
        _sram("src2", "Multiplier Y: one binary32 word per element (one per row with ve.shape.src2_row)."),
        _count("n", 16, "Elements per row."),
        _FMA_SRC1_KIND,
        _FMA_DST_KIND,
    ), "v = fl32(X·Y + R): ve.fma with the roles of R and src2 swapped, an element-by-element product "
       "plus the scalar R of ve.setf as addend (R = +0.0 gives the rounded product fl32(X·Y)), rounded "
       "once; operands, special words and result kinds exactly as ve.fma. With ve.fma and ve.shape.src2_row "
       "it evaluates polynomials by Horner's rule (p = fl32(p·f + c_k)) and Newton iterations for a "
       "reciprocal (y = fl32(y·fl32(-v·y + 2))) or an inverse square root, which softmax and layer "
       "normalization need (tcloud.firmware.nonlinear)."),
    _ve("ve.redsum", 0x3C, _VE_REDUCE_FIELDS, "dst[r] = sum of the n elements of row r (int32 wrap-around)."),
    _ve("ve.redmax", 0x3D, _VE_REDUCE_FIELDS, "dst[r] = max of the n elements of row r."),
    InstructionSpec("ve.lutload", 0x40, EngineClass.VE, (
        _sram("src", f"Scratchpad address of the {LUT_BYTES}-byte int8 table."),
    ), f"Loads a {LUT_BYTES}-byte table (byte i is the output for input byte i) into the engine for the rest of "
       "the uTOp; reads one table whatever ve.shape says."),
    _ve("ve.lut", 0x41, (
        _sram("dst", "Destination scratchpad address (int8)."),
        _sram("src", "Source scratchpad address (int8)."),
        _count("n", 16, "Elements per row."),
    ), "dst = table[src as unsigned byte] on int8 elements, with the table of the last ve.lutload in this "
       "uTOp (any int8 unary function of one operand: quantized sigmoid, tanh, leaky ReLU, ...)."),
    # --- hypervisor (privileged) ---------------------------------------------------------------
    InstructionSpec("ctx.sram", 0xF0, EngineClass.HOST, (
        _CTX, _sram("base", "Physical scratchpad base."),
        Field("size", 25, "Window size in bytes.", scale=WORD_BYTES)),
        "Sets the context's scratchpad window; context addresses 0..size-1 map to base.."),
    InstructionSpec("ctx.hbm", 0xF1, EngineClass.HOST, (
        _CTX, _hbm("base", "Physical HBM base."),
        Field("size", 31, "Window size in bytes.", scale=WORD_BYTES)),
        "Sets the context's HBM window (program, data and tensors)."),
    InstructionSpec("ctx.engines", 0xF2, EngineClass.HOST, (
        _CTX, Field("me_mask", 16, "Matrix engines the context owns.", kind="int"),
        Field("ve_mask", 16, "Vector engines the context owns.", kind="int"),
        Field("dma_mask", 16, "DMA engines the context owns.", kind="int")),
        "Sets the engines the context owns (the scheduler policy decides whether others may harvest them). "
        "Contexts may own a DMA engine together (a shared pool), as MEs and VEs."),
    InstructionSpec("ctx.prio", 0xF3, EngineClass.HOST, (
        _CTX, Field("priority", 8, "Scheduling weight; higher is served more often.")),
        "Sets the context's scheduling weight."),
    InstructionSpec("ctx.start", 0xF4, EngineClass.HOST, (
        _CTX, _hbm("pc", "Entry point (HBM address, context-relative).")),
        "Clears the context's tokens and fault, sets its program counter and marks it RUNNING."),
    InstructionSpec("ctx.kill", 0xF5, EngineClass.HOST, (_CTX,),
                    "Stops a running context with fault KILLED."),
    InstructionSpec("ctx.scrub", 0xF6, EngineClass.HOST, (_CTX,),
                    "Zeroes the context's scratchpad and HBM windows and its counters "
                    "(before the windows are given to another tenant)."),
    InstructionSpec("ctx.budget", 0xF7, EngineClass.HOST, (
        _CTX, Field("cycles", 32, "Cycle budget per run; 0 means unlimited.", kind="int")),
        "Sets the context's watchdog: a run longer than this many cycles since ctx.start faults "
        "with WATCHDOG (cycle-accurate backends only; the golden model is untimed)."),
)

BY_MNEMONIC = {spec.mnemonic: spec for spec in INSTRUCTIONS}
BY_OPCODE = {spec.opcode: spec for spec in INSTRUCTIONS}


def spec_for(mnemonic):
    """Return the :class:`InstructionSpec` for ``mnemonic``.

    Raises
    ------
    EncodingError
        If the mnemonic is not in the table.
    """
    try:
        return BY_MNEMONIC[mnemonic]
    except KeyError:
        raise EncodingError(f"unknown mnemonic {mnemonic!r}") from None


def field_max(mnemonic, name):
    """Largest legal value of field ``name`` of instruction ``mnemonic`` (after scaling)."""
    return spec_for(mnemonic).field(name).max_value


def _check_table():
    if len(BY_MNEMONIC) != len(INSTRUCTIONS) or len(BY_OPCODE) != len(INSTRUCTIONS):
        raise AssertionError("duplicate mnemonic or opcode in the ISA table")
    for spec in INSTRUCTIONS:
        if spec.used_bits > INSTRUCTION_BITS:
            raise AssertionError(f"{spec.mnemonic} needs {spec.used_bits} bits")
        if not 0 <= spec.opcode < (1 << OPCODE_BITS):
            raise AssertionError(f"{spec.mnemonic} opcode out of range")
        if len({f.name for f in spec.fields}) != len(spec.fields):
            raise AssertionError(f"{spec.mnemonic} repeats a field name")


_check_table()
