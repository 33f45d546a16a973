"""Executable semantics of the TCloud ISA: the bit-exact golden model.

The model holds the physical memories (HBM and scratchpad) and the context table of one pNPU. The
hypervisor programs contexts with privileged ``ctx.*`` instructions through :meth:`Machine.host`;
:meth:`Machine.run` then executes every running context, one top-level instruction (a whole uTOp
or a control instruction) per context in turn, until all have stopped.

Semantics that the RTL must match
---------------------------------
* A context issues its uTOps in program order. Because a uTOp leaves no state in its engine and
  correctly synchronised programs order every conflicting pair of uTOps with tokens, executing each
  uTOp atomically in program order gives the result of every legal hardware schedule.
* Every scratchpad/HBM address is context-relative: it is checked against the context's window
  before any byte of the instruction is written, then offset by the window base. A failed check
  faults the context (``SRAM_BOUNDS`` / ``HBM_BOUNDS``); earlier instructions of the same uTOp keep
  their effects, the faulting instruction writes nothing, and no other context is affected.
* A uTOp that declares a ``cost`` faults with ``COST_EXCEEDED`` at the body instruction that would
  take its work units (:mod:`tcloud.isa.cost`) past it, before that instruction has any effect.
* Integer rules: int8 sources are sign-extended; int32 results wrap (two's complement); results
  written as int8 saturate to [-128, 127]; ``ve.requant`` rounds half to even on the exact 64-bit
  product; ``ve.requantf`` rounds as binary32 arithmetic does (:func:`requantize_fp32`).
* Rows of a 2-D access whose stride is smaller than the row are written in increasing row order
  (the last row wins). A VE instruction reads all its sources before writing; only in-place
  (dst == src) or disjoint operands are portable to the RTL.
"""

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .body_faults import Access, BodyFault as _Fault, cost_fault, gather_overlap_fault, me_state_fault, outside_window
from .body_faults import (fetch_bounds_detail, no_engine_detail, privileged_detail, tile_fault, token_overflow_detail,
                          ve_state_fault, wrong_class_detail)
from .config import get_config
from .cost import UnitState, overlap
from .encoding import DecodeError, Instr, decode
from .errors import HostCommandError
from .table import (FMA_BYTE_RESULTS, FMA_BYTE_SOURCES, INSTRUCTION_BYTES, LUT_BYTES, NUM_TOKENS, SCALE_EXPONENT_BIAS,
                    SCALE_EXPONENT_BITS, UINT8_OFFSET,
                    SCALE_FRACTION_BITS, TOKEN_MAX_COUNT, UTOP_CLASSES, ContextStatus, EngineClass, FaultCode,
                    FmaResult, FmaSource, Policy, parse_policy)

_I8 = (-128, 127)
_I32 = (-(1 << 31), (1 << 31) - 1)


@dataclass(frozen=True)
class TraceEvent:
    """A uTOp (``instr`` is its header, with its accesses) or a fence/halt, as executed."""

    context: int
    pc: int
    instr: Instr
    accesses: tuple


@dataclass
class Window:
    """A context's view of a physical memory: context address ``a`` maps to ``base + a``."""

    base: int = 0
    size: int = 0


@dataclass
class Counters:
    """Per-context activity counters (what the hypervisor bills)."""

    utops: dict = field(default_factory=lambda: {c.name.lower(): 0 for c in UTOP_CLASSES})
    instructions: int = 0
    hbm_bytes_read: int = 0
    hbm_bytes_written: int = 0
    macs: int = 0
    ve_elements: int = 0

    def as_dict(self):
        return {"utops": dict(self.utops), "instructions": self.instructions,
                "hbm_bytes_read": self.hbm_bytes_read, "hbm_bytes_written": self.hbm_bytes_written,
                "macs": self.macs, "ve_elements": self.ve_elements}


@dataclass
class Context:
    """One entry of the context table."""

    index: int
    sram: Window = field(default_factory=Window)
    hbm: Window = field(default_factory=Window)
    me_mask: int = 0
    ve_mask: int = 0
    dma_mask: int = 0
    priority: int = 0
    budget: int = 0
    pc: int = 0
    status: ContextStatus = ContextStatus.IDLE
    fault: FaultCode = FaultCode.NONE
    fault_pc: int = 0
    fault_detail: str = ""
    tokens: list = field(default_factory=lambda: [0] * NUM_TOKENS)
    counters: Counters = field(default_factory=Counters)


