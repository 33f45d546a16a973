"""Amaranth views of TCloud instructions, derived from the ISA table.

Each instruction becomes an ``amaranth.lib.data.StructLayout`` whose members are laid out exactly
as the Python encoder packs them (opcode in bits [0:8), then the fields in table order); all of them
are members of one 128-bit :data:`INSTRUCTION_LAYOUT` union. Fields hold their *encoded* integers:
addresses and strides are in 4-byte words, as on the wire.
"""

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from tcloud.isa.table import INSTRUCTION_BITS, INSTRUCTIONS, OPCODE_BITS


def member_name(mnemonic):
    """Union member name of an instruction (``"me.loadw"`` → ``"me_loadw"``)."""
    return mnemonic.replace(".", "_")


def instruction_layout(spec):
    """``StructLayout`` of one instruction: opcode, its fields, and the reserved high bits."""
    members = {"opcode": unsigned(OPCODE_BITS)}
    for field in spec.fields:
        members[field.name] = signed(field.width) if field.signed else unsigned(field.width)
    if spec.used_bits < INSTRUCTION_BITS:
        members["reserved"] = unsigned(INSTRUCTION_BITS - spec.used_bits)
    return data.StructLayout(members)


INSTRUCTION_LAYOUT = data.UnionLayout(
    {member_name(spec.mnemonic): instruction_layout(spec) for spec in INSTRUCTIONS})
"""All instructions as views of one 128-bit word (``view.me_loadw.k``, ``view.utop.cls``, ...)."""

OPCODES = {spec.mnemonic: spec.opcode for spec in INSTRUCTIONS}


def decode_checks(word):
    """Return ``(known, legal, engine)`` expressions for a 128-bit instruction ``word`` (a view).

    ``known``: the opcode is in the table. ``legal``: additionally its reserved bits are zero and
    every field is at least its minimum (the checks the Python decoder makes). ``engine``: the
    opcode's :class:`~tcloud.isa.table.EngineClass`. All three are generated from the table.
    """
    from amaranth.hdl import Const

    opcode = word.as_value()[:OPCODE_BITS]
    known, legal, engine = Const(0), Const(0), Const(0, 3)
    for spec in INSTRUCTIONS:
        view = getattr(word, member_name(spec.mnemonic))
        ok = Const(1)
        if spec.used_bits < INSTRUCTION_BITS:
            ok = ok & (view.reserved == 0)
        for field in spec.fields:
            low = field.min_value // field.scale
            if low > field.encoded_min:
                ok = ok & (getattr(view, field.name) >= low)
        match = opcode == spec.opcode
        known = known | match
        legal = legal | (match & ok)
        engine = engine | (match.replicate(3) & int(spec.engine))
    return known, legal, engine
