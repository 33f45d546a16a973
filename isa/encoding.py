"""Encoder and decoder for 128-bit TCloud instructions, derived from :mod:`tcloud.isa.table`."""

from functools import lru_cache

from .errors import EncodingError
from .table import (BY_OPCODE, INSTRUCTION_BITS, INSTRUCTION_BYTES, OPCODE_BITS, FaultCode,
                    InstructionSpec, spec_for)


class DecodeError(EncodingError):
    """An instruction word is not a legal instruction.

    Attributes
    ----------
    fault : FaultCode
        The fault the hardware raises for this word (``ILLEGAL_OPCODE`` or ``ILLEGAL_FIELD``).
    """

    def __init__(self, message, fault):
        super().__init__(message)
        self.fault = fault


class Instr:
    """One decoded instruction: a table row and its field values.

    Field values are the semantic values (byte addresses, element counts), i.e. the encoded
    integers times each field's ``scale``. Construction validates every field.

    Parameters
    ----------
    mnemonic : str or InstructionSpec
        Which instruction.
    **values : int
        Field values; fields with a table default may be omitted.

    Raises
    ------
    EncodingError
        Unknown mnemonic, unknown or missing field, or a value out of range / not a multiple of the
        field's scale. The message names the instruction and field.

    Examples
    --------
    >>> Instr("me.loadw", w=0x100, k=4, n=4, w_stride=4).encode().hex()[:4]
    '2040'
    """

    __slots__ = ("spec", "values")

    def __init__(self, mnemonic, /, **values):
        spec = mnemonic if isinstance(mnemonic, InstructionSpec) else spec_for(mnemonic)
        unknown = sorted(set(values) - spec.field_names)
        if unknown:
            raise EncodingError(f"{spec.mnemonic}: unknown field(s) {', '.join(unknown)}; "
                                f"fields are {', '.join(f.name for f in spec.fields) or '(none)'}")
        resolved = {}
        for f in spec.fields:
            if f.name in values:
                resolved[f.name] = check_field(spec, f, values[f.name])
            elif f.default is not None:
                resolved[f.name] = f.default
            else:
                raise EncodingError(f"{spec.mnemonic}: missing required field {f.name!r}")
        self.spec = spec
        self.values = resolved

    @property
    def mnemonic(self):
        return self.spec.mnemonic

    @property
    def engine(self):
        return self.spec.engine

    def __getitem__(self, name):
        return self.values[name]

    def __eq__(self, other):
        return isinstance(other, Instr) and self.spec is other.spec and self.values == other.values

    def __hash__(self):
        return hash((self.spec.opcode, tuple(self.values.items())))

    def __repr__(self):
        args = "".join(f", {k}={v!r}" for k, v in self.values.items())
        return f"Instr({self.mnemonic!r}{args})"

    def encode(self):
        """Return the 16-byte little-endian encoding."""
        word = self.spec.opcode
        for f, low in self.spec.bit_offsets():
            raw = self.values[f.name] // f.scale
            word |= (raw & ((1 << f.width) - 1)) << low
        return word.to_bytes(INSTRUCTION_BYTES, "little")


def check_field(spec, field, value):
    """Validate one field value and return it as an ``int``.

    Raises
    ------
    EncodingError
        If the value is not an integer, is out of range or not a multiple of the field's scale.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            as_int = int(value)
        except (TypeError, ValueError):
            as_int = None
        if as_int is None or as_int != value:
            raise EncodingError(f"{spec.mnemonic}: field {field.name!r} must be an integer, got {value!r}")
        value = as_int
    if value % field.scale:
        raise EncodingError(f"{spec.mnemonic}: field {field.name!r}={value} is not a multiple of "
                            f"{field.scale}")
    if not field.min_value <= value <= field.max_value:
        raise EncodingError(f"{spec.mnemonic}: field {field.name!r}={value} is out of range "
                            f"[{field.min_value}, {field.max_value}]")
    return int(value)


def encode(mnemonic, /, **values):
    """Encode one instruction; shorthand for ``Instr(mnemonic, **values).encode()``."""
    return Instr(mnemonic, **values).encode()


@lru_cache(maxsize=65536)
def decode(data):
    """Decode one 16-byte instruction.

    Parameters
    ----------
    data : bytes
        Exactly 16 bytes.

    Returns
    -------
    Instr

    Raises
    ------
    EncodingError
        If ``data`` is not 16 bytes long.
    DecodeError
        Unknown opcode, reserved bits set or a field outside its legal range; its ``fault`` says
        which :class:`~tcloud.isa.table.FaultCode` the hardware raises.
    """
    if len(data) != INSTRUCTION_BYTES:
        raise EncodingError(f"an instruction is {INSTRUCTION_BYTES} bytes, got {len(data)}")
    word = int.from_bytes(data, "little")
    opcode = word & ((1 << OPCODE_BITS) - 1)
    spec = BY_OPCODE.get(opcode)
    if spec is None:
        raise DecodeError(f"unknown opcode 0x{opcode:02x}", FaultCode.ILLEGAL_OPCODE)
    if word >> spec.used_bits:
        raise DecodeError(f"{spec.mnemonic}: reserved bits {spec.used_bits}..{INSTRUCTION_BITS - 1} "
                          f"are not zero", FaultCode.ILLEGAL_FIELD)
    values = {}
    for f, low in spec.bit_offsets():
        raw = (word >> low) & ((1 << f.width) - 1)
        if f.signed and raw >> (f.width - 1):
            raw -= 1 << f.width
        values[f.name] = raw * f.scale
    try:
        return Instr(spec, **values)
    except EncodingError as exc:
        raise DecodeError(str(exc), FaultCode.ILLEGAL_FIELD) from None


def decode_stream(code):
    """Decode a whole code segment (a multiple of 16 bytes) into a list of :class:`Instr`."""
    if len(code) % INSTRUCTION_BYTES:
        raise EncodingError(f"code length {len(code)} is not a multiple of {INSTRUCTION_BYTES}")
    return [decode(bytes(code[i:i + INSTRUCTION_BYTES])) for i in range(0, len(code), INSTRUCTION_BYTES)]


def encode_stream(instrs):
    """Encode a sequence of :class:`Instr` into one code segment."""
    return b"".join(i.encode() for i in instrs)
