"""Truncating assignments in an Amaranth design, each intended one explained in :data:`ALLOWED`.

Verilator cannot see a 32-bit CSR write into a 2-bit register: Amaranth emits the truncation of
``.eq()`` as an explicit slice, so ``WIDTHTRUNC`` never fires. This module checks at the Amaranth
level instead: it elaborates a design, walks every fragment's statements (into ``If``/``Switch``/FSM
bodies) and reports every assignment whose right-hand side is wider than its target and can hold
a value the target cannot (:func:`truncating_assignments`). "Can hold" is a small interval analysis
(constants, ``+ - *``, constant shifts, ``&``, ``Mux``, ``Cat``, slices), so ``x.eq(5)`` into 3
bits or ``pc * 4`` from a 30-bit ``pc`` into 32 bits is not reported, while a counter's ``+ 1``
is. Assignments that keep the same width but change signedness are out of scope.

Each intended truncation is an :class:`Allowed` entry keyed by the source file and a piece of the
source line's code (the ``.eq()`` as written), not by line number: line numbers move with every edit
above them, the code of the assignment only when the assignment itself changes, which is when its
reason must be re-read. An entry covers every hit on a line containing its code in that file (a
helper called for several engines, a loop over lanes). :func:`stale_entries` lists the entries that
no longer match any hit, so the list cannot rot. Truncations that lose meaningful bits are in
:data:`KNOWN_BUGS` until the RTL is fixed. ``python -m tcloud.verif.widths [config ...]`` prints the
known bugs, what is unexplained and what is stale (default: ``tiny`` and ``small``, about 2 s).
"""

import linecache
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import amaranth
from amaranth.hdl import Const, Fragment, Signal
from amaranth.hdl._ast import Assign, Concat, Operator, Slice, Switch, SwitchValue

_ROOT = Path(__file__).resolve().parents[1]
_AMARANTH = Path(amaranth.__file__).resolve().parent
_WRAPPERS = {str(_AMARANTH / "lib" / "data.py"), str(_AMARANTH / "lib" / "enum.py")}


@dataclass(frozen=True)
class Truncation:
    """One assignment that can drop meaningful bits of its right-hand side.

    Attributes
    ----------
    file : str
        Source file, relative to the repository (``rtl/pnpu.py``) or, for library code, to its
        ``site-packages`` (``amaranth/lib/fifo.py``).
    line : int
        Line of the ``.eq()`` call.
    code : str
        That source line, stripped.
    target : str
        The assigned signal(s), e.g. ``policy`` or ``acc[0:32]``.
    lhs_width, rhs_width : int
        Widths of the target and of the assigned value.
    fragment : str
        Dotted path of the fragment in the hierarchy (``core.scheduler``).
    """

    file: str
    line: int
    code: str
    target: str
    lhs_width: int
    rhs_width: int
    fragment: str

    def __str__(self):
        return (f"{self.file}:{self.line}: {self.target} ({self.lhs_width} bits) <- {self.rhs_width} bits "
                f"in {self.fragment or 'top'}: {self.code}")


@dataclass(frozen=True)
class Allowed:
    """An intended truncation: the hits in ``file`` whose source line contains ``code``.

    Attributes
    ----------
    file : str
        Source file as in :attr:`Truncation.file`.
    code : str
        Text the source line must contain, normally the whole ``target.eq(value)``.
    reason : str
        Why the dropped bits carry no information, or why dropping them is the intent.
    """

    file: str
    code: str
    reason: str

    def matches(self, hit):
        """Whether this entry explains ``hit`` (a :class:`Truncation`)."""
        return hit.file == self.file and self.code in hit.code


def _allow(file, reason, *codes):
    return tuple(Allowed(file, code, reason) for code in codes)


_WRAP = "A wrapping counter: the carry out of the register's width is dropped on purpose."
_INT32 = ("int32 arithmetic wraps as in the golden model (isa/golden.py wrap_i32): a sum of 32-bit "
          "values keeps its low 32 bits.")
