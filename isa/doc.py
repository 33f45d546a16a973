"""Generate the ISA reference (Markdown) from the table; nothing here is written by hand twice."""

import re

from . import cost
from .config import PRESETS
from .table import (FAULT_DOCS, INSTRUCTION_BITS, INSTRUCTIONS, NUM_TOKENS, OPCODE_BITS,
                    TOKEN_MAX_COUNT, ContextStatus, EngineClass)


def markdown_paragraph(text):
    """One paragraph of a docstring as one line of Markdown: reStructuredText roles
    (``:class:`~x.Y```) and literals become code spans."""
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", " ".join(text.split())).replace("``", "`")


def _range(field):
    return f"{field.min_value}..{field.max_value}"


def isa_markdown():
    """Return the complete ISA reference as Markdown."""
    out = ["# TCloud ISA reference", "",
           f"Generated from `tcloud.isa.table`. Every instruction is {INSTRUCTION_BITS} bits, "
           f"little-endian; bits [0:{OPCODE_BITS}) hold the opcode and the fields follow in order. "
           "Unused high bits are reserved and must be zero. Addresses, strides and sizes are bytes "
           "and multiples of 4 (they are encoded in words). "
           f"Each context has {NUM_TOKENS} dependency tokens (counters up to {TOKEN_MAX_COUNT}).", "",
           "## Instructions", "",
           "| mnemonic | opcode | class | bits | fields | semantics |",
           "|---|---|---|---|---|---|"]
    for spec in INSTRUCTIONS:
        fields = ", ".join(f.name for f in spec.fields) or "—"
        out.append(f"| `{spec.mnemonic}` | 0x{spec.opcode:02x} | {spec.engine.name} | "
                   f"{spec.used_bits} | {fields} | {spec.doc} |")
    out += ["", "## Fields", ""]
    for spec in INSTRUCTIONS:
        if not spec.fields:
            continue
        out += [f"### `{spec.mnemonic}`", "", "| field | bits | range | default | meaning |",
                "|---|---|---|---|---|"]
        for f, low in spec.bit_offsets():
            default = "required" if f.default is None else str(f.default)
            scale = f" (×{f.scale})" if f.scale > 1 else ""
            out.append(f"| `{f.name}` | [{low}:{low + f.width}){scale} | {_range(f)} | {default} | {f.doc} |")
        out.append("")
    out += ["## Work units (the `cost` a uTOp declares)", "", markdown_paragraph(cost.__doc__.split("\n\n")[1]), "",
            "| body instruction | work units |", "|---|---|",
            f"| every instruction | {cost.INSTRUCTION_UNITS} (plus the following) |",
            "| `dma.load`, `dma.store` | rows × ⌈row_bytes / hbm_port_bytes⌉ |",
            f"| `dma.gather` | rows × (⌈row_bytes / hbm_port_bytes⌉ + {cost.GATHER_INDEX_UNITS}) (each index read "
            "twice: checked, then copied) |",
            "| `me.loadw` | me_rows |",
            "| `me.matmul` | m if it continues the uTOp's output region (same out, out_stride, m and n as "
            "the previous matmul, whose region nothing has read since), else m × (2 + acc) |",
            "| `ve.shape` | 0 |",
            f"| `ve.lutload` | {cost.VE_STEPS_PER_LUT_READ} × {cost.LUT_WORDS} / min(sram_line_words, "
            f"{cost.LUT_WORDS}) (one read of a line at a time) |"]
    for name, steps in cost.VE_STEPS_PER_CHUNK.items():
        extra = " + rows" if name in ("ve.redsum", "ve.redmax") else ""
        out.append(f"| `{name}` | rows × ⌈n / ve_lanes⌉ × {steps}{extra} |")
    out += [""]
    out += ["## Engine classes", "", "| class | value |", "|---|---|"]
    out += [f"| {c.name} | {int(c)} |" for c in EngineClass]
    out += ["", "## Context status", "", "| status | value |", "|---|---|"]
    out += [f"| {s.name} | {int(s)} |" for s in ContextStatus]
    out += ["", "## Fault codes", "", "| code | value | meaning |", "|---|---|---|"]
    out += [f"| {code.name} | {int(code)} | {doc} |" for code, doc in FAULT_DOCS.items()]
    out += ["", "## Configuration presets", ""]
    names = list(PRESETS)
    fields = [k for k in PRESETS[names[0]].to_dict() if k != "name"]
    out += ["| field | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in fields:
        out.append(f"| {key} | " + " | ".join(str(getattr(PRESETS[n], key)) for n in names) + " |")
    out.append("| peak TOPS (int8) | " + " | ".join(f"{PRESETS[n].peak_tops:.3g}" for n in names) + " |")
    return "\n".join(out) + "\n"
