"""The Amaranth instruction views decode exactly what the Python decoder decodes."""

from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from tcloud.isa import INSTRUCTIONS
from tcloud.rtl.decode import INSTRUCTION_LAYOUT, member_name

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
