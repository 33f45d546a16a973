"""Lane-parallel arithmetic of the vector engine (combinational).

Computes, for every lane, the VE instruction selected by its ISA opcode on int32 operands (int8
sources are sign-extended before they reach the ALU) and delivers the value to store: saturated to
int8 when ``dst_i8``, else wrapped (add/sub/mul) or saturated (requant) to int32 — the rules of the
golden model.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from tcloud.isa.table import (BY_MNEMONIC, LUT_BYTES, LUT_INDEX_BITS, SCALE_EXPONENT_BIAS, SCALE_EXPONENT_BITS,
                              SCALE_FRACTION_BITS, EngineClass)

from .decode import OPCODES

_REQUANT = BY_MNEMONIC["ve.requant"]
ELEMENTWISE_OPS = ("ve.add", "ve.sub", "ve.mul", "ve.max", "ve.min", "ve.relu", "ve.copy", "ve.fill",
                   "ve.requant", "ve.requantf", "ve.lut")
"""VE instructions the ALU evaluates lane by lane (``ve.fill`` passes its value in ``x``; the
reductions use ``ve.add``/``ve.max`` on partial results; ``ve.lut`` looks the low byte of ``x`` up
in ``table``)."""

_INT8 = (-128, 127)
_INT32 = (-(1 << 31), (1 << 31) - 1)
_ACC_BITS = 32
_SIG_BITS = SCALE_FRACTION_BITS + 1
"""Significant bits of a binary32 value: ``ve.requantf`` rounds to this many twice."""
_LEFT_MAX = _ACC_BITS - _SIG_BITS
"""Largest left shift of the rounded product that can still fit int32; beyond it the result saturates."""
_RIGHT_MAX = _SIG_BITS + 1
"""A right shift this large rounds any rounded product (<= 2**24) to 0, as every larger one does."""


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


def _round_top(m, value, keep, name):
    """``value`` (unsigned) rounded half to even to its top ``keep`` bits; the result has one bit more
    (the rounding may carry out)."""
    drop = len(value) - keep
    top = value[drop:]
    out = Signal(keep + 1, name=name)
    m.d.comb += out.eq(top + (value[drop - 1] & ((value[:drop - 1] != 0) | top[0])))
    return out


def requantize_fp32_operands(m, x, lane):
    """First half of ``ve.requantf`` on one lane: ``|x|`` rounded to 24 significant bits.

    Returns ``(significand, leading_zeros)``: ``|x| ~ significand * 2**(8 - leading_zeros)`` with the
    significand in ``[2**23, 2**24]`` (0 when ``x`` is 0). The caller multiplies it by the scale's
    significand (sharing the lane's multiplier) and finishes with :func:`requantize_fp32_result`.
    """
    magnitude = Signal(_ACC_BITS, name=f"rqf_mag{lane}")
    m.d.comb += magnitude.eq(Mux(x < 0, (-x)[:_ACC_BITS], x.as_unsigned()))
    normal, zeros = magnitude, []
    step = 1 << (_ACC_BITS.bit_length() - 2)
    while step:  # normalise: shift left until bit 31 is set, counting the zeros shifted past
        is_zero = Signal(name=f"rqf_lz{step}_{lane}")
        shifted = Signal(_ACC_BITS, name=f"rqf_norm{step}_{lane}")
        m.d.comb += [is_zero.eq(normal[_ACC_BITS - step:] == 0),
                     shifted.eq(Mux(is_zero, Cat(Const(0, step), normal[:_ACC_BITS - step]), normal))]
        zeros.append(is_zero)
        normal, step = shifted, step >> 1
    leading_zeros = Signal(len(zeros), name=f"rqf_lz{lane}")
    m.d.comb += leading_zeros.eq(Cat(*reversed(zeros)))
    return _round_top(m, normal, _SIG_BITS, f"rqf_a{lane}"), leading_zeros


def scale_significand(word):
    """The significand (hidden bit set) of a binary32 scale word (exponent 0 needs none: its result is 0)."""
    return Cat(word[:SCALE_FRACTION_BITS], Const(1, 1))


def requantize_fp32_result(m, product, leading_zeros, word, x_negative, zp, dst_i8, lane):
    """Second half of ``ve.requantf``: round ``product`` (significands, < 2**48) to 24 significant bits,
    scale it by the word's exponent with rounding half to even, sign it, add ``zp``, saturate."""
    p = product[:2 * _SIG_BITS]
    top = p[-1]  # both significands are normal: the product has 47 or 48 bits
    high = _round_top(m, p, _SIG_BITS, f"rqf_ph{lane}")
    low = _round_top(m, p[:-1], _SIG_BITS, f"rqf_pl{lane}")
    rounded = Signal(_SIG_BITS + 1, name=f"rqf_p{lane}")
    m.d.comb += rounded.eq(Mux(top, high, low))
    exponent = word[SCALE_FRACTION_BITS:SCALE_FRACTION_BITS + SCALE_EXPONENT_BITS]
    # |x| * scale ~ rounded * 2**-right with right = bias + fraction bits + 1 - 32 + lz - top - exponent
    right_value = SCALE_EXPONENT_BIAS + SCALE_FRACTION_BITS + 1 - _ACC_BITS + leading_zeros - top - exponent
    right = Signal(right_value.shape(), name=f"rqf_right{lane}")
    m.d.comb += right.eq(right_value)
    amount = Signal(range(_LEFT_MAX + _RIGHT_MAX + 1), name=f"rqf_shift{lane}")
    m.d.comb += amount.eq(Mux(right > _RIGHT_MAX, _LEFT_MAX + _RIGHT_MAX,
                              Mux(right < -_LEFT_MAX, 0, (right + _LEFT_MAX)[:len(amount)])))
    shifted = Signal(_SIG_BITS + 1 + _LEFT_MAX + _RIGHT_MAX, name=f"rqf_shifted{lane}")
    m.d.comb += shifted.eq(Cat(Const(0, _LEFT_MAX + _RIGHT_MAX), rounded) >> amount)
    whole = shifted[_RIGHT_MAX:]
    guard, sticky = shifted[_RIGHT_MAX - 1], shifted[:_RIGHT_MAX - 1] != 0
    far = 1 << (_ACC_BITS + 1)  # saturates like any larger magnitude, whatever zp
    magnitude = Signal(range(far + 1), name=f"rqf_q{lane}")
    m.d.comb += magnitude.eq(Mux((right < -_LEFT_MAX) & (rounded != 0), far,
                                 whole + (guard & (sticky | whole[0]))))
    value = Signal(signed(len(magnitude) + 2), name=f"rqf_value{lane}")
    m.d.comb += value.eq(Mux(x_negative ^ word[-1], -magnitude, magnitude) + zp)
    result = Signal(signed(_ACC_BITS), name=f"rqf_result{lane}")
    m.d.comb += result.eq(Mux(dst_i8, _clamp(m, value, *_INT8, value.shape()),
                              _clamp(m, value, *_INT32, value.shape())))
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
    mult, shift : In
        ``ve.requant`` parameters.
    zp : In
        Zero point of ``ve.requant`` and ``ve.requantf`` (which takes its scale words in ``y``).
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
        is_requantf = self.opcode == OPCODES["ve.requantf"]
        for lane in range(self.lanes):
            x, y = self.x[lane], self.y[lane]
            # one multiplier per lane: ve.mul's x*y, or ve.requantf's product of significands
            significand, leading_zeros = requantize_fp32_operands(m, x, lane)
            factor_x, factor_y = Signal(signed(32), name=f"mul_x{lane}"), Signal(signed(32), name=f"mul_y{lane}")
            product = Signal(signed(64), name=f"product{lane}")
            m.d.comb += [factor_x.eq(Mux(is_requantf, significand, x)),
                         factor_y.eq(Mux(is_requantf, scale_significand(y), y)),
                         product.eq(factor_x * factor_y)]
            wide = Signal(signed(64), name=f"wide{lane}")
            with m.Switch(self.opcode):
                with m.Case(OPCODES["ve.add"]):
                    m.d.comb += wide.eq(x + y)
                with m.Case(OPCODES["ve.sub"]):
                    m.d.comb += wide.eq(x - y)
                with m.Case(OPCODES["ve.mul"]):
                    m.d.comb += wide.eq(product)
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
            requantf = requantize_fp32_result(m, product.as_unsigned(), leading_zeros, y, x < 0, self.zp, self.dst_i8,
                                              lane)
            m.d.comb += self.result[lane].eq(Mux(self.opcode == OPCODES["ve.requant"], requant,
                                                 Mux(is_requantf, requantf, elementwise)))
        return m


def _check_ops():
    for name in ELEMENTWISE_OPS:
        assert BY_MNEMONIC[name].engine == EngineClass.VE, name


_check_ops()
