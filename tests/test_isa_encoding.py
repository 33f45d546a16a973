"""The ISA table and the encoder/decoder derived from it."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcloud.isa import INSTRUCTIONS, DecodeError, EncodingError, FaultCode, Instr, decode, encode
from tcloud.isa.table import INSTRUCTION_BYTES, BY_MNEMONIC


def field_values(field):
    return st.integers(field.min_value // field.scale, field.max_value // field.scale).map(
        lambda raw: raw * field.scale)


@st.composite
def instructions(draw, specs=INSTRUCTIONS):
    spec = draw(st.sampled_from(specs))
    return Instr(spec, **{f.name: draw(field_values(f)) for f in spec.fields})


def test_table_is_consistent():
    assert len({s.opcode for s in INSTRUCTIONS}) == len(INSTRUCTIONS)
    assert len({s.mnemonic for s in INSTRUCTIONS}) == len(INSTRUCTIONS)
    for spec in INSTRUCTIONS:
        assert spec.used_bits <= 128, spec.mnemonic
        for field in spec.fields:
            assert field.min_value <= field.max_value, (spec.mnemonic, field.name)
            assert field.default is None or field.min_value <= field.default <= field.max_value


@given(instructions())
def test_encode_decode_round_trip(instr):
    word = instr.encode()
    assert len(word) == INSTRUCTION_BYTES
    assert decode(word) == instr
    assert decode(word).encode() == word


@pytest.mark.parametrize("spec", INSTRUCTIONS, ids=lambda s: s.mnemonic)
def test_every_field_extreme_round_trips(spec):
    for pick in ("min_value", "max_value"):
        values = {f.name: getattr(f, pick) for f in spec.fields}
        instr = Instr(spec, **values)
        assert decode(instr.encode()).values == values


@pytest.mark.parametrize("spec", [s for s in INSTRUCTIONS if s.fields], ids=lambda s: s.mnemonic)
def test_out_of_range_field_names_the_field(spec):
    field = spec.fields[-1]
    base = {f.name: f.min_value for f in spec.fields}
    with pytest.raises(EncodingError, match=rf"{spec.mnemonic}: field '{field.name}'=.*out of range"):
        Instr(spec, **{**base, field.name: field.max_value + field.scale})
    with pytest.raises(EncodingError, match=rf"field '{field.name}'"):
        Instr(spec, **{**base, field.name: field.min_value - field.scale})


def test_misaligned_address_is_rejected():
    with pytest.raises(EncodingError, match="'sram'=6 is not a multiple of 4"):
        Instr("dma.load", sram=6, hbm=0, rows=1, row_bytes=4)


def test_unknown_mnemonic_missing_and_unknown_fields():
    with pytest.raises(EncodingError, match="unknown mnemonic 'me.matmull'"):
        Instr("me.matmull")
    with pytest.raises(EncodingError, match="missing required field 'k'"):
        Instr("me.loadw", w=0, n=4)
    with pytest.raises(EncodingError, match="unknown field.*bogus"):
        Instr("halt", bogus=1)
    with pytest.raises(EncodingError, match="must be an integer"):
        Instr("me.loadw", w=0, k=1.5, n=4)


def test_decode_rejects_unknown_opcode_and_reserved_bits():
    with pytest.raises(DecodeError) as info:
        decode(bytes([0xEE]) + bytes(15))
    assert info.value.fault == FaultCode.ILLEGAL_OPCODE
    word = bytearray(encode("halt"))
    word[15] = 0x80
    with pytest.raises(DecodeError, match="reserved bits") as info:
        decode(bytes(word))
    assert info.value.fault == FaultCode.ILLEGAL_FIELD


def test_decode_rejects_zero_count_as_illegal_field():
    spec = BY_MNEMONIC["me.matmul"]
    word = int.from_bytes(encode("me.matmul", a=0, out=0, m=1), "little")
    low = dict((f.name, lo) for f, lo in spec.bit_offsets())["m"]
    word &= ~(((1 << 12) - 1) << low)
    with pytest.raises(DecodeError, match="'m'=0 is out of range") as info:
        decode(word.to_bytes(16, "little"))
    assert info.value.fault == FaultCode.ILLEGAL_FIELD


def test_opcode_is_low_byte_and_fields_pack_upwards():
    word = int.from_bytes(encode("me.loadw", w=4, k=3, n=2, w_stride=8), "little")
    assert word & 0xFF == BY_MNEMONIC["me.loadw"].opcode
    assert (word >> 8) & 0xFFFFFF == 1          # w in words
    assert (word >> 32) & 0xFF == 3             # k
    assert (word >> 40) & 0xFF == 2             # n
    assert (word >> 48) & 0xFFFF == 2           # w_stride in words


def test_signed_field_round_trip():
    instr = Instr("ve.fill", dst=0, n=1, value=-(1 << 31))
    assert decode(instr.encode())["value"] == -(1 << 31)
    assert decode(Instr("ve.requant", dst=0, src=0, n=1, mult=1, shift=0, zp=-128).encode())["zp"] == -128