_SRAM_WINDOW = ("Scratchpad address: context base + offset; the uTOp's window check (sram_fits, proved in "
                "verif/formal.py) keeps it below the scratchpad's size, which the port's width covers.")
_HBM_WINDOW = ("HBM address: context base + offset; the window check (hbm_fits, proved in verif/formal.py) "
               "keeps it below the HBM's size, which the port's width covers.")
_PC = ("A context-relative pc (in words) stays inside the context's HBM window (fetch faults with "
       "FETCH_BOUNDS beyond it) plus one uTOp of at most 4096 instructions: below 2^28 + 2^14 words "
       "on tpu_like (1 GiB), far from the 30-bit pc's wrap.")
_BEAT = "At most one beat: count_at() takes the smaller of the row's rest and the beat (<= port words)."
_IN_FLIGHT = ("An in-flight count: requests are issued only while it is below the limit and retire only "
              "after issue, so it stays within 0..limit.")
_GUARDED = "Bounded by the If that guards it (the counter stops at its limit)."
_CTX = "The host command is rejected with NO_SUCH_CONTEXT first when cmd_ctx >= the number of contexts."

ALLOWED = (
    # Amaranth's own SyncFIFO
    *_allow("amaranth/lib/fifo.py", _WRAP,
            "produce.eq(_incr(produce, self.depth))", "consume.eq(_incr(consume, self.depth))"),
    *_allow("amaranth/lib/fifo.py", "Changed only when not full (+1) or not empty (-1): 0 <= level <= depth.",
            "self.level.eq(self.level + 1)", "self.level.eq(self.level - 1)"),
    *_allow("rtl/arbiter.py", "chosen = winner - count when winner >= count, else winner: always < count.",
            "self.grant.eq(chosen)"),
    # DMA
    *_allow("rtl/dma.py", "offset + step < row_bytes (the If around it) fits offset's 14 bits.",
            "offset.eq(offset + step)"),
    *_allow("rtl/dma.py", "row < rows (a 12-bit field): the last row ends the transfer.", "row.eq(row + 1)"),
    *_allow("rtl/dma.py", _HBM_WINDOW, "self.hbm.req.payload.addr.eq(hbm_at_issue)"),
    *_allow("rtl/dma.py", _SRAM_WINDOW, "self.sram.addr.eq(at)", "self.sram.addr.eq(sram_at_read)"),
    *_allow("rtl/dma.py", _BEAT, "self.hbm.req.payload.count.eq(issue_count)",
            "self.sram.words.eq(count_at(read_offset))"),
    *_allow("rtl/dma.py", "done_count <= beat, so done_count * 4 bytes fits the counter increment.",
            "self.count_hbm_read.eq(done_count * 4)", "self.count_hbm_write.eq(done_count * 4)"),
    *_allow("rtl/dma.py", _IN_FLIGHT, "in_flight.eq(in_flight + issued - retired)",
            "in_flight.eq(in_flight + sent - acked)"),
    *_allow("rtl/dma.py", "Index reads and checks: one per index, so at most rows (a 12-bit field).",
            "read_row.eq(read_row + 1)", "checked_row.eq(checked_row + 1)"),
    *_allow("rtl/dma.py", "A gathered row's start: stored only once index_ok has checked that the row ends "
            "within the HBM window, computed without wrapping.",
            "row_base.eq(gather.hbm + index.as_unsigned()[:31] * gather.row_bytes)"),
    *_allow("rtl/dma.py", _SRAM_WINDOW, "self.sram.addr.eq(self.sram_addr(gather.idx + read_row))",
            "self.sram.addr.eq(self.sram_addr(gather.idx + issue_row))"),
    *_allow("rtl/dma.py", _HBM_WINDOW, "self.hbm.req.payload.addr.eq(self.hbm_addr(row_base + issue_offset))"),
    # engine base class (instruction fetch, prefetch, declared cost)
    *_allow("rtl/engine.py", _HBM_WINDOW + " Fetch checks hbm_fits(pc + INSTRUCTION_WORDS).",
            "self.hbm.req.payload.addr.eq(self.hbm_addr(pc))", "self.hbm.req.payload.addr.eq(self.hbm_addr(pf_next))"),
    *_allow("rtl/engine.py", _PC, "pf_next.eq(pc + INSTRUCTION_WORDS)", "pc.eq(pc + INSTRUCTION_WORDS)",
            "pf_next.eq(pf_next + INSTRUCTION_WORDS)"),
    *_allow("rtl/engine.py", "Counts down instructions still to run: a body has len >= 1 (the ISA table's "
            "minimum, checked by the decoder); remaining == 1 ends it and pf_left drops only while != 0.",
            "pf_left.eq(remaining - 1)", "remaining.eq(remaining - 1)", "pf_left.eq(pf_left - 1)"),
    *_allow("rtl/engine.py", "With a declared cost, used + units <= declared (else COST_EXCEEDED) fits; "
            "with none (0), used wraps but is read only when a cost is declared.", "used.eq(used + units)"),
    *_allow("rtl/engine.py", _IN_FLIGHT, "pf_in_flight.eq(pf_in_flight + taken - push)"),
    # matrix engine
    *_allow("rtl/matrix_engine.py", _SRAM_WINDOW,
            "self.sram.addr.eq(self.sram_addr(lw.w + issued * lw.w_stride))",
            "self.sram.addr.eq(self.sram_addr(pend_out + row * pend_stride))",
            "self.sram.addr.eq(self.sram_addr(mm.out + issued * mm.out_stride))",
            "self.sram.addr.eq(self.sram_addr(mm.a + issued * mm.a_stride))",
            "port.addr.eq(self.sram_addr(w + issued * stride))"),
    *_allow("rtl/matrix_engine.py", "k, n <= the array's rows and columns (legality checks), which the "
            "constructor keeps within one scratchpad line.",
            "self.sram.words.eq(_words(lw.n))", "self.sram.words.eq(n)", "self.sram.words.eq(_words(k))",
            "port.words.eq(_words(n))"),
    *_allow("rtl/matrix_engine.py", _GUARDED + " issued < k or m; received, row, written and drain are reset "
            "or stop when they reach m, rows or the array latency.",
            "issued.eq(issued + 1)", "received.eq(received + 1)", "row.eq(row + 1)", "drain.eq(drain + 1)",
            "written.eq(written + 1)", "col_row.eq(col_row + 1)"),
    *_allow("rtl/matrix_engine.py", "received < m <= ACC_ROWS, the accumulator's depth, which its address holds.",
            "acc_write.addr.eq(received)"),
    *_allow("rtl/matrix_engine.py", "Rows of the current matmul still to come: >= 1 while outputs arrive.",
            "col_left.eq(col_left - 1)"),
    *_allow("rtl/matrix_engine.py", _INT32,
            "acc_write.data[c].eq(Mux(col_acc, acc_read.data[c], 0) + array.out_data[c])"),
    # pNPU top: counters, host commands, scrub
    *_allow("rtl/pnpu.py", _WRAP + " (the 64-bit cycle counter and the 32-bit engine busy counters)",
            "cycles.eq(cycles + 1)", "busy_cycles[e].eq(busy_cycles[e] + engine.busy)"),
    *_allow("rtl/pnpu.py", _CTX, "scheduler.kill.eq(1 << cmd_ctx)", "scheduler.start.eq(1 << cmd_ctx)",
            "scrub_ctx.eq(cmd_ctx)"),
    *_allow("rtl/pnpu.py", "ctx.sram/ctx.hbm are rejected (WINDOW_OUT_OF_RANGE) unless base + size <= "
            "the physical memory's words, which the table's fields hold.",
            "base[cmd_ctx].eq(view.base)", "size[cmd_ctx].eq(view.size)",
            "scrub_end.eq(table.hbm_base[scrub_ctx] + table.hbm_size[scrub_ctx])"),
    *_allow("rtl/pnpu.py", "ctx.engines is rejected (NO_SUCH_ENGINE) when a mask names an engine beyond "
            "the configuration's count: the dropped bits are zero.",
            "table.me_mask[cmd_ctx].eq(view.me_mask)", "table.ve_mask[cmd_ctx].eq(view.ve_mask)",
            "table.dma_mask[cmd_ctx].eq(view.dma_mask)"),
    *_allow("rtl/pnpu.py", "The scrub walks [base, base + size) of a checked window, first in the scratchpad "
            "then in HBM, with one address register wide enough for both; each use is below its memory's "
            "size (+ one line or beat for the increments).",
            "scrub_sram.addr.eq(scrub_addr)", "scrub_addr.eq(scrub_addr + cfg.sram_line_words)",
            "scrub_hbm.req.payload.addr.eq(scrub_addr)", "scrub_addr.eq(scrub_addr + beat)"),
    *_allow("rtl/pnpu.py", "Written only when the value lies in the register's range (tcloud.isa.csr.CONFIG_CSRS; "
            "otherwise CONFIG_REFUSED), which the register's width holds.",
            "registers[register.name].eq(self.csr_wdata)"),
    *_allow("rtl/pnpu.py", "beat = min(left, port words).", "scrub_hbm.req.payload.count.eq(beat)"),
    *_allow("rtl/pnpu.py", _IN_FLIGHT, "scrub_pending.eq(scrub_pending + issue - scrub_hbm.rsp.valid)"),
    # scheduler
    *_allow("rtl/scheduler.py", _HBM_WINDOW + " The header fetch checks pc + INSTRUCTION_WORDS <= hbm_size.",
            "req.payload.addr.eq(Mux(offered, offered_addr,"),
    *_allow("rtl/scheduler.py", _PC, "engine.body_pc.eq(winner_pc + INSTRUCTION_WORDS)",
            "pc.eq(pc + INSTRUCTION_WORDS)", "pc.eq(pc + INSTRUCTION_WORDS * (head[c].utop.len + 1))"),
    *_allow("rtl/scheduler.py", "Decremented only while != 0 (the Elif around it).", "slice_left.eq(slice_left - 1)"),
    *_allow("rtl/scheduler.py", "QUANTUM >= 1 (its CSR refuses 0, tcloud.isa.csr.CONFIG_CSRS), so the slice "
            "QUANTUM x (priority + 1) - 1 is >= 0 and fits slice_left, sized for the largest.",
            "slice_left.eq(self.quantum * (table.priority[slice_rr.grant] + 1) - 1)"),
    *_allow("rtl/scheduler.py", "Saturating counters: incremented only while not all ones, or below 0xFFFF.",
            "owner_idle[e].eq(owner_idle[e] + 1)", "held.eq(held + 1)",
            "age[c].eq(Mux(ready[c] & ~won[c], Mux(age[c] == 0xFFFF, age[c], age[c] + 1), 0))"),
    *_allow("rtl/scheduler.py", "Saturated at TOKEN_MAX_COUNT (the overflow faults the context) minus the "
            "tokens a satisfied wait consumes, which it holds: 0..255.",
            "tokens[c][t].eq(Mux(total > TOKEN_MAX_COUNT, TOKEN_MAX_COUNT, total) - dec)"),
    *_allow("rtl/scheduler.py", _IN_FLIGHT, "inflight[c].eq(inflight[c] + won[c] - sum("),
    *_allow("rtl/scheduler.py", _WRAP + " The per-context counters (CSR words, 32 or 64 bits) wrap; one "
            "cycle's increment is far below 2^32.",
            "counters[name].eq(counters[name] + value)", "streak[c].eq(Mux(reclaim, streak[c] + 1, 0))"),
    # scratchpad, systolic array, vector ALU and engine
    *_allow("rtl/scratchpad.py", "row1 = (line + 1)[bank_bits:] reaches the bank's row count only for the "
            "last line, where no access needs the next line (sram_fits); the row otherwise fits.",
            "read.addr.eq(_or(Mux(hit, row, 0)", "write.addr.eq(Array(rows)[writer])"),
    *_allow("rtl/scratchpad.py", "A mask of the line positions >= offset: the bits shifted past the line are "
            "meant to go.", "first_words.eq(Const((1 << lanes) - 1, lanes) << offset)"),
    *_allow("rtl/systolic.py", _INT32, "psum.eq(above[c] + (factors[0] * factors[1])[:ACC_BITS].as_signed())"),
    *_allow("rtl/vector_alu.py", "For shift = 0, -1 wraps to 63; every use of below is masked by shift != 0.",
            "below.eq(shift - 1)"),
    *_allow("rtl/vector_alu.py", "below <= 63, so 1 << below is >= 1 and the mask >= 0 fits 64 bits.",
            "lower_bits.eq((Const(1, 64) << below)[:64] - 1)"),
    *_allow("rtl/vector_alu.py", "Both arms are clamped to the int8 or int32 range (_clamp) before the "
            "32-bit result.", "result.eq(Mux(dst_i8, _clamp(m, shifted, *_INT8, signed(66)),",
            "result.eq(Mux(dst_i8, _clamp(m, value, *_INT8, value.shape()),",
            "self.result[lane].eq(Mux(self.opcode == OPCODES[\"ve.requant\"], requant,"),
    *_allow("rtl/vector_alu.py", "ve.fma: every arm is the 32-bit binary32 word or clamped to int8, uint8 or "
            "int32 (_clamp) before the 32-bit result.",
            "m.d.comb += result.eq(Mux(dst_kind == FmaResult.FP32, word.as_signed(),"),
    *_allow("rtl/vector_alu.py", "ve.fma: big and the aligned small are below 2^_FMA_FRAME, so their sum and "
            "the magnitude of their difference fit _FMA_FRAME + 1 bits.",
            "m.d.comb += [magnitude.eq(Mux(subtract, Mux(difference < 0, -difference, difference), big + small_floor)),"),
    *_allow("rtl/vector_engine.py", "elem < n inside the row, so 0 <= n - elem and the Mux keeps it <= lanes.",
            "count.eq(Mux(n - elem < lanes, n - elem, lanes))"),
    *_allow("rtl/vector_engine.py", _SRAM_WINDOW, "self.sram.addr.eq(chunk_addr(src1, src1_stride, src1_i8))",
            "self.sram.addr.eq(chunk_addr(src2, src2_stride, src2_i8, src2_row))",
            "self.sram.addr.eq(chunk_addr(dst, dst_stride, dst_i8))",
            "self.sram.addr.eq(self.sram_addr(dst + row * dst_stride))"),
    *_allow("rtl/vector_engine.py", "Advanced only while elem + lanes < n (or row + 1 < rows): fits the field.",
            "elem.eq(elem + lanes)", "row.eq(row + 1)"),
    *_allow("rtl/vector_engine.py", _SRAM_WINDOW, "self.sram.addr.eq(self.sram_addr(src + elem))"),
    *_allow("rtl/vector_engine.py", "A ve.lutload's word count: advanced only while elem + chunk < LUT_WORDS.",
            "elem.eq(elem + chunk)"),
    *_allow("rtl/vector_engine.py", _INT32, "acc[lane].eq(Mux(elem == 0, item, combined))"),
)
"""The intended truncations of ``PNPU`` on ``tiny`` and ``small``, each with its reason."""

