"""The faults a uTOp's body takes whatever the data: what a timing-only run checks instead of executing.

No address, size or engine state of a body instruction depends on data, except the HBM rows a
``dma.gather`` selects by its index vector. So the fault a uTOp takes in the golden model
(:mod:`tcloud.isa.golden`) is known from its instructions and its context's window sizes alone,
except for a gather index outside the HBM window: :func:`utop_body_fault` finds it without touching
memory, in the order the golden model checks (work units before the instruction, then the
instruction's regions and state in the order it accesses them). The golden model raises its
faults with the details written here (also those of the front-end faults the perf backend reports
as well), and ``tests/test_body_faults.py`` checks on random bodies and windows that both always agree.
"""

from typing import NamedTuple

from .cost import UnitState, overlap
from .table import FMA_BYTE_RESULTS, FMA_BYTE_SOURCES, LUT_BYTES, TOKEN_MAX_COUNT, FaultCode, FmaResult, FmaSource

_ELEMENT_BYTES = {True: 1, False: 4}
"""Bytes per element of a VE operand, by whether it is int8."""


class Access(NamedTuple):
    """One 2-D memory access of a uTOp, in context-relative addresses."""

    space: str
    addr: int
    rows: int
    row_bytes: int
    stride: int
    write: bool

    @property
    def end(self):
        return self.addr + (self.rows - 1) * self.stride + self.row_bytes


class BodyFault(Exception):
    """A fault of a body instruction: ``code`` and its ``detail``."""

    def __init__(self, code, detail):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def outside_window(space, addr, end, window_size):
    """The :class:`BodyFault` of an access to ``[addr, end)`` of a ``space`` window of ``window_size`` bytes
    (the caller found ``end > window_size``)."""
    code = FaultCode.SRAM_BOUNDS if space == "sram" else FaultCode.HBM_BOUNDS
    return BodyFault(code, f"{space} access [{addr:#x}, {end:#x}) outside the {window_size:#x}-byte window")


def fetch_bounds_detail(pc, hbm_size):
    """Detail of a fetch outside the HBM window (of a top-level instruction or of a body word)."""
    return f"fetch at {pc:#x} outside the {hbm_size:#x}-byte HBM window"


def wrong_class_detail(mnemonic, utop_class=None):
    """Detail of a body instruction outside a uTOp, or inside one of another class (``utop_class``, an
    :class:`~tcloud.isa.EngineClass`)."""
    return f"{mnemonic} outside a uTOp" if utop_class is None else f"{mnemonic} in a {utop_class.name} uTOp"


def token_overflow_detail(token):
    """Detail of a signal that would take token ``token``'s counter beyond its maximum."""
    return f"token t{token} would exceed {TOKEN_MAX_COUNT}"


def no_engine_detail(engine_class, policy):
    """Detail of a uTOp of ``engine_class`` (an :class:`~tcloud.isa.EngineClass`) issued by a context
    that owns no engine of that class under ``policy`` (a :class:`~tcloud.isa.Policy`: static or
    harvest)."""
    return (f"{engine_class.name} uTOp, but the context owns no {engine_class.name} under the "
            f"{policy.name.lower()} policy")


def privileged_detail(mnemonic):
    """Detail of a tenant program executing a hypervisor (``ctx.*``) instruction."""
    return f"tenant executed {mnemonic}"


def cost_fault(mnemonic, used, declared):
    return BodyFault(FaultCode.COST_EXCEEDED, f"{mnemonic} takes the uTOp to {used} work units; its header "
                                              f"declared {declared}")


def tile_fault(config, k, n):
    return BodyFault(FaultCode.ILLEGAL_FIELD, f"me.loadw tile {k}x{n} exceeds the {config.me_rows}x{config.me_cols} array")


def me_state_fault():
    return BodyFault(FaultCode.ME_STATE, "me.matmul before me.loadw in this uTOp")


def ve_state_fault():
    return BodyFault(FaultCode.VE_STATE, "ve.lut before ve.lutload in this uTOp")


def gather_overlap_fault():
    return BodyFault(FaultCode.ILLEGAL_FIELD, "dma.gather writes rows over its own index vector")


class BodyState:
    """What a body instruction's regions and faults depend on: earlier instructions of its uTOp.

    Parameters
    ----------
    config : ArchConfig
    declared : int
        The uTOp header's ``cost`` (0: none declared).
    """

    def __init__(self, config, declared=0):
        self.config, self.declared = config, declared
        self.units, self.used = UnitState(config), 0
        self.tile, self.lut = None, False
        self.rows, self.dst_stride, self.src1_stride, self.src2_stride, self.src2_row = 1, 0, 0, 0, 0

    def accesses(self, instr):
        """The regions ``instr`` accesses, in the golden model's order; raises :class:`BodyFault` where
        it faults before (or between) them for a reason other than a window. Updates the state."""
        self.used += self.units.units(instr)
        if self.declared and self.used > self.declared:
            raise cost_fault(instr.mnemonic, self.used, self.declared)
        yield from _ACCESSES[instr.mnemonic](self, instr)


def utop_body_fault(config, header, body, sram_size, hbm_size):
    """The first fault of a uTOp body that does not depend on data.

    Parameters
    ----------
    config : ArchConfig
    header : Instr
        The ``utop`` header (its ``cost``).
    body : sequence of Instr
        Body instructions that decode and are of the header's class.
    sram_size, hbm_size : int
        The context's window sizes.

    Returns
    -------
    tuple or None
        ``(code, index, detail)`` with ``index`` the body instruction's position, or ``None``.
    """
    state = BodyState(config, header["cost"])
    sizes = {"sram": sram_size, "hbm": hbm_size}
    for index, instr in enumerate(body):
        try:
            for access in state.accesses(instr):
                size = sizes[access.space]
                if access.end > size:
                    raise outside_window(access.space, access.addr, access.end, size)
        except BodyFault as fault:
            return fault.code, index, fault.detail
    return None


