"""Amaranth views of TCloud instructions, derived from the ISA table.

Each instruction becomes an ``amaranth.lib.data.StructLayout`` whose members are laid out exactly
as the Python encoder packs them (opcode in bits [0:8), then the fields in table order); all of them
are members of one 128-bit :data:`INSTRUCTION_LAYOUT` union. Fields hold their *encoded* integers:
addresses and strides are in 4-byte words, as on the wire.
"""

from amaranth.hdl import Cat, Module, signed, unsigned
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from tcloud.isa.table import INSTRUCTION_BITS, INSTRUCTIONS, OPCODE_BITS, EngineClass


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


def host_ctx_bits(instructions):
    """Bits ``(low, high)`` of the ``ctx`` field of every host command in ``instructions``.

    The pNPU's host-command unit reads the context before it knows the command, so every host
    command must hold ``ctx`` in the same bits.

    Raises
    ------
    AssertionError
        If a host command has no ``ctx`` field or holds it in other bits than the rest.
    """
    places = {spec.mnemonic: next(((low, low + f.width) for f, low in spec.bit_offsets() if f.name == "ctx"), None)
              for spec in instructions if spec.engine == EngineClass.HOST}
    if None in places.values() or len(set(places.values())) != 1:
        raise AssertionError(f"every host command must hold ctx in the same bits: {places}")
    return next(iter(places.values()))


HOST_CTX_BITS = host_ctx_bits(INSTRUCTIONS)
"""Where every host command holds its context index."""


def _field_minimums(spec):
    """``(bit offset, width, signed, low)`` of every field of ``spec`` whose legal minimum (in encoded
    units) is above the lowest value its bits can encode."""
    layout = instruction_layout(spec)
    for field in spec.fields:
        low = field.min_value // field.scale
        if low > field.encoded_min:
            yield layout[field.name].offset, field.width, field.signed, low


MINIMUM_CHECKS = sorted({check for spec in INSTRUCTIONS for check in _field_minimums(spec)})
"""Every field minimum of the table as ``(bit offset, width, signed, low)``, shared by all opcodes."""

DECODE_ROM_LAYOUT = data.StructLayout({
    "known": unsigned(1),
    "engine": unsigned(3),
    "reserved": unsigned(INSTRUCTION_BITS),
    "minimums": unsigned(len(MINIMUM_CHECKS)),
})
"""One decode-ROM entry: whether the opcode exists, its engine class, the mask of its reserved bits
and which of :data:`MINIMUM_CHECKS` apply to it."""


def _rom_entry(spec):
    minimums = sum(1 << MINIMUM_CHECKS.index(check) for check in _field_minimums(spec))
    reserved = ((1 << INSTRUCTION_BITS) - 1) ^ ((1 << spec.used_bits) - 1)
    return {"known": 1, "engine": int(spec.engine), "reserved": reserved, "minimums": minimums}


DECODE_ROM = [next((_rom_entry(s) for s in INSTRUCTIONS if s.opcode == op), {}) for op in range(1 << OPCODE_BITS)]
"""Decode-ROM contents, indexed by opcode (unknown opcodes are all zero)."""


class Decoder(wiring.Component):
    """Checks of one 128-bit instruction word, all generated from the ISA table.

    A ROM indexed by the opcode gives whether it is known, its engine class, its reserved bits and
    which field minimums apply, so the checks cost a few word operations whatever the table holds.

    Members
    -------
    word : In(INSTRUCTION_LAYOUT)
    known : Out(1)
        The opcode is in the table.
    legal : Out(1)
        Additionally, its reserved bits are zero and every field is at least its minimum (the checks
        the Python decoder makes).
    engine : Out(3)
        The opcode's :class:`~tcloud.isa.table.EngineClass` (0 for an unknown opcode).
    """

    def __init__(self):
        super().__init__({"word": In(INSTRUCTION_LAYOUT), "known": Out(1), "legal": Out(1), "engine": Out(3)})

    def elaborate(self, platform):
        m = Module()
        word = self.word.as_value()
        m.submodules.rom = rom = memory.Memory(shape=DECODE_ROM_LAYOUT, depth=len(DECODE_ROM), init=DECODE_ROM)
        entry = rom.read_port(domain="comb")
        below = Cat((word[offset:offset + width].as_signed() if is_signed else word[offset:offset + width]) < low
                    for offset, width, is_signed, low in MINIMUM_CHECKS)
        m.d.comb += [entry.addr.eq(word[:OPCODE_BITS]),
                     self.known.eq(entry.data.known), self.engine.eq(entry.data.engine),
                     self.legal.eq(entry.data.known & ~(word & entry.data.reserved).any()
                                   & ~(below & entry.data.minimums).any())]
        return m


def add_decoder(m, name, word):
    """Add a :class:`Decoder` of ``word`` to module ``m`` as submodule ``name``; return it."""
    m.submodules[name] = decoder = Decoder()
    m.d.comb += decoder.word.eq(word)
    return decoder