KNOWN_BUGS = ()
"""Truncations that lose meaningful bits, left for an RTL fix: accepted by the tests so that the
check stays green meanwhile, and reported by ``python -m tcloud.verif.widths``."""


def _short_path(filename):
    path = Path(filename).resolve()
    if path.is_relative_to(_ROOT) and ".venv" not in path.relative_to(_ROOT).parts:  # not a venv in the repo
        return path.relative_to(_ROOT).as_posix()
    parts = path.parts
    if "site-packages" in parts:
        return Path(*parts[len(parts) - parts[::-1].index("site-packages"):]).as_posix()
    return path.as_posix()


@contextmanager
def _locate_view_assignments():
    """While elaborating, place ``View.eq``/``EnumView.eq`` assignments at their caller's line.

    Those methods call ``Value.eq`` without passing the caller's frame on, so Amaranth records the
    assignment inside ``amaranth/lib/data.py``; a truncating ``view.eq(wide)`` would be reported
    there, without its line.
    """
    original = Assign.__init__

    def init(self, lhs, rhs, *, src_loc_at=0):
        original(self, lhs, rhs, src_loc_at=src_loc_at + 1)
        filename = Path(self.src_loc[0])
        if filename.name in ("data.py", "enum.py") and str(filename.resolve()) in _WRAPPERS:
            frame = sys._getframe(1)
            while frame is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(_AMARANTH):
                frame = frame.f_back
            if frame is not None:
                self.src_loc = (frame.f_code.co_filename, frame.f_lineno)

    Assign.__init__ = init
    try:
        yield
    finally:
        Assign.__init__ = original


