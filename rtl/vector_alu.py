"""Lane-parallel arithmetic of the vector engine (combinational).

Computes, for every lane, the VE instruction selected by its ISA opcode on int32 operands (int8
sources are sign-extended before they reach the ALU) and delivers the value to store: saturated to
int8 when ``dst_i8``, else wrapped (add/sub/mul) or saturated (requant) to int32 — the rules of the
golden model.
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from tcloud.isa.table import BY_MNEMONIC, LUT_BYTES, LUT_INDEX_BITS, EngineClass

from .decode import OPCODES

_REQUANT = BY_MNEMONIC["ve.requant"]
ELEMENTWISE_OPS = ("ve.add", "ve.sub", "ve.mul", "ve.max", "ve.min", "ve.relu", "ve.copy", "ve.fill",
                   "ve.requant", "ve.lut")
"""VE instructions the ALU evaluates lane by lane (``ve.fill`` passes its value in ``x``; the
reductions use ``ve.add``/``ve.max`` on partial results; ``ve.lut`` looks the low byte of ``x`` up
in ``table``)."""

_INT8 = (-128, 127)
_INT32 = (-(1 << 31), (1 << 31) - 1)


def _clamp(m, value, low, high, shape):
    out = Signal(shape)
    m.d.comb += out.eq(Mux(value < low, low, Mux(value > high, high, value)))
    return out


def requantize_lane(m, x, mult, shift, zp, dst_i8):
    """Add ``saturate(round_half_even(x*mult / 2**shift) + zp)`` to ``m``; return the int32 result."""
    product = Signal(signed(64))
    m.d.comb += product.eq(x * mult)
    floor = Signal(signed(64))
    m.d.comb += floor.eq(product >> shift)
    below = Signal(6)
    m.d.comb += below.eq(shift - 1)
    guard, sticky = Signal(), Signal()
    lower_bits = Signal(64)
    m.d.comb += [
        lower_bits.eq((Const(1, 64) << below)[:64] - 1),
        guard.eq((shift != 0) & (product >> below)[0]),
        sticky.eq((shift != 0) & ((product.as_unsigned() & lower_bits) != 0)),
    ]
    shifted = Signal(signed(66))
    m.d.comb += shifted.eq(floor + (guard & (sticky | floor[0])) + zp)
    result = Signal(signed(32))
    m.d.comb += result.eq(Mux(dst_i8, _clamp(m, shifted, *_INT8, signed(66)),
                              _clamp(m, shifted, *_INT32, signed(66))))
    return result


class VectorALU(wiring.Component):
    """``lanes`` int32 lanes evaluating one VE opcode.

    Parameters
    ----------
    lanes : int
        Number of lanes (``ArchConfig.ve_lanes``).

    Members
    -------
    opcode : In(8)
        ISA opcode of the instruction (one of :data:`ELEMENTWISE_OPS`).
    x, y : In(lanes × signed(32))
        Operands (``src1``/``src``, ``src2``); ``ve.fill`` takes its value in ``x``.
    mult, shift, zp : In
        ``ve.requant`` parameters.
    table : In(LUT_BYTES × 8)
        ``ve.lut``'s table (byte ``i``: the int8 result for an input whose low byte is ``i``); each lane
        selects its byte with a ``LUT_BYTES``:1 byte multiplexer.
    dst_i8 : In(1)
        Saturate results to int8.
    result : Out(lanes × signed(32))
    """

    def __init__(self, lanes):
        if not isinstance(lanes, int) or lanes < 1:
            self._MustUse__used = True  # rejected, not forgotten: no UnusedElaboratable warning
            raise ValueError(f"VectorALU lanes must be a positive integer, got {lanes!r}")
        self.lanes = lanes
        super().__init__({
            "opcode": In(8),
            "x": In(data.ArrayLayout(signed(32), lanes)),
            "y": In(data.ArrayLayout(signed(32), lanes)),
            "mult": In(unsigned(_REQUANT.field("mult").width)),
            "shift": In(unsigned(_REQUANT.field("shift").width)),
            "zp": In(signed(_REQUANT.field("zp").width)),
            "dst_i8": In(1),
            "table": In(data.ArrayLayout(8, LUT_BYTES)),
            "result": Out(data.ArrayLayout(signed(32), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        for lane in range(self.lanes):
            x, y = self.x[lane], self.y[lane]
            wide = Signal(signed(64), name=f"wide{lane}")
            with m.Switch(self.opcode):
                with m.Case(OPCODES["ve.add"]):
                    m.d.comb += wide.eq(x + y)
                with m.Case(OPCODES["ve.sub"]):
                    m.d.comb += wide.eq(x - y)
                with m.Case(OPCODES["ve.mul"]):
                    m.d.comb += wide.eq(x * y)
                with m.Case(OPCODES["ve.max"]):
                    m.d.comb += wide.eq(Mux(x > y, x, y))
                with m.Case(OPCODES["ve.min"]):
                    m.d.comb += wide.eq(Mux(x < y, x, y))
                with m.Case(OPCODES["ve.relu"]):
                    m.d.comb += wide.eq(Mux(x > 0, x, 0))
                with m.Case(OPCODES["ve.copy"], OPCODES["ve.fill"]):
                    m.d.comb += wide.eq(x)
                with m.Case(OPCODES["ve.lut"]):
                    m.d.comb += wide.eq(self.table[x[:LUT_INDEX_BITS]].as_signed())
                with m.Default():
                    m.d.comb += wide.eq(0)
            saturated = _clamp(m, wide, *_INT8, signed(64))
            elementwise = Mux(self.dst_i8, saturated, wide[:32].as_signed())
            requant = requantize_lane(m, x, self.mult, self.shift, self.zp, self.dst_i8)
            m.d.comb += self.result[lane].eq(Mux(self.opcode == OPCODES["ve.requant"], requant, elementwise))
        return m


def _check_ops():
    for name in ELEMENTWISE_OPS:
        assert BY_MNEMONIC[name].engine == EngineClass.VE, name


_check_ops()