def _dma(state, instr):
    fields = instr.values
    rows, row_bytes = fields["rows"], fields["row_bytes"]
    hbm_first = instr.spec.mnemonic == "dma.load"
    hbm = Access("hbm", fields["hbm"], rows, row_bytes, fields["hbm_stride"], not hbm_first)
    sram = Access("sram", fields["sram"], rows, row_bytes, fields["sram_stride"], hbm_first)
    yield from (hbm, sram) if hbm_first else (sram, hbm)


def _dma_gather(state, instr):
    rows, row_bytes = instr["rows"], instr["row_bytes"]
    index = Access("sram", instr["idx"], 1, 4 * rows, 0, False)
    yield index
    target = Access("sram", instr["sram"], rows, row_bytes, instr["sram_stride"], True)
    yield target
    if overlap(index.addr, index.end, target.addr, target.end):
        raise gather_overlap_fault()


def _me_loadw(state, instr):
    k, n = instr["k"], instr["n"]
    if k > state.config.me_rows or n > state.config.me_cols:
        raise tile_fault(state.config, k, n)
    yield Access("sram", instr["w"], k, n, instr["w_stride"], False)
    state.tile = (k, n)


def _me_matmul(state, instr):
    if state.tile is None:
        raise me_state_fault()
    k, n = state.tile
    m = instr["m"]
    yield Access("sram", instr["a"], m, k, instr["a_stride"], False)
    out = (instr["out"], m, 4 * n, instr["out_stride"])
    if instr["acc"]:
        yield Access("sram", *out, False)
    yield Access("sram", *out, True)


def _ve_shape(state, instr):
    state.rows = instr["rows"]
    state.dst_stride, state.src1_stride, state.src2_stride = instr["dst_stride"], instr["src1_stride"], instr["src2_stride"]
    state.src2_row = instr["src2_row"]
    yield from ()


def _ve_setf(state, instr):
    yield from ()


def _source(state, addr, n, is_i8):
    return Access("sram", addr, state.rows, n * _ELEMENT_BYTES[bool(is_i8)], state.src1_stride, False)


def _second_source(state, addr, n, is_i8):
    columns = 1 if state.src2_row else n
    return Access("sram", addr, state.rows, columns * _ELEMENT_BYTES[bool(is_i8)], state.src2_stride, False)


def _destination(state, addr, n, is_i8):
    return Access("sram", addr, state.rows, n * _ELEMENT_BYTES[bool(is_i8)], state.dst_stride, True)


def _ve_binary(state, instr):
    n = instr["n"]
    yield _source(state, instr["src1"], n, instr["src1_i8"])
    yield _second_source(state, instr["src2"], n, instr["src2_i8"])
    yield _destination(state, instr["dst"], n, instr["dst_i8"])


def _ve_unary(state, instr):
    yield _source(state, instr["src"], instr["n"], instr["src_i8"])
    yield _destination(state, instr["dst"], instr["n"], instr["dst_i8"])


def _ve_fill(state, instr):
    yield _destination(state, instr["dst"], instr["n"], instr["dst_i8"])


def _ve_requant(state, instr):
    yield _source(state, instr["src"], instr["n"], False)
    yield _destination(state, instr["dst"], instr["n"], instr["dst_i8"])


def _ve_requantf(state, instr):
    yield _source(state, instr["src1"], instr["n"], False)
    yield _second_source(state, instr["src2"], instr["n"], False)
    yield _destination(state, instr["dst"], instr["n"], instr["dst_i8"])


def _ve_reduce(state, instr):
    yield _source(state, instr["src"], instr["n"], instr["src_i8"])
    yield _destination(state, instr["dst"], 1, False)


def _ve_lutload(state, instr):
    yield Access("sram", instr["src"], 1, LUT_BYTES, 0, False)
    state.lut = True


def _ve_lut(state, instr):
    if not state.lut:
        raise ve_state_fault()
    yield _source(state, instr["src"], instr["n"], True)
    yield _destination(state, instr["dst"], instr["n"], True)


def _ve_fma(state, instr):
    yield _source(state, instr["src1"], instr["n"], FmaSource(instr["src1_kind"]) in FMA_BYTE_SOURCES)
    if instr.mnemonic == "ve.fmav" or not instr["src2_zero"]:
        yield _second_source(state, instr["src2"], instr["n"], False)
    yield _destination(state, instr["dst"], instr["n"], FmaResult(instr["dst_kind"]) in FMA_BYTE_RESULTS)


_ACCESSES = {
    "dma.load": _dma, "dma.store": _dma, "dma.gather": _dma_gather,
    "me.loadw": _me_loadw, "me.matmul": _me_matmul,
    "ve.shape": _ve_shape, "ve.setf": _ve_setf,
    **{name: _ve_binary for name in ("ve.add", "ve.sub", "ve.mul", "ve.max", "ve.min")},
    "ve.relu": _ve_unary, "ve.copy": _ve_unary,
    "ve.fill": _ve_fill, "ve.requant": _ve_requant, "ve.requantf": _ve_requantf,
    "ve.redsum": _ve_reduce, "ve.redmax": _ve_reduce,
    "ve.lutload": _ve_lutload, "ve.lut": _ve_lut,
    "ve.fma": _ve_fma, "ve.fmav": _ve_fma,
}