def _shape_range(shape):
    if shape.signed and shape.width:
        half = 1 << shape.width - 1
        return -half, half - 1
    return 0, (1 << shape.width) - 1


def _value_range(value, memo):
    """``(low, high)`` bounding every value ``value`` can take (its shape's range at worst)."""
    key = id(value)
    if key not in memo:
        memo[key] = (value, _compute_range(value, memo))  # keep value alive so its id stays unique
    return memo[key][1]


def _compute_range(value, memo):
    low, high = _shape_range(value.shape())
    bounds = None
    if isinstance(value, Const):
        bounds = (value.value, value.value)
    elif isinstance(value, Operator):
        ranges = [_value_range(operand, memo) for operand in value.operands]
        op = value.operator
        if op == "+" and len(ranges) == 2:
            bounds = (ranges[0][0] + ranges[1][0], ranges[0][1] + ranges[1][1])
        elif op == "-" and len(ranges) == 2:
            bounds = (ranges[0][0] - ranges[1][1], ranges[0][1] - ranges[1][0])
        elif op == "-":
            bounds = (-ranges[0][1], -ranges[0][0])
        elif op == "*":
            products = [a * b for a in ranges[0] for b in ranges[1]]
            bounds = (min(products), max(products))
        elif op in ("<<", ">>") and isinstance(value.operands[1], Const):
            amount = value.operands[1].value
            shift = (lambda x: x << amount) if op == "<<" else (lambda x: x >> amount)
            bounds = (shift(ranges[0][0]), shift(ranges[0][1]))
        elif op == "&" and ranges[0][0] >= 0 and ranges[1][0] >= 0:
            bounds = (0, min(ranges[0][1], ranges[1][1]))
        elif op in ("u", "s"):  # reinterpretation keeps a value the new shape can hold
            bounds = ranges[0]
    elif isinstance(value, SwitchValue):  # Mux, Array indexing
        ranges = [_value_range(case, memo) for _patterns, case in value.cases]
        bounds = (min(r[0] for r in ranges), max(r[1] for r in ranges))
    elif isinstance(value, Concat):
        ranges = [_value_range(part, memo) for part in value.parts]
        if all(r[0] >= 0 for r in ranges):
            offsets = [sum(len(part) for part in value.parts[:i]) for i in range(len(value.parts))]
            bounds = (sum(r[0] << o for r, o in zip(ranges, offsets)),
                      sum(r[1] << o for r, o in zip(ranges, offsets)))
    elif isinstance(value, Slice) and value.start == 0:
        inner = _value_range(value.value, memo)
        if inner[0] >= 0 and inner[1] < 1 << value.stop:
            bounds = inner
    if bounds is None or bounds[0] < low or bounds[1] > high:
        return low, high
    return bounds


