"""Generated Verilog of the RTL components passes Verilator's lint with the listed waivers."""

import pytest

from tcloud.rtl.decode import INSTRUCTION_LAYOUT
from tcloud.rtl.systolic import SystolicArray
from tcloud.rtl.vector_alu import VectorALU
from tcloud.rtl.verilog import LINT_WAIVERS, lint, to_verilog
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
