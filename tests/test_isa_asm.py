"""Assembler and disassembler: round trips and error messages."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcloud.isa import (INSTRUCTIONS, AsmError, ProgramImage, assemble, assemble_code, decode_stream,
                        disassemble, disassemble_code, encode_stream)
from tcloud.isa.asm import format_instr
from tcloud.isa.table import UTOP_CLASSES

from test_isa_encoding import instructions

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.s"))


@given(st.lists(instructions(), min_size=1, max_size=20))
def test_code_round_trip(instrs):
    code = encode_stream(instrs)
    text = disassemble_code(code)
    assert assemble_code(text) == code


@given(instructions())
def test_single_instruction_text_round_trip(instr):
    assert decode_stream(assemble_code(format_instr(instr))) == [instr]


def test_utop_len_is_inferred_and_body_indented():
    text = """
    utop cls=ve signal=t1|t3 wait0=t2 count0=3
      ve.relu dst=0 src=0x10 n=4
      ve.copy dst=0x20 src=0x10 n=4 src_i8=true
    halt
    """
    instrs = decode_stream(assemble_code(text))
    assert instrs[0]["len"] == 2 and instrs[0]["signal"] == 0b1010 and instrs[0]["count0"] == 3
    assert [i.mnemonic for i in instrs] == ["utop", "ve.relu", "ve.copy", "halt"]
    assert disassemble_code(encode_stream(instrs)).splitlines()[1].startswith("  ve.relu")


@pytest.mark.parametrize("text, message", [
    ("halt\nme.matmull a=0", r"<text>:2: unknown mnemonic 'me.matmull'"),
    ("me.loadw w=0 k=300 n=1", r":1: me.loadw: field 'k'=300 is out of range \[1, 255\]"),
    ("me.loadw w=2 k=1 n=1", r":1: .*'w'=2 is not a multiple of 4"),
    ("me.loadw w=0 k=1", r":1: me.loadw: missing required field 'n'"),
    ("halt extra", r":1: halt: expected field=value, got 'extra'"),
    ("nop\nme.loadw w=0 q=1 k=1 n=1", r":2: me.loadw: field 'q': me.loadw has no field 'q'"),
    ("me.loadw w=zero k=1 n=1", r":1: me.loadw: field 'w'"),
    ("me.loadw w=0 w=4 k=1 n=1", r":1: me.loadw: field 'w' given twice"),
    ("utop cls=me\nhalt", r":1: utop has no body"),
    ("utop cls=gpu len=1", r":1: utop: field 'cls'"),
    ("utop cls=me signal=t0|x len=1", r":1: utop: field 'signal': bad token"),
])
def test_errors_name_the_line(text, message):
    with pytest.raises(AsmError, match=message):
        assemble_code(text)


def test_directives_are_rejected_in_code_only_mode():
    with pytest.raises(AsmError, match="directive .config is not allowed"):
        assemble_code(".config tiny\nhalt")


def test_image_errors():
    with pytest.raises(AsmError, match="no target configuration"):
        assemble("halt")
    with pytest.raises(AsmError, match="unknown config 'huge'"):
        assemble(".config huge\nhalt")
    with pytest.raises(AsmError, match=".config tiny disagrees with the requested config 'small'"):
        assemble(".config tiny\nhalt", config="small")
    with pytest.raises(AsmError, match="overlaps"):
        assemble(".config tiny\n.input A i8 4x4 offset=0x0\nhalt")
    with pytest.raises(AsmError, match=r":2: .input: .*dtype 'f32'"):
        assemble(".config tiny\n.input A f32 4 offset=0x100\nhalt")
    with pytest.raises(AsmError, match=":2: .data\\+ without a preceding .data"):
        assemble(".config tiny\n.data+ 00\nhalt")
    with pytest.raises(AsmError, match="no instructions"):
        assemble(".config tiny")


def test_full_image_text_round_trip_with_data_and_custom_config():
    from tcloud.isa import ArchConfig, Segment, Symbol

    custom = ArchConfig(name="mine", me_rows=8, me_cols=8)
    code = assemble_code("nop\nhalt")
    image = ProgramImage.for_config(custom, code, entry=0x100, hbm_bytes=0x400, sram_bytes=0x40,
                                    segments=[Segment(0x200, bytes(range(100)))],
                                    symbols=[Symbol("x", "input", "i8", (3, 5), 0x0, 8),
                                             Symbol("y", "output", "i32", (7,), 0x300, 28)])
    text = disassemble(image)
    assert ".fingerprint" in text
    rebuilt = assemble(text)
    assert rebuilt.to_bytes() == image.to_bytes()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_assemble_and_round_trip(path):
    image = assemble(path.read_text(), source=str(path))
    again = assemble(disassemble(image))
    assert again.to_bytes() == image.to_bytes()


def test_every_engine_class_appears_in_examples():
    mnemonics = set()
    for path in EXAMPLES:
        mnemonics |= {i.mnemonic for i in decode_stream(assemble(path.read_text()).code)}
    body_classes = {s.engine for s in INSTRUCTIONS if s.mnemonic in mnemonics}
    assert set(UTOP_CLASSES) <= body_classes


# --- what the assembler refuses or warns about (issue 11, item 9) ---------------------------------------


@pytest.mark.parametrize("body, message", [
    ("utop cls=ve len=2\n  ve.fill dst=0 n=1\nhalt", r":2: utop declares len=2 but 1 body instruction\(s\) follow"),
    ("utop cls=ve len=1\n  ve.fill dst=0 n=1\n  ve.fill dst=4 n=1\nhalt",
     r":2: utop declares len=1 but 2 body instruction\(s\) follow"),
    ("utop cls=me\n  me.loadw w=0 k=1 n=1\n  ve.fill dst=0 n=1\nhalt",
     r":4: ve.fill is a VE instruction in the ME uTOp of line 2"),
    ("nop\n  ve.fill dst=0 n=1\nhalt", r":3: ve.fill is outside a uTOp"),
    ("utop cls=ve\n  ve.fill dst=0 n=1\n# the end", r":3: the program has no halt"),
])
def test_structure_the_hardware_would_fault_on_is_refused_at_its_line(body, message):
    with pytest.raises(AsmError, match=message):
        assemble(".config tiny\n" + body, source="p.s")


def test_a_fault_when_run_is_a_warning_at_its_line_and_the_image_is_built():
    from tcloud.isa.errors import AsmWarning

    text = ".config tiny\n.footprint hbm=0x100 sram=0x40\nutop cls=ve\n  ve.fill dst=0x3c n=1\n  ve.fill dst=0x40 n=1\nhalt\n"
    with pytest.warns(AsmWarning, match=r"SRAM_BOUNDS when run: sram access \[0x40, 0x44\).*sram=0x40") as caught:
        image = assemble(text, source="p.s")
    assert (caught[0].filename, caught[0].lineno) == ("p.s", 5)
    assert len(decode_stream(image.code)) == 4
    with pytest.warns(AsmWarning, match="TOKEN_DEADLOCK") as caught:
        assemble(".config tiny\nnop\nutop cls=ve wait0=t3 count0=1\n  ve.fill dst=0 n=1\nhalt\n")
    assert caught[0].lineno == 3


def test_a_footprint_beyond_the_configuration_is_refused():
    with pytest.raises(AsmError, match=r"footprint \(hbm=0x2000000 .*does not fit config 'tiny'"):
        assemble(".config tiny\n.footprint hbm=0x2000000\nhalt\n")


def test_examples_and_firmware_assemble_without_warnings():
    import warnings

    from tcloud.firmware import Requant, elementwise, gemm
    from tcloud.verif import random_program

    images = [gemm("tiny", 6, 10, 5, bias=True, requant=Requant(1 << 30, 36)), gemm("small", 40, 70, 50),
              elementwise("small", 32, 64, passes=2)] + [random_program("tiny", seed)[0] for seed in range(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in EXAMPLES:
            assemble(path.read_text(), source=str(path))
        for image in images:
            assert assemble(disassemble(image)).to_bytes() == image.to_bytes()


def test_instruction_lines_give_each_instructions_source_line():
    from tcloud.isa.asm import instruction_lines

    text = ".config tiny\n# comment\nutop cls=ve\n\n  ve.fill dst=0 n=1  ; x\n.data 0x40 00\nhalt\n"
    assert instruction_lines(text) == [3, 5, 7]
    assert len(decode_stream(assemble(text).code)) == 3