def _target(lhs):
    if isinstance(lhs, Signal):
        return lhs.name
    if isinstance(lhs, Slice):
        return f"{_target(lhs.value)}[{lhs.start}:{lhs.stop}]"
    if isinstance(lhs, Concat):
        return "Cat(" + ", ".join(_target(part) for part in lhs.parts) + ")"
    names = sorted({signal.name for signal in lhs._lhs_signals()})
    return "/".join(names[:3]) + ("/..." if len(names) > 3 else "")


def _assignments(statements):
    for statement in statements:
        if isinstance(statement, Assign):
            yield statement
        elif isinstance(statement, Switch):
            for _patterns, body, _src_loc in statement.cases:
                yield from _assignments(body)


def _fragments(fragment, path):
    yield path, fragment
    for subfragment, name, _src_loc in fragment.subfragments:
        child = name if isinstance(name, str) else f"U${len(path)}"
        yield from _fragments(subfragment, f"{path}.{child}" if path else child)


def truncating_assignments(component, allow=()):
    """Elaborate ``component`` and report its truncating assignments.

    Parameters
    ----------
    component : amaranth.hdl.Elaboratable or amaranth.hdl.Fragment
        The design, elaborated with ``platform=None``.
    allow : iterable of Allowed
        Entries whose hits are left out (see :func:`unexplained`); the default reports every hit.

    Returns
    -------
    list of Truncation
        Every assignment whose value is wider than its target and can hold a value outside the
        target's range, in hierarchy order.
    """
    with _locate_view_assignments():
        top = Fragment.get(component, platform=None)
    hits = []
    memo = {}
    for path, fragment in _fragments(top, ""):
        for statements in fragment.statements.values():
            for assign in _assignments(statements):
                lhs_shape, rhs_shape = assign.lhs.shape(), assign.rhs.shape()
                if rhs_shape.width <= lhs_shape.width:
                    continue
                low, high = _value_range(assign.rhs, memo)
                target_low, target_high = _shape_range(lhs_shape)
                if target_low <= low and high <= target_high:
                    continue
                filename, line = assign.src_loc
                hit = Truncation(_short_path(filename), line, linecache.getline(filename, line).strip(),
                                 _target(assign.lhs), lhs_shape.width, rhs_shape.width, path)
                hits.append(hit)
    return unexplained(hits, allow)


