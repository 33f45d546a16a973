"""The generated ISA reference describes each instruction by its own fields (issue 11, item 12)."""

import re
from pathlib import Path

import pytest

from tcloud.isa import INSTRUCTIONS
from tcloud.isa.doc import README_BEGIN, README_END, isa_markdown, opcode_table
from tcloud.isa.table import BY_MNEMONIC

FIELD_NAMES = {f.name for spec in INSTRUCTIONS for f in spec.fields}
ENGLISH = {"rows"}
"""Field names that descriptions also use as plain words ("Rows of W", "the rows set by ve.shape")."""
QUALIFIED = re.compile(r"\b([a-z]+\.[a-z]+)\.([a-z]\w*)")
"""A field of another instruction, named as ``mnemonic.field`` (``ve.shape.src1_stride``)."""
BARE = re.compile(r"(?<![\w.])([a-z][a-z0-9_]*)(?!\w|\.\w)")


def description(spec):
    return " ".join([spec.doc] + [f.doc for f in spec.fields])


def foreign_fields(spec):
    """Fields a description names that are not the instruction's own; single letters are indices."""
    text = description(spec)
    own = {f.name for f in spec.fields}
    wrong = [f"{m}.{name}" for m, name in QUALIFIED.findall(text)
             if m in BY_MNEMONIC and name not in {f.name for f in BY_MNEMONIC[m].fields}]
    bare = BARE.findall(QUALIFIED.sub(" ", text))
    return wrong + sorted({w for w in bare if w in FIELD_NAMES and w not in own and len(w) > 1 and w not in ENGLISH})


@pytest.mark.parametrize("spec", INSTRUCTIONS, ids=lambda s: s.mnemonic)
def test_every_field_a_description_names_is_in_its_encoding(spec):
    assert foreign_fields(spec) == [], f"{spec.mnemonic}: {description(spec)}"


def test_one_source_ops_name_their_source_and_its_stride():
    text = isa_markdown()
    relu = next(line for line in text.splitlines() if line.startswith("| `ve.relu`"))
    assert "src + r·ve.shape.src1_stride" in relu and "src1 +" not in relu


def test_the_readme_lists_every_instruction_as_the_table_generates_it():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    begin, end = readme.index(README_BEGIN) + len(README_BEGIN), readme.index(README_END)
    assert readme[begin:end].strip() == opcode_table().strip(), "README's opcode table is stale: paste tcloud.isa.doc.opcode_table()"
    assert all(f"`{spec.mnemonic}`" in readme[begin:end] for spec in INSTRUCTIONS)
