"""Static race checker for uTOp programs.

The golden model executes each context's uTOps atomically in program order, so a program that
forgets a dependency still computes the right answer there — and the wrong one on hardware, where
uTOps of a context issue in order but complete out of order. This module finds such bugs from a
trace of the golden model (``Machine(trace=True)``):

1. **Guaranteed ordering.** A uTOp ``Q`` waiting on token ``t`` is guaranteed to start after every
   producer of ``t`` issued before it only when, counting ``Q``'s own wait, the waits on ``t`` so
   far consume exactly as many signals as those producers give; otherwise ``Q`` knows only that
   *some* producers finished, and the checker assumes none (it is conservative). A ``fence`` (and
   ``halt``) orders everything before it before everything after it. Orderings are transitive.
2. **Conflicts.** Two uTOps conflict when they touch a common byte of the same memory and at least
   one writes it. Every conflicting pair must be ordered; each pair that is not is a :class:`Race`.

Addresses in the trace are context-relative, so each context is checked on its own (isolation
makes contexts independent). :func:`check_program` runs a program image to get its trace (what
``tcloud check`` and ``tcloud asm`` do).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tcloud.isa import ContextStatus, ProgramImage, assemble, get_config
from tcloud.isa.asm import instruction_lines
from tcloud.isa.errors import TcloudError
from tcloud.isa.golden import run_alone
from tcloud.isa.image import MAGIC
from tcloud.isa.table import INSTRUCTION_BYTES, NUM_TOKENS


@dataclass(frozen=True)
class Race:
    """Two uTOps of one context that may run concurrently and touch the same byte."""

    context: int
    first_pc: int
    second_pc: int
    space: str
    address: int
    kind: str

    def __str__(self):
        return (f"context {self.context}: {self.kind} race between the uTOps at pc {self.first_pc:#x} "
                f"and {self.second_pc:#x} on {self.space} byte {self.address:#x}")


def _bits(mask):
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def happens_before(events):
    """Return, for each uTOp event of one context, the bit set of uTOps guaranteed to finish first.

    Parameters
    ----------
    events : list of TraceEvent
        One context's events in program order (uTOps, fences and halts).

    Returns
    -------
    list of int
        ``result[i]`` has bit ``j`` set when uTOp ``j`` completes before uTOp ``i`` issues
        (indices count uTOps only).
    """
    before_sets = []
    producers = [[] for _ in range(NUM_TOKENS)]
    consumed = [0] * NUM_TOKENS
    fenced = 0
    for event in events:
        header = event.instr
        if header.mnemonic != "utop":
            fenced = (1 << len(before_sets)) - 1
            continue
        index = len(before_sets)
        before = fenced
        for slot in range(3):
            count = header[f"count{slot}"]
            if not count:
                continue
            token = header[f"wait{slot}"]
            consumed[token] += count
            if consumed[token] == len(producers[token]):
                for p in producers[token]:
                    before |= before_sets[p] | (1 << p)
        before_sets.append(before)
        for token in _bits(header["signal"]):
            producers[token].append(index)
    return before_sets


def _first_common_byte(a, b):
    low, high = max(a.addr, b.addr), min(a.end, b.end)
    if low >= high:
        return None
    size = high - low
    covered = []
    for access in (a, b):
        starts = access.addr + access.stride * np.arange(access.rows, dtype=np.int64)
        ends = starts + access.row_bytes
        keep = (ends > low) & (starts < high)
        edges = np.zeros(size + 1, dtype=np.int64)
        np.add.at(edges, np.clip(starts[keep] - low, 0, size), 1)
        np.add.at(edges, np.clip(ends[keep] - low, 0, size), -1)
        covered.append(np.cumsum(edges[:-1]) > 0)
    both = np.flatnonzero(covered[0] & covered[1])
    return low + int(both[0]) if both.size else None


def _footprint(event):
    """Distinct accesses of a uTOp; a region it writes needs no separate read entry."""
    written = {(a.space, a.addr, a.rows, a.row_bytes, a.stride) for a in event.accesses if a.write}
    return {a for a in event.accesses
            if a.write or (a.space, a.addr, a.rows, a.row_bytes, a.stride) not in written}


def _conflict(first, second):
    for a in first:
        for b in second:
            if a.space != b.space or not (a.write or b.write):
                continue
            if a.addr >= b.end or b.addr >= a.end:
                continue
            address = _first_common_byte(a, b)
            if address is not None:
                kind = ("write-after-write" if a.write and b.write
                        else "read-after-write" if a.write else "write-after-read")
                return a.space, address, kind
    return None


def find_races(trace):
    """Return every :class:`Race` in a golden-model trace (empty when the program is race-free).

    Parameters
    ----------
    trace : list of TraceEvent
        ``Machine.trace`` after a run with ``trace=True``; several contexts may be interleaved.
    """
    races = []
    for context in sorted({e.context for e in trace}):
        events = [e for e in trace if e.context == context]
        utops = [e for e in events if e.instr.mnemonic == "utop"]
        before_sets = happens_before(events)
        footprints = [_footprint(e) for e in utops]
        for index, second in enumerate(utops):
            for earlier in _bits(((1 << index) - 1) & ~before_sets[index]):
                found = _conflict(footprints[earlier], footprints[index])
                if found:
                    races.append(Race(context, utops[earlier].pc, second.pc, *found))
    return races


@dataclass(frozen=True)
class ProgramCheck:
    """What :func:`check_program` found.

    Attributes
    ----------
    races : list of Race
    utops : int
        uTOps the golden model ran (all of them unless the program faulted).
    context : Context
        The golden model's context 0 after the run: its ``status``, ``fault``, ``fault_pc`` and
        ``fault_detail`` say how the program ended.
    """

    races: list
    utops: int
    context: object
    entry: int

    def findings(self, source, lines=None):
        """One message per race, then one if the program faulted or did not reach ``halt``.

        Parameters
        ----------
        source : str
            File name the messages start with.
        lines : list of int, optional
            Source line of each instruction (:func:`tcloud.isa.asm.instruction_lines`); without
            them the messages give context-relative pcs.

        Returns
        -------
        list of str
            Empty when the program is race-free and ends with ``halt``.
        """
        def line(pc):
            index = (pc - self.entry) // INSTRUCTION_BYTES
            return lines[index] if lines and 0 <= index < len(lines) else None

        def where(pc):
            return f"{source}:{line(pc)}" if line(pc) else f"{source}: pc {pc:#x}"

        def what(pc):
            return f"line {line(pc)}" if line(pc) else f"pc {pc:#x}"

        out = [f"{where(race.second_pc)}: {race.kind} race with the uTOp at {what(race.first_pc)} on "
               f"{race.space} byte {race.address:#x}: no token wait or fence orders them" for race in self.races]
        if self.context.status == ContextStatus.FAULTED:
            out.append(f"{where(self.context.fault_pc)}: the program faults with {self.context.fault.name}: "
                       f"{self.context.fault_detail}")
        elif self.context.status != ContextStatus.DONE:
            out.append(f"{source}: the program runs off its end without reaching halt")
        return out


def check_program(image, config=None):
    """Run ``image`` alone in the golden model with every input zero and find its races.

    Addresses and token use do not depend on data, so the zero inputs show every access. A program
    that faults is checked up to its fault.

    Parameters
    ----------
    image : ProgramImage
    config : ArchConfig or str, optional
        Default: the preset the image names.

    Returns
    -------
    ProgramCheck

    Raises
    ------
    ConfigMismatchError
        If the image was built for another configuration.
    """
    config = get_config(config or image.config_name)
    image.check_config(config)
    machine = run_alone(image, config, trace=True)
    utops = sum(event.instr.mnemonic == "utop" for event in machine.trace)
    return ProgramCheck(find_races(machine.trace), utops, machine.contexts[0], image.entry)


def read_program(path, config=None):
    """Read a program image (``.tcimg``) or assemble an assembly file, whichever ``path`` holds.

    Returns
    -------
    image : ProgramImage
    lines : list of int or None
        For assembly, the source line of each instruction (:func:`tcloud.isa.asm.instruction_lines`).

    Raises
    ------
    TcloudError
        If the file cannot be read or is neither an image nor assembly text (or their own errors).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TcloudError(f"cannot read {path}: {exc.strerror}") from None
    if data.startswith(MAGIC):
        return ProgramImage.from_bytes(data, config and get_config(config)), None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise TcloudError(f"{path} is neither a program image nor assembly text") from None
    return assemble(text, config=config, source=str(path)), instruction_lines(text)