def unexplained(hits, allow=ALLOWED + KNOWN_BUGS):
    """The hits no entry of ``allow`` explains.

    Parameters
    ----------
    hits : iterable of Truncation
    allow : iterable of Allowed

    Returns
    -------
    list of Truncation
    """
    allow = tuple(allow)
    return [hit for hit in hits if not any(entry.matches(hit) for entry in allow)]


def stale_entries(hits, allow=ALLOWED + KNOWN_BUGS):
    """The entries of ``allow`` that explain none of ``hits``.

    Parameters
    ----------
    hits : iterable of Truncation
        All hits (``truncating_assignments(design)`` without ``allow``) of every design the
        entries are meant for.
    allow : iterable of Allowed

    Returns
    -------
    list of Allowed
    """
    hits = list(hits)
    return [entry for entry in allow if not any(entry.matches(hit) for hit in hits)]


def main(argv=None):
    """Print the known bugs, unexplained hits and stale entries of ``PNPU`` on the given configurations.

    Returns 1 if a hit is unexplained or an entry stale, else 0.
    """
    from tcloud.isa import get_config
    from tcloud.rtl.pnpu import PNPU

    entries = ALLOWED + KNOWN_BUGS
    hits = []
    for name in (argv if argv is not None else sys.argv[1:]) or ["tiny", "small"]:
        found = truncating_assignments(PNPU(get_config(name)))
        hits += found
        unknown = unexplained(found, entries)
        bugs = [hit for hit in found if any(entry.matches(hit) for entry in KNOWN_BUGS)]
        print(f"{name}: {len(found)} truncating assignments, {len(bugs)} known bugs, "
              f"{len(unknown)} unexplained")
        for hit in bugs:
            print(f"  known bug: {hit}")
        for hit in unknown:
            print(f"  unexplained: {hit}")
    stale = stale_entries(hits, entries)
    for entry in stale:
        print(f"stale: {entry.file}: {entry.code}")
    return 1 if stale or unexplained(hits, entries) else 0


if __name__ == "__main__":
    sys.exit(main())