class Machine:
    """Golden model of one pNPU.

    Parameters
    ----------
    config : ArchConfig or str
        The pNPU configuration (or a preset name).

    trace : bool
        Record a :class:`TraceEvent` for every executed uTOp and fence in :attr:`trace` (used by
        the race checker in :mod:`tcloud.verif.races`).
    policy : Policy or str
        The scheduling policy. It never changes a tenant's results; it decides only whether a uTOp
        for an engine class the context owns no engine of faults with ``NO_ENGINE`` (``static``
        and ``harvest``). Every context owns every engine until ``ctx.engines`` says otherwise.

    Attributes
    ----------
    hbm, sram : numpy.ndarray of uint8
        Physical memories.
    contexts : list of Context
        The context table.
    trace : list of TraceEvent or None
    """

    def __init__(self, config, *, trace=False, policy=Policy.HARVEST):
        self.config = get_config(config)
        self.policy = parse_policy(policy)
        self.hbm = np.zeros(self.config.hbm_bytes, dtype=np.uint8)
        self.sram = np.zeros(self.config.sram_bytes, dtype=np.uint8)
        all_mes, all_ves = (1 << self.config.me_count) - 1, (1 << self.config.ve_count) - 1
        all_dmas = (1 << self.config.dma_count) - 1
        self.contexts = [Context(i, me_mask=all_mes, ve_mask=all_ves, dma_mask=all_dmas)
                         for i in range(self.config.contexts)]
        self.trace = [] if trace else None
        self._accesses = None

    # --- host side ----------------------------------------------------------------------------

    def host(self, command):
        """Execute one privileged ``ctx.*`` command.

        Parameters
        ----------
        command : Instr or bytes
            The command, decoded or as its 16-byte encoding.

        Raises
        ------
        HostCommandError
            Not a ``ctx.*`` instruction, a context index or window outside the hardware, a mask
            naming engines that do not exist, or a reconfiguration of a running context.
        """
        instr = decode(bytes(command)) if isinstance(command, (bytes, bytearray)) else command
        if instr.engine != EngineClass.HOST:
            raise HostCommandError(f"{instr.mnemonic} is not a host (ctx.*) command")
        index = instr["ctx"]
        if index >= len(self.contexts):
            raise HostCommandError(f"{instr.mnemonic}: context {index} does not exist "
                                   f"(config {self.config.name!r} has {len(self.contexts)})")
        ctx = self.contexts[index]
        name = instr.mnemonic
        if name == "ctx.kill":
            if ctx.status == ContextStatus.RUNNING:
                self._stop(ctx, FaultCode.KILLED, ctx.pc, "killed by the hypervisor")
            return
        if ctx.status == ContextStatus.RUNNING:
            raise HostCommandError(f"{name}: context {index} is running; kill it or wait for it first")
        if name == "ctx.sram":
            ctx.sram = self._window(instr, self.config.sram_bytes, "scratchpad")
        elif name == "ctx.hbm":
            ctx.hbm = self._window(instr, self.config.hbm_bytes, "HBM")
        elif name == "ctx.engines":
            for mask_name, count in (("me_mask", self.config.me_count), ("ve_mask", self.config.ve_count),
                                     ("dma_mask", self.config.dma_count)):
                if instr[mask_name] >> count:
                    raise HostCommandError(f"ctx.engines: {mask_name}={instr[mask_name]:#x} names engines "
                                           f"beyond the {count} this pNPU has")
            ctx.me_mask, ctx.ve_mask, ctx.dma_mask = instr["me_mask"], instr["ve_mask"], instr["dma_mask"]
        elif name == "ctx.prio":
            ctx.priority = instr["priority"]
        elif name == "ctx.budget":
            ctx.budget = instr["cycles"]
        elif name == "ctx.start":
            ctx.pc = instr["pc"]
            ctx.tokens = [0] * NUM_TOKENS
            ctx.fault, ctx.fault_pc, ctx.fault_detail = FaultCode.NONE, 0, ""
            ctx.status = ContextStatus.RUNNING
        elif name == "ctx.scrub":
            self.sram[ctx.sram.base:ctx.sram.base + ctx.sram.size] = 0
            self.hbm[ctx.hbm.base:ctx.hbm.base + ctx.hbm.size] = 0
            ctx.counters = Counters()
        else:
            raise HostCommandError(f"host command {name} is not implemented by the golden model")

    @staticmethod
    def _window(instr, physical, what):
        base, size = instr["base"], instr["size"]
        if base + size > physical:
            raise HostCommandError(f"{instr.mnemonic}: window [{base:#x}, {base + size:#x}) exceeds the "
                                   f"{physical:#x}-byte {what}")
        return Window(base, size)

    # --- execution ----------------------------------------------------------------------------

    def run(self, max_steps=None):
        """Run every RUNNING context until all have stopped.

        Parameters
        ----------
        max_steps : int, optional
            Stop after this many top-level instructions in total (a watchdog for tests).

        Returns
        -------
        bool
            ``True`` when no context is running any more.
        """
        steps = 0
        while True:
            running = [c for c in self.contexts if c.status == ContextStatus.RUNNING]
            if not running:
                return True
            for ctx in running:
                if max_steps is not None and steps >= max_steps:
                    return False
                self.step(ctx)
                steps += 1

    def step(self, ctx):
        """Execute one top-level instruction (a whole uTOp) of ``ctx``."""
        if isinstance(ctx, int):
            ctx = self.contexts[ctx]
        if ctx.status != ContextStatus.RUNNING:
            return
        pc = ctx.pc
        try:
            instr = self._fetch(ctx, pc)
            ctx.counters.instructions += 1
            if instr.engine == EngineClass.HOST:
                raise _Fault(FaultCode.PRIVILEGED, privileged_detail(instr.mnemonic))
            if instr.engine != EngineClass.CTRL:
                raise _Fault(FaultCode.WRONG_CLASS, wrong_class_detail(instr.mnemonic))
            if instr.mnemonic == "utop":
                self._utop(ctx, instr, pc)
                ctx.pc = pc + INSTRUCTION_BYTES * (instr["len"] + 1)
            else:
                ctx.pc = pc + INSTRUCTION_BYTES
                if instr.mnemonic == "halt":
                    ctx.status = ContextStatus.DONE
                if self.trace is not None and instr.mnemonic in ("fence", "halt"):
                    self.trace.append(TraceEvent(ctx.index, pc, instr, ()))
        except _Fault as fault:
            self._stop(ctx, fault.code, getattr(fault, "pc", pc), fault.detail)

    def _stop(self, ctx, code, pc, detail):
        ctx.status = ContextStatus.FAULTED
        ctx.fault, ctx.fault_pc, ctx.fault_detail = code, pc, detail

    def _fetch(self, ctx, pc):
        if pc + INSTRUCTION_BYTES > ctx.hbm.size:
            raise _Fault(FaultCode.FETCH_BOUNDS, fetch_bounds_detail(pc, ctx.hbm.size))
        phys = ctx.hbm.base + pc
        try:
            return decode(self.hbm[phys:phys + INSTRUCTION_BYTES].tobytes())
        except DecodeError as exc:
            raise _Fault(exc.fault, str(exc)) from None

    def _utop(self, ctx, header, pc):
        cls = EngineClass(header["cls"])
        need = {}
        for slot in range(3):
            count = header[f"count{slot}"]
            if count:
                token = header[f"wait{slot}"]
                need[token] = need.get(token, 0) + count
        for token, count in need.items():
            if ctx.tokens[token] < count:
                raise _Fault(FaultCode.TOKEN_DEADLOCK, f"uTOp waits for {count} signal(s) on t{token}, "
                                                       f"{ctx.tokens[token]} available")
        owned = {EngineClass.ME: ctx.me_mask, EngineClass.VE: ctx.ve_mask, EngineClass.DMA: ctx.dma_mask}[cls]
        if owned == 0 and self.policy in (Policy.STATIC, Policy.HARVEST):
            raise _Fault(FaultCode.NO_ENGINE, no_engine_detail(cls, self.policy))
        for token, count in need.items():
            ctx.tokens[token] -= count
        engine = _EngineState()
        self._accesses = [] if self.trace is not None else None
        declared, used, unit_state = header["cost"], 0, UnitState(self.config)
        for i in range(header["len"]):
            body_pc = pc + INSTRUCTION_BYTES * (i + 1)
            try:
                instr = self._fetch(ctx, body_pc)
                ctx.counters.instructions += 1
                if instr.engine != cls:
                    raise _Fault(FaultCode.WRONG_CLASS, wrong_class_detail(instr.mnemonic, cls))
                used += unit_state.units(instr)
                if declared and used > declared:
                    raise cost_fault(instr.mnemonic, used, declared)
                _EXECUTE[instr.mnemonic](self, ctx, engine, instr)
            except _Fault as fault:
                fault.pc = body_pc
                raise
        ctx.counters.utops[cls.name.lower()] += 1
        for token in range(NUM_TOKENS):
            if header["signal"] >> token & 1:
                if ctx.tokens[token] >= TOKEN_MAX_COUNT:
                    raise _Fault(FaultCode.TOKEN_OVERFLOW, token_overflow_detail(token))
                ctx.tokens[token] += 1
        if self.trace is not None:
            self.trace.append(TraceEvent(ctx.index, pc, header, tuple(self._accesses)))

    # --- memory access ------------------------------------------------------------------------

    def _region(self, ctx, space, addr, rows, row_bytes, stride):
        window = ctx.sram if space == "sram" else ctx.hbm
        end = addr + (rows - 1) * stride + row_bytes
        if end > window.size:
            raise outside_window(space, addr, end, window.size)
        memory = self.sram if space == "sram" else self.hbm
        return memory, window.base + addr

    def _record(self, space, addr, rows, row_bytes, stride, write):
        if self._accesses is not None:
            self._accesses.append(Access(space, addr, rows, row_bytes, stride, write))

    def read(self, ctx, space, addr, rows, row_bytes, stride):
        """Read a 2-D byte region of a context window as a ``(rows, row_bytes)`` uint8 array."""
        memory, phys = self._region(ctx, space, addr, rows, row_bytes, stride)
        self._record(space, addr, rows, row_bytes, stride, False)
        view = as_strided(memory[phys:], shape=(rows, row_bytes), strides=(stride, 1), writeable=False)
        return view.copy()

    def write(self, ctx, space, addr, stride, data):
        """Write a ``(rows, row_bytes)`` uint8 array to a 2-D region of a context window."""
        rows, row_bytes = data.shape
        memory, phys = self._region(ctx, space, addr, rows, row_bytes, stride)
        self._record(space, addr, rows, row_bytes, stride, True)
        if stride >= row_bytes or rows == 1:
            view = as_strided(memory[phys:], shape=(rows, row_bytes), strides=(stride, 1))
            view[...] = data
        else:
            for r in range(rows):
                memory[phys + r * stride:phys + r * stride + row_bytes] = data[r]

    def _read_elems(self, ctx, addr, rows, n, is_i8, stride):
        itemsize = 1 if is_i8 else 4
        raw = self.read(ctx, "sram", addr, rows, n * itemsize, stride)
        return raw.view(np.int8 if is_i8 else "<i4").astype(np.int64)

    def _write_elems(self, ctx, addr, stride, values, dst_i8):
        if dst_i8:
            data = np.clip(values, *_I8).astype(np.int8).view(np.uint8)
        else:
            data = wrap_i32(values).astype("<i4").view(np.uint8)
        self.write(ctx, "sram", addr, stride, data)


