"""Truncating assignments: the check itself (planted designs) and the pNPU on tiny and small."""

import inspect

import pytest
from amaranth.hdl import Cat, Const, Elaboratable, Module, Signal, signed
from amaranth.lib import data

from tcloud.isa import get_config
from tcloud.rtl.pnpu import PNPU
from tcloud.verif.widths import (ALLOWED, KNOWN_BUGS, Allowed, stale_entries, truncating_assignments,
                                 unexplained)


@pytest.fixture(scope="module")
def pnpu_hits():
    """Every truncating assignment of the pNPU per configuration (about 0.5 s tiny, 1.5 s small)."""
    return {name: truncating_assignments(PNPU(get_config(name))) for name in ("tiny", "small")}


@pytest.mark.parametrize("config", ["tiny", "small"])
def test_pnpu_has_no_unexplained_truncation(pnpu_hits, config):
    assert pnpu_hits[config], "the check found nothing at all: is it still walking the design?"
    left = unexplained(pnpu_hits[config])
    assert not left, "truncating assignments without an entry in tcloud.verif.widths.ALLOWED:\n" + \
        "\n".join(map(str, left))


def test_allow_list_has_no_stale_entry(pnpu_hits):
    stale = stale_entries(pnpu_hits["tiny"] + pnpu_hits["small"])
    assert not stale, "entries that match no assignment any more:\n" + \
        "\n".join(f"{entry.file}: {entry.code}" for entry in stale)


def test_a_stale_entry_is_reported(pnpu_hits):
    gone = Allowed("rtl/pnpu.py", "policy.eq(self.csr_wdata[:2])", "An assignment that is not there.")
    moved = Allowed("rtl/scheduler.py", "cycles.eq(cycles + 1)", "Right code, wrong file.")
    hits = pnpu_hits["tiny"] + pnpu_hits["small"]
    assert stale_entries(hits, ALLOWED + (gone, moved)) == [gone, moved]


def test_no_known_width_bug_is_left():
    """The two the check found (a CSR write truncated into its register; QUANTUM = 0 wrapping the
    time slice) are fixed: the pNPU refuses out-of-range configuration values."""
    assert KNOWN_BUGS == ()


class _Mode(data.Struct):
    kind: 2


class Planted(Elaboratable):
    """A CSR block with truncating and fitting assignments side by side."""

    def __init__(self):
        self.csr_we = Signal()
        self.csr_wdata = Signal(32)
        self.mode = Signal(2)  # a 32-bit CSR write lands here
        self.low = Signal(3)  # ... and in a Cat of low and high
        self.high = Signal(3)
        self.word = Signal(8)  # ... and in a slice of word
        self.view = Signal(_Mode)  # ... and in a struct through View.eq
        self.small = Signal(3)
        self.wide = Signal(signed(4))
        self.pc = Signal(30)
        self.byte_addr = Signal(32)
        self.wraps = Signal(4)

    def elaborate(self, platform):
        m = Module()
        with m.If(self.csr_we):
            m.d.sync += self.mode.eq(self.csr_wdata)
            m.d.sync += Cat(self.low, self.high).eq(self.csr_wdata)
            m.d.sync += self.word[2:4].eq(self.csr_wdata[:8])
            m.d.sync += self.view.eq(self.csr_wdata)
        with m.Else():
            m.d.sync += self.small.eq(5)
            m.d.sync += self.small.eq(Const(5, 8))
            m.d.sync += self.wide.eq(Const(-3, signed(8)))
            m.d.sync += self.byte_addr.eq(self.pc * 4)
            m.d.sync += self.small.eq(Const(-1, signed(8)))
            m.d.sync += self.wraps.eq(self.wraps + 1)
        return m


def _line(text):
    lines, first = inspect.getsourcelines(Planted.elaborate)
    return first + next(i for i, line in enumerate(lines) if text in line)


def test_planted_truncations_are_reported_with_their_line():
    hits = truncating_assignments(Planted())
    found = {(hit.file, hit.line, hit.target, hit.lhs_width, hit.rhs_width) for hit in hits}
    here = "tests/test_widths.py"
    assert found == {
        (here, _line("self.mode.eq(self.csr_wdata)"), "mode", 2, 32),
        (here, _line("Cat(self.low, self.high).eq"), "Cat(low, high)", 6, 32),
        (here, _line("self.word[2:4].eq"), "word[2:4]", 2, 8),
        (here, _line("self.view.eq(self.csr_wdata)"), "view", 2, 32),
        (here, _line("Const(-1, signed(8))"), "small", 3, 8),  # -1 does not fit an unsigned target
        (here, _line("self.wraps + 1"), "wraps", 4, 5),
    }
    assert all(hit.code == "m.d.sync += self.mode.eq(self.csr_wdata)" for hit in hits if hit.target == "mode")


def test_allowed_entry_explains_only_its_file_and_code():
    hits = truncating_assignments(Planted())
    entry = Allowed("tests/test_widths.py", "self.wraps.eq(self.wraps + 1)", "A wrapping counter.")
    assert [hit.target for hit in hits if entry.matches(hit)] == ["wraps"]
    assert len(truncating_assignments(Planted(), allow=[entry])) == len(hits) - 1
    assert not any(Allowed("rtl/pnpu.py", entry.code, entry.reason).matches(hit) for hit in hits)
