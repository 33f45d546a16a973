"""The Amaranth instruction views decode exactly what the Python decoder decodes."""

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from tcloud.isa import INSTRUCTIONS
from tcloud.isa.encoding import DecodeError, Instr, decode
from tcloud.isa.table import BY_OPCODE, BY_MNEMONIC, INSTRUCTION_BITS, EngineClass, FaultCode, Field, InstructionSpec
from tcloud.rtl.decode import INSTRUCTION_LAYOUT, Decoder, host_ctx_bits, member_name

from test_isa_encoding import instructions


@given(st.lists(instructions(), min_size=1, max_size=30))
@settings(max_examples=20)
def test_views_match_python_decoder(instrs):
    word = Signal(INSTRUCTION_LAYOUT)
    seen = []

    async def bench(ctx):
        for instr in instrs:
            ctx.set(word.as_value(), int.from_bytes(instr.encode(), "little"))
            view = getattr(word, member_name(instr.mnemonic))
            values = {f.name: ctx.get(getattr(view, f.name)) * f.scale for f in instr.spec.fields}
            seen.append((ctx.get(view.opcode), values))

    sim = Simulator(Module())  # no logic: the views are pure slicing of one word
    sim.add_testbench(bench)
    sim.run()
    assert seen == [(i.spec.opcode, i.values) for i in instrs]


def test_every_instruction_has_a_member():
    for spec in INSTRUCTIONS:
        assert member_name(spec.mnemonic) in dict(INSTRUCTION_LAYOUT.members)


def python_checks(word):
    """``(known, legal, engine)`` as the Python decoder sees a 128-bit word."""
    spec = BY_OPCODE.get(word & 0xFF)
    try:
        decode(word.to_bytes(16, "little"))
    except DecodeError as error:
        return error.fault != FaultCode.ILLEGAL_OPCODE, False, int(spec.engine) if spec else 0
    return True, True, int(spec.engine)


def decoder_words(rng):
    """Valid encodings of every instruction, then each with one reserved bit set, with one field
    zeroed, with random bits, and words with a random opcode."""
    words = []
    for spec in INSTRUCTIONS:
        for _ in range(4):
            word = int.from_bytes(Instr(spec, **{f.name: int(rng.integers(f.min_value // f.scale,
                                                                           f.max_value // f.scale + 1)) * f.scale
                                                 for f in spec.fields}).encode(), "little")
            words.append(word)
            if spec.used_bits < INSTRUCTION_BITS:
                words.append(word | 1 << int(rng.integers(spec.used_bits, INSTRUCTION_BITS)))
            for field, low in spec.bit_offsets():
                words.append(word & ~(((1 << field.width) - 1) << low))
            words.append(spec.opcode | int.from_bytes(rng.bytes(16), "little") >> 8 << 8)
    words += [int.from_bytes(rng.bytes(16), "little") for _ in range(200)]
    return words


def test_decoder_agrees_with_the_python_decoder():
    words = decoder_words(np.random.default_rng(7))
    dut = Decoder()
    seen = []

    async def bench(ctx):
        for word in words:
            ctx.set(dut.word.as_value(), word)
            seen.append((bool(ctx.get(dut.known)), bool(ctx.get(dut.legal)), ctx.get(dut.engine)))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    expected = [python_checks(word) for word in words]
    assert sum(legal for _, legal, _ in expected) > len(INSTRUCTIONS) * 3
    assert sum(known and not legal for known, legal, _ in expected) > len(INSTRUCTIONS)
    assert seen == expected


def test_every_host_command_keeps_ctx_where_the_host_command_unit_reads_it():
    kill = BY_MNEMONIC["ctx.kill"]
    low = dict((f.name, bit) for f, bit in kill.bit_offsets())["ctx"]
    assert host_ctx_bits(INSTRUCTIONS) == (low, low + kill.field("ctx").width)
    shifted = InstructionSpec("ctx.extra", 0xF8, EngineClass.HOST, (Field("flag", 1, "."), *kill.fields), ".")
    without = InstructionSpec("ctx.extra", 0xF8, EngineClass.HOST, (), ".")
    for extra in (shifted, without):
        with pytest.raises(AssertionError, match="ctx.extra"):
            host_ctx_bits(INSTRUCTIONS + (extra,))