class _EngineState:
    """Engine state that lives only for the duration of one uTOp."""

    def __init__(self):
        self.weights = None
        self.lut = None
        self.rows = 1
        self.dst_stride = self.src1_stride = self.src2_stride = 0
        self.src2_row = 0
        self.fma_multiplier = 0
        """Bit pattern of the binary32 scalar R (``ve.setf``: ``ve.fma``'s multiplier, ``ve.fmav``'s addend);
        +0.0 until set."""


def run_alone(image, config, *, trace=False):
    """Run a program image alone in context 0 of a fresh golden model, every input zero.

    No address, token count or branch of the ISA depends on data but the HBM rows a ``dma.gather``
    selects (with zero indices, its first row), so this run takes every fault the program would take
    on any input, and its trace holds every access it would make, except for those rows.

    Parameters
    ----------
    image : ProgramImage
    config : ArchConfig or str
    trace : bool
        Record :attr:`Machine.trace` (for :func:`tcloud.verif.find_races`).

    Returns
    -------
    Machine
        After the run; ``machine.contexts[0]`` says how the program ended.

    Raises
    ------
    HostCommandError
        If the image's footprint does not fit the configuration's memories.
    """
    machine = Machine(config, trace=trace)
    machine.host(Instr("ctx.hbm", ctx=0, base=0, size=image.hbm_bytes))
    machine.host(Instr("ctx.sram", ctx=0, base=0, size=image.sram_bytes))
    for offset, data in [(image.entry, image.code)] + [(s.offset, s.data) for s in image.segments]:
        machine.hbm[offset:offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
    machine.host(Instr("ctx.start", ctx=0, pc=image.entry))
    machine.run(max_steps=len(image.code) // INSTRUCTION_BYTES)
    return machine


def wrap_i32(values):
    """Wrap int64 values to int32 two's complement."""
    values = np.asarray(values, dtype=np.int64)
    return ((values + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def requantize(values, mult, shift, zp, dst_i8=True):
    """Reference ``ve.requant`` on an int64/int32 array.

    Returns ``saturate(round_half_even(values * mult / 2**shift) + zp)`` as int64, saturated to the
    int8 range (``dst_i8``) or the int32 range.
    """
    p = np.asarray(values, dtype=np.int64) * np.int64(mult)
    if shift:
        s = np.int64(shift)
        q = p >> s
        r = p - (q << s)
        half = np.int64(1) << (s - np.int64(1))
        q = q + ((r > half) | ((r == half) & ((q & 1) == 1)))
    else:
        q = p
    return np.clip(q + np.int64(zp), *(_I8 if dst_i8 else _I32))


_FRACTION_BITS, _EXPONENT_BIAS = SCALE_FRACTION_BITS, SCALE_EXPONENT_BIAS
_EXPONENT_MASK = (1 << SCALE_EXPONENT_BITS) - 1
_SIGNIFICANT_BITS = _FRACTION_BITS + 1
_FAR = 1 << 40
"""A magnitude every saturation maps like any larger one: far beyond int32 plus any zero point."""


def _bit_length(values):
    """Bit length of each non-negative int64 below 2**62 (exact)."""
    values = np.asarray(values, dtype=np.int64)
    _, exponent = np.frexp(values.astype(np.float64))
    exponent = exponent.astype(np.int64)
    over = (exponent > 0) & ((values >> np.maximum(exponent - 1, 0)) == 0)  # float64 rounded up
    return exponent - over


def _shift_half_even(values, shift):
    """``round_half_even(values / 2**shift)`` for non-negative int64 values below 2**62, shift >= 0."""
    shift = np.minimum(np.asarray(shift, dtype=np.int64), 62)
    q = values >> shift
    r = values - (q << shift)
    half = np.where(shift > 0, np.int64(1) << np.maximum(shift - 1, 0), 0)
    return q + ((shift > 0) & ((r > half) | ((r == half) & ((q & 1) == 1))))


def _round_significant(values):
    """Non-negative int64 values rounded half to even to 24 significant bits (binary32 precision)."""
    drop = np.maximum(_bit_length(values) - _SIGNIFICANT_BITS, 0)
    return _shift_half_even(values, drop) << drop


def requantize_fp32(values, scale_words, zp, dst_i8=True):
    """Reference ``ve.requantf``: ``saturate(round_half_even(fl32(fl32(values) * scale)) + zp)``.

    Computed in integers only, for every 32-bit scale word: ``a`` is ``|values|`` rounded to 24
    significant bits (int32 to binary32), ``p`` is ``a`` times the scale's significand rounded to 24
    significant bits (the binary32 product), and ``p * 2**exponent`` is rounded half to even; the sign
    is that of ``values`` times that of the scale. Exponent field 0 (zero and subnormal scales) has no
    hidden bit, as in IEEE 754; exponent field 255 (inf, NaN) continues the normal rule (scale
    ``2**128 * (1 + fraction)``). Products beyond the binary32 range saturate like the infinity they
    round to; products below it round to 0 either way.

    Parameters
    ----------
    values : array_like of int
        int32 accumulators.
    scale_words : array_like of int
        Bit patterns of the binary32 scales (``np.float32(s).view(np.uint32)``), broadcast with
        ``values``.
    zp : int
        Zero point added after rounding.
    dst_i8 : bool
        Saturate to int8 (else to int32).

    Returns
    -------
    numpy.ndarray of int64
    """
    values = np.asarray(values, dtype=np.int64)
    words = np.asarray(scale_words, dtype=np.int64) & 0xFFFFFFFF
    biased = (words >> _FRACTION_BITS) & _EXPONENT_MASK
    significand = (words & ((1 << _FRACTION_BITS) - 1)) | np.where(biased > 0, 1 << _FRACTION_BITS, 0)
    # scale = significand * 2**-shift; the subnormal exponent is that of biased exponent 1
    shift = _EXPONENT_BIAS + _FRACTION_BITS - np.maximum(biased, 1)
    a = _round_significant(np.abs(values))  # |int32| <= 2**31
    p = _round_significant(a * significand)  # < 2**55
    right = _shift_half_even(p, np.maximum(shift, 0))
    left_by = np.clip(-shift, 0, 62)
    beyond = (left_by > 40) | (p > (_FAR >> np.minimum(left_by, 40)))
    left = np.where(beyond, np.where(p > 0, _FAR, 0), p << np.minimum(left_by, 40))
    magnitude = np.where(shift >= 0, right, left)
    negative = (values < 0) ^ ((words >> 31) == 1)
    return np.clip(np.where(negative, -magnitude, magnitude) + np.int64(zp), *(_I8 if dst_i8 else _I32))


_WORD_BITS = 32
_SIGN_BIT = _WORD_BITS - 1
_INF_EXPONENT = _EXPONENT_MASK
_FRAME_BITS = 62
"""``ve.fma`` adds its product and addend as integers in a frame of this many bits below the larger
operand's top bit (both magnitudes then stay below 2**62, their sum below 2**63)."""


def _bit_length63(values):
    """Bit length of each non-negative int64 (any, up to 2**63 - 1; exact)."""
    values = np.asarray(values, dtype=np.int64)
    _, exponent = np.frexp(values.astype(np.float64))
    exponent = exponent.astype(np.int64)
    over = (exponent > 0) & ((values >> np.clip(exponent - 1, 0, 63)) == 0)  # float64 rounded up
    return exponent - over


def fp32_fields(words):
    """``(negative, significand, exponent)`` of binary32 bit patterns as ``ve.fma`` reads them: the word
    is ``±significand · 2**exponent``; exponent field 0 reads as zero, 255 as a normal number."""
    words = np.asarray(words, dtype=np.int64) & ((1 << _WORD_BITS) - 1)
    biased = (words >> _FRACTION_BITS) & _EXPONENT_MASK
    significand = np.where(biased > 0, (words & ((1 << _FRACTION_BITS) - 1)) | (1 << _FRACTION_BITS), 0)
    return (words >> _SIGN_BIT) == 1, significand, biased - (_EXPONENT_BIAS + _FRACTION_BITS)


def _align(negative, magnitude, exponent, low):
    """``floor(±magnitude · 2**(exponent - low))`` and whether it dropped nonzero bits (magnitude < 2**56)."""
    signed = np.where(negative, -magnitude, magnitude)
    left = exponent - low
    right = np.minimum(np.maximum(-left, 0), 63)
    shifted = np.where(left >= 0, signed << np.clip(left, 0, 63), signed >> right)
    lost = (magnitude & ((np.int64(1) << np.minimum(right, _FRAME_BITS)) - 1)) != 0
    return shifted, lost


def fma_fp32(x, x_kind, r_word, c_words):
    """Reference ``ve.fma`` binary32 result: ``fl32(x · R + C)`` rounded once, half to even.

    Exact, in int64 only: the product of the significands (< 2**55) and the addend's significand
    are aligned in a 62-bit frame under the larger top bit; bits the smaller operand loses below
    the frame only matter as a sticky bit, because an operand that loses bits lies at least 2**5
    below the other, so the sum keeps at least 60 significant bits above them (the 24 kept plus
    guard, far more than round-half-even needs). Special words as the ISA table says (exponent
    field 0 reads as zero, 255 as a normal number; results below 2**-126 flush to +0, results
    of 2**128 and more become ±inf; a zero result is +0).

    Parameters
    ----------
    x : array_like of int
        src1 elements: integers (int8, uint8, int32 kinds) or binary32 bit patterns (FP32 kind).
    x_kind : FmaSource
    r_word : int or array_like of int
        Bit pattern of the multiplier R (``ve.setf``), or per-element multipliers (``ve.fmav``'s Y)
        broadcast with ``x``.
    c_words : array_like of int
        Bit patterns of the addends, broadcast with ``x`` (0 for ``src2_zero``).

    Returns
    -------
    numpy.ndarray of int64
        Binary32 bit patterns (0 .. 2**32 - 1).
    """
    x = np.asarray(x, dtype=np.int64)
    if FmaSource(x_kind) == FmaSource.FP32:
        x_negative, x_magnitude, x_exponent = fp32_fields(x)
    else:
        x_negative, x_magnitude, x_exponent = x < 0, np.abs(x), np.zeros_like(x)
    r_negative, r_magnitude, r_exponent = fp32_fields(r_word)
    c_negative, c_magnitude, c_exponent = fp32_fields(c_words)
    x_magnitude, c_magnitude = np.broadcast_arrays(x_magnitude, c_magnitude)
    p_magnitude = x_magnitude * r_magnitude  # <= 2**31 * (2**24 - 1) < 2**55
    p_exponent = x_exponent + r_exponent
    p_negative = x_negative ^ r_negative
    p_top = np.where(p_magnitude > 0, p_exponent + _bit_length63(p_magnitude), np.iinfo(np.int64).min // 2)
    c_top = np.where(c_magnitude > 0, c_exponent + _SIGNIFICANT_BITS, np.iinfo(np.int64).min // 2)
    low = np.maximum(p_top, c_top) - _FRAME_BITS
    p_frame, p_lost = _align(p_negative, p_magnitude, p_exponent, low)
    c_frame, c_lost = _align(c_negative, c_magnitude, c_exponent, low)
    total = p_frame + c_frame  # floor of the exact sum in units of 2**low; inexact iff a part was lost
    inexact = p_lost | c_lost
    negative = total < 0
    magnitude = np.where(negative, -total - inexact, total)  # floor of |exact sum|
    length = _bit_length63(magnitude)
    drop = np.maximum(length - _SIGNIFICANT_BITS, 0)
    kept = magnitude >> drop
    guard = np.where(drop > 0, (magnitude >> np.maximum(drop - 1, 0)) & 1, 0) == 1
    below = ((magnitude & ((np.int64(1) << np.maximum(drop - 1, 0)) - 1)) != 0) | inexact
    kept = kept + (guard & (below | ((kept & 1) == 1)))
    carry = kept >> _SIGNIFICANT_BITS
    kept, drop = kept >> carry, drop + carry
    # normalise exact short results (drop 0, fewer than 24 bits) to a 24-bit significand
    up = np.maximum(_SIGNIFICANT_BITS - _bit_length63(kept), 0)
    kept = kept << up
    biased = low + drop - up + _EXPONENT_BIAS + _FRACTION_BITS
    sign = negative.astype(np.int64) << _SIGN_BIT
    normal = sign | (np.clip(biased, 0, _INF_EXPONENT) << _FRACTION_BITS) | (kept & ((1 << _FRACTION_BITS) - 1))
    infinity = sign | (_INF_EXPONENT << _FRACTION_BITS)
    return np.where((kept == 0) | (biased <= 0), 0, np.where(biased >= _INF_EXPONENT, infinity, normal))


_ACC_BITS_FAR = _FAR.bit_length() - _SIGNIFICANT_BITS
"""Left shift of a 24-bit significand beyond which every integer result saturates like _FAR."""


_FMA_RANGES = {FmaResult.INT8: _I8, FmaResult.UINT8: (0, 255), FmaResult.INT32: _I32}


def fp32_to_int(words, result_kind):
    """``ve.fma``'s integer results: ``round_half_even`` of binary32 words (as :func:`fma_fp32` writes
    them: normal, +0 or ±inf), saturated to the range of ``result_kind``."""
    negative, significand, exponent = fp32_fields(words)
    right = _shift_half_even(significand, np.maximum(-exponent, 0))
    beyond = exponent > _ACC_BITS_FAR
    left = np.where(beyond, np.where(significand > 0, _FAR, 0),
                    significand << np.clip(exponent, 0, _ACC_BITS_FAR))
    magnitude = np.minimum(np.where(exponent >= 0, left, right), _FAR)
    return np.clip(np.where(negative, -magnitude, magnitude), *_FMA_RANGES[FmaResult(result_kind)])


def ve_fma(x, x_kind, r_word, c_words, result_kind):
    """Reference ``ve.fma`` on element values: binary32 words (as int64 0 .. 2**32 - 1) for
    ``FmaResult.FP32``, else the saturated integers (uint8 results as 0 .. 255)."""
    words = fma_fp32(x, x_kind, r_word, c_words)
    return words if FmaResult(result_kind) == FmaResult.FP32 else fp32_to_int(words, result_kind)


def _dma(machine, ctx, engine, instr):
    rows, row_bytes = instr["rows"], instr["row_bytes"]
    if instr.mnemonic == "dma.load":
        data = machine.read(ctx, "hbm", instr["hbm"], rows, row_bytes, instr["hbm_stride"])
        machine.write(ctx, "sram", instr["sram"], instr["sram_stride"], data)
        ctx.counters.hbm_bytes_read += data.size
    else:
        data = machine.read(ctx, "sram", instr["sram"], rows, row_bytes, instr["sram_stride"])
        machine.write(ctx, "hbm", instr["hbm"], instr["hbm_stride"], data)
        ctx.counters.hbm_bytes_written += data.size


def _dma_gather(machine, ctx, engine, instr):
    rows, row_bytes, table = instr["rows"], instr["row_bytes"], instr["hbm"]
    indices = machine.read(ctx, "sram", instr["idx"], 1, 4 * rows, 0)[0].view("<i4").astype(np.int64)
    machine._region(ctx, "sram", instr["sram"], rows, row_bytes, instr["sram_stride"])
    if overlap(instr["idx"], instr["idx"] + 4 * rows, instr["sram"],
               instr["sram"] + (rows - 1) * instr["sram_stride"] + row_bytes):
        raise gather_overlap_fault()
    for r, i in enumerate(indices.tolist()):
        if i < 0 or table + (i + 1) * row_bytes > ctx.hbm.size:
            raise _Fault(FaultCode.HBM_BOUNDS, f"dma.gather index {i} (row {r}) selects HBM bytes "
                                               f"[{table + i * row_bytes:#x}, {table + (i + 1) * row_bytes:#x}) "
                                               f"outside the {ctx.hbm.size:#x}-byte window")
    data = np.concatenate([machine.read(ctx, "hbm", table + i * row_bytes, 1, row_bytes, 0) for i in indices.tolist()])
    machine.write(ctx, "sram", instr["sram"], instr["sram_stride"], data)
    ctx.counters.hbm_bytes_read += data.size


def _me_loadw(machine, ctx, engine, instr):
    k, n = instr["k"], instr["n"]
    cfg = machine.config
    if k > cfg.me_rows or n > cfg.me_cols:
        raise tile_fault(cfg, k, n)
    raw = machine.read(ctx, "sram", instr["w"], k, n, instr["w_stride"])
    engine.weights = raw.view(np.int8).astype(np.float64)


def _me_matmul(machine, ctx, engine, instr):
    if engine.weights is None:
        raise me_state_fault()
    k, n = engine.weights.shape
    m = instr["m"]
    a = machine.read(ctx, "sram", instr["a"], m, k, instr["a_stride"]).view(np.int8)
    # float64 products of int8 sums of at most 255 terms are exact; BLAS makes this fast.
    product = (a.astype(np.float64) @ engine.weights).astype(np.int64)
    if instr["acc"]:
        product += machine._read_elems(ctx, instr["out"], m, n, False, instr["out_stride"])
    machine._write_elems(ctx, instr["out"], instr["out_stride"], product, False)
    ctx.counters.macs += m * k * n


def _ve_shape(machine, ctx, engine, instr):
    engine.rows = instr["rows"]
    engine.dst_stride = instr["dst_stride"]
    engine.src1_stride = instr["src1_stride"]
    engine.src2_stride = instr["src2_stride"]
    engine.src2_row = instr["src2_row"]


def _read_src2(machine, ctx, engine, addr, n, is_i8):
    """The ``rows × n`` second source of a two-source VE instruction: one element per row, repeated
    across the row, when ``ve.shape.src2_row`` is set."""
    if engine.src2_row:
        column = machine._read_elems(ctx, addr, engine.rows, 1, is_i8, engine.src2_stride)
        return np.repeat(column, n, axis=1)
    return machine._read_elems(ctx, addr, engine.rows, n, is_i8, engine.src2_stride)


_BINARY = {"ve.add": np.add, "ve.sub": np.subtract, "ve.mul": np.multiply,
           "ve.max": np.maximum, "ve.min": np.minimum}


def _ve_binary(machine, ctx, engine, instr):
    n, rows = instr["n"], engine.rows
    x = machine._read_elems(ctx, instr["src1"], rows, n, instr["src1_i8"], engine.src1_stride)
    y = _read_src2(machine, ctx, engine, instr["src2"], n, instr["src2_i8"])
    machine._write_elems(ctx, instr["dst"], engine.dst_stride, _BINARY[instr.mnemonic](x, y),
                         instr["dst_i8"])
    ctx.counters.ve_elements += rows * n


def _ve_unary(machine, ctx, engine, instr):
    n, rows = instr["n"], engine.rows
    x = machine._read_elems(ctx, instr["src"], rows, n, instr["src_i8"], engine.src1_stride)
    if instr.mnemonic == "ve.relu":
        x = np.maximum(x, 0)
    machine._write_elems(ctx, instr["dst"], engine.dst_stride, x, instr["dst_i8"])
    ctx.counters.ve_elements += rows * n


def _ve_fill(machine, ctx, engine, instr):
    n, rows = instr["n"], engine.rows
    values = np.full((rows, n), instr["value"], dtype=np.int64)
    machine._write_elems(ctx, instr["dst"], engine.dst_stride, values, instr["dst_i8"])
    ctx.counters.ve_elements += rows * n


def _ve_requant(machine, ctx, engine, instr):
    n, rows = instr["n"], engine.rows
    x = machine._read_elems(ctx, instr["src"], rows, n, False, engine.src1_stride)
    y = requantize(x, instr["mult"], instr["shift"], instr["zp"], instr["dst_i8"])
    machine._write_elems(ctx, instr["dst"], engine.dst_stride, y, instr["dst_i8"])
    ctx.counters.ve_elements += rows * n


def _ve_requantf(machine, ctx, engine, instr):
    n, rows = instr["n"], engine.rows
    x = machine._read_elems(ctx, instr["src1"], rows, n, False, engine.src1_stride)
    scales = _read_src2(machine, ctx, engine, instr["src2"], n, False)
    y = requantize_fp32(x, scales, instr["zp"], instr["dst_i8"])
    machine._write_elems(ctx, instr["dst"], engine.dst_stride, y, instr["dst_i8"])
    ctx.counters.ve_elements += rows * n


def _ve_reduce(machine, ctx, engine, instr):
    n, rows = instr["n"], engine.rows
    x = machine._read_elems(ctx, instr["src"], rows, n, instr["src_i8"], engine.src1_stride)
    y = x.sum(axis=1) if instr.mnemonic == "ve.redsum" else x.max(axis=1)
    machine._write_elems(ctx, instr["dst"], engine.dst_stride, y.reshape(rows, 1), False)
    ctx.counters.ve_elements += rows * n


def _ve_lutload(machine, ctx, engine, instr):
    engine.lut = machine.read(ctx, "sram", instr["src"], 1, LUT_BYTES, 0)[0].view(np.int8).astype(np.int64)


def lookup(table, values):
    """Reference ``ve.lut``: ``table[value as unsigned byte]`` for int8 ``values`` (any integer array:
    only its low byte indexes the int8 ``table``)."""
    return np.asarray(table, dtype=np.int64)[np.asarray(values, dtype=np.int64) & (LUT_BYTES - 1)]


def _ve_lut(machine, ctx, engine, instr):
    if engine.lut is None:
        raise ve_state_fault()
    n, rows = instr["n"], engine.rows
    x = machine._read_elems(ctx, instr["src"], rows, n, True, engine.src1_stride)
    machine._write_elems(ctx, instr["dst"], engine.dst_stride, lookup(engine.lut, x), True)
    ctx.counters.ve_elements += rows * n


def _ve_setf(machine, ctx, engine, instr):
    engine.fma_multiplier = instr["value"] & ((1 << _WORD_BITS) - 1)


def _ve_fma(machine, ctx, engine, instr):
    x, x_kind = _read_fma_x(machine, ctx, engine, instr)
    result_kind = FmaResult(instr["dst_kind"])
    if instr["src2_zero"]:
        c = np.zeros_like(x)
    else:
        c = _read_src2(machine, ctx, engine, instr["src2"], instr["n"], False)
    y = ve_fma(x, x_kind, engine.fma_multiplier, c, result_kind)
    _write_fma(machine, ctx, engine, instr, y, result_kind)


def _read_fma_x(machine, ctx, engine, instr):
    """``ve.fma``/``ve.fmav``'s multiplicand X (uint8 as ``q``) and its kind."""
    x_kind = FmaSource(instr["src1_kind"])
    x = machine._read_elems(ctx, instr["src1"], engine.rows, instr["n"], x_kind in FMA_BYTE_SOURCES,
                            engine.src1_stride)
    return (x + UINT8_OFFSET if x_kind == FmaSource.UINT8 else x), x_kind


def _write_fma(machine, ctx, engine, instr, y, result_kind):
    """Write ``ve.fma``/``ve.fmav`` results (uint8 as ``q - 128`` bytes) and count the elements."""
    if result_kind == FmaResult.UINT8:
        y = y - UINT8_OFFSET
    machine._write_elems(ctx, instr["dst"], engine.dst_stride, y, result_kind in FMA_BYTE_RESULTS)
    ctx.counters.ve_elements += engine.rows * instr["n"]


def ve_fmav(x, x_kind, y_words, r_word, result_kind):
    """Reference ``ve.fmav`` on element values: ``fl32(x · y + R)``, i.e. :func:`ve_fma` with the
    multiplier ``y_words`` (bit patterns, broadcast with ``x``) per element and the scalar ``R`` as addend."""
    x, y_words = np.broadcast_arrays(np.asarray(x, dtype=np.int64), np.asarray(y_words, dtype=np.int64))
    return ve_fma(x, x_kind, y_words, np.full(x.shape, r_word & 0xFFFFFFFF, dtype=np.int64), result_kind)


def _ve_fmav(machine, ctx, engine, instr):
    x, x_kind = _read_fma_x(machine, ctx, engine, instr)
    y_words = _read_src2(machine, ctx, engine, instr["src2"], instr["n"], False)
    result_kind = FmaResult(instr["dst_kind"])
    _write_fma(machine, ctx, engine, instr, ve_fmav(x, x_kind, y_words, engine.fma_multiplier, result_kind),
               result_kind)


_EXECUTE = {
    "dma.load": _dma, "dma.store": _dma, "dma.gather": _dma_gather,
    "me.loadw": _me_loadw, "me.matmul": _me_matmul,
    "ve.shape": _ve_shape,
    **{name: _ve_binary for name in _BINARY},
    "ve.relu": _ve_unary, "ve.copy": _ve_unary,
    "ve.fill": _ve_fill, "ve.requant": _ve_requant, "ve.requantf": _ve_requantf,
    "ve.redsum": _ve_reduce, "ve.redmax": _ve_reduce,
    "ve.lutload": _ve_lutload, "ve.lut": _ve_lut,
    "ve.setf": _ve_setf, "ve.fma": _ve_fma, "ve.fmav": _ve_fmav,
}


def _check_coverage():
    from .table import INSTRUCTIONS

    body = {s.mnemonic for s in INSTRUCTIONS if s.engine in UTOP_CLASSES}
    missing = body - set(_EXECUTE)
    if missing:
        raise AssertionError(f"golden model lacks semantics for {sorted(missing)}")


_check_coverage()

__all__ = ["Machine", "Context", "Counters", "Window", "Access", "TraceEvent", "lookup", "requantize",
           "requantize_fp32", "fma_fp32", "fp32_fields", "fp32_to_int", "ve_fma", "ve_fmav", "run_alone", "wrap_i32"]
