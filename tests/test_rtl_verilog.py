"""Generated Verilog of the RTL components passes Verilator's lint with the listed waivers."""

import re

import pytest
from amaranth import Cat, Module, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from tcloud.isa import get_config
from tcloud.isa.csr import engine_names
from tcloud.rtl.decode import INSTRUCTION_LAYOUT
from tcloud.rtl.systolic import SystolicArray
from tcloud.rtl.vector_alu import VectorALU
from tcloud.rtl.verilog import LINT_MATCH_WAIVERS, LINT_WAIVERS, alias_wires, lint, merge_lane_writes, to_verilog
from tcloud.runtime.cli import main

pytestmark = pytest.mark.slow  # Verilog generation and lint of whole pNPUs


@pytest.mark.parametrize("make, name", [
    (lambda: SystolicArray(8, 8), "systolic_array"),
    (lambda: VectorALU(8), "vector_alu"),
])
def test_lint_is_clean_with_waivers(make, name):
    text = to_verilog(make(), name)
    assert f"module {name}" in text
    result = lint(text, name)
    assert result.ok, "\n".join(result.messages[:20])


def test_every_waiver_has_a_reason():
    assert all(len(reason) > 20 for reason in LINT_WAIVERS.values())
    assert all(len(waiver.reason) > 20 for waiver in LINT_MATCH_WAIVERS)


def test_width_and_unused_rules_are_not_waived_project_wide():
    assert not {"UNUSEDSIGNAL", "WIDTHTRUNC", "WIDTHEXPAND"} & set(LINT_WAIVERS)


class CsrWithBugs(wiring.Component):
    """A 32-bit CSR write into a 2-bit register, and an input nothing reads."""

    wdata: In(32)
    we: In(1)
    spare: In(8)
    mode: Out(2)

    def elaborate(self, platform):
        m = Module()
        field = Signal(2)
        with m.If(self.we):
            m.d.sync += field.eq(self.wdata)
        m.d.comb += self.mode.eq(field)
        return m


def test_lint_with_waivers_reports_a_truncating_csr_write_and_an_unused_input():
    text = to_verilog(CsrWithBugs(), "csr_bugs")
    assert alias_wires(text)["csr_bugs"] == ["field"]  # the register's Amaranth name is an alias wire
    messages = lint(text, "csr_bugs").messages
    assert any("UNUSEDSIGNAL: csr_bugs:" in m and "'wdata'[31:2]" in m for m in messages), messages
    assert any("'spare'" in m for m in messages), messages
    assert not any("'field'" in m for m in messages), messages
    assert len(messages) == 3  # the two, and Verilator's summary


@pytest.mark.parametrize("body, rule", [
    ("input [31:0] a, output [1:0] b); assign b = a;", "WIDTHTRUNC"),
    ("input [1:0] a, output [31:0] b); assign b = a;", "WIDTHEXPAND"),
])
def test_lint_with_waivers_reports_width_mismatch_on_assignment(body, rule):
    result = lint(f"module top({body} endmodule\n", "top")
    assert any(f"%Warning-{rule}: top:" in m for m in result.messages), result.messages


def test_lint_reports_real_problems():
    broken = "module top(input a, output b); assign b = c; endmodule\n"
    result = lint(broken, "top")
    assert not result.ok
    assert any("c" in message for message in result.messages)


def test_instruction_layout_is_one_word():
    assert INSTRUCTION_LAYOUT.size == 128


@pytest.mark.parametrize("config", ["tiny", "small"])
def test_tcloud_verilog_writes_a_pnpu_that_lints_clean(config, tmp_path, capsys):
    output = tmp_path / "pnpu.v"
    assert main(["verilog", "--config", config, "-o", str(output)]) == 0
    text = output.read_text()
    assert "module pnpu(" in text and "input clk;" in text and "input rst;" in text
    assert "clean with waivers" in capsys.readouterr().out
    instances = re.findall(r"^\s*\\pnpu\.core\.((?:dma|me|ve)\d+)\s+\1\s*\(", text, re.M)
    assert sorted(instances) == sorted(engine_names(get_config(config)))  # me0.. as in stats, not me2..


class TwoMemories(wiring.Component):
    """A memory with byte write enables and one written a whole word at a time."""

    addr: In(4)
    wdata: In(32)
    lanes: In(4)
    we: In(1)
    rdata: Out(64)

    def elaborate(self, platform):
        m = Module()
        m.submodules.lanes = by_lane = memory.Memory(shape=32, depth=16, init=[])
        m.submodules.words = by_word = memory.Memory(shape=32, depth=16, init=[])
        for mem, enable in ((by_lane, self.lanes), (by_word, self.we)):
            write, read = mem.write_port(granularity=8 if mem is by_lane else None), mem.read_port()
            m.d.comb += [write.addr.eq(self.addr), write.data.eq(self.wdata), write.en.eq(enable),
                         read.addr.eq(self.addr)]
        m.d.comb += self.rdata.eq(Cat(by_lane.read_port(domain="comb").data, by_word.read_port(domain="comb").data))
        return m


def test_merge_lane_writes_makes_one_masked_write_of_a_lane_enabled_port():
    text = to_verilog(TwoMemories(), "two_memories")
    assert len(re.findall(r"\]\[\d+:\d+\] <=", text)) == 4  # Yosys: one write per byte lane
    merged, count = merge_lane_writes(text)
    assert count == 1
    assert not re.findall(r"\]\[\d+:\d+\] <=", merged)
    mask = "{{8{lanes[3]}}, {8{lanes[2]}}, {8{lanes[1]}}, {8{lanes[0]}}}"
    word = re.search(r"(\S+ \[addr\]) <= \(", merged)[1]  # the lane memory's row
    assert f"if (|lanes)\n      {word} <= ({word} & ~{mask}) | (wdata & {mask});" in merged
    assert merge_lane_writes(merged) == (merged, 0)
    assert lint(merged, "two_memories").messages == lint(text, "two_memories").messages  # no new warnings
