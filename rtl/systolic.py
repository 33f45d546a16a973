"""Weight-stationary int8 systolic array with double-buffered weights."""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

ACC_BITS = 32


class SystolicArray(wiring.Component):
    """``rows × cols`` processing elements computing ``out[j] = Σ_r a[r] · W[r][j]`` (int32).

    Every PE holds two weights (banks 0 and 1). An input row enters with a bank bit that travels
    with it through the array, so the next tile's weights can be written into the other bank while
    the current tile's rows are still in flight: weight loads never stall the input stream.

    Input rows are skewed on entry (row ``r`` of the array sees element ``r`` ``r`` cycles later)
    and the output columns are de-skewed, so each cycle accepts one input row and, ``latency``
    cycles later, presents one complete output row. Rows/columns a tile does not use must hold zero
    weights; then partial tiles (``k < rows``, ``n < cols``) need no padding of the data.

    Parameters
    ----------
    rows : int
        Reduction depth (``ArchConfig.me_rows``).
    cols : int
        Output columns (``ArchConfig.me_cols``).

    Attributes
    ----------
    latency : int
        Cycles from ``in_valid`` to the matching ``out_valid`` (``rows + cols - 1``).
    bank_free_delay : int
        A bank may be reloaded, one weight row per cycle from row 0 upwards, starting this many
        cycles after the cycle of the last input row that uses it (``cols - 1``): row ``r`` is then
        written just after that input row has passed the PEs of array row ``r``.

    Members
    -------
    w_we, w_bank, w_row, w_data : In
        Write one row of weights (``cols`` int8) into one bank.
    in_valid, in_bank, in_data : In
        One input row (``rows`` int8) and the weight bank it uses.
    out_valid, out_data : Out
        One output row (``cols`` int32).
    """

    def __init__(self, rows, cols):
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int) or value < 1:
                self._MustUse__used = True  # rejected, not forgotten: no UnusedElaboratable warning
                raise ValueError(f"SystolicArray {name} must be a positive integer, got {value!r}")
        self.rows, self.cols = rows, cols
        self.latency = rows + cols - 1
        self.bank_free_delay = cols - 1
        super().__init__({
            "w_we": In(1),
            "w_bank": In(1),
            "w_row": In(range(rows)),
            "w_data": In(data.ArrayLayout(signed(8), cols)),
            "in_valid": In(1),
            "in_bank": In(1),
            "in_data": In(data.ArrayLayout(signed(8), rows)),
            "out_valid": Out(1),
            "out_data": Out(data.ArrayLayout(signed(ACC_BITS), cols)),
        })

    def elaborate(self, platform):
        m = Module()
        rows, cols = self.rows, self.cols

        weights = [[[Signal(signed(8), name=f"w{b}_{r}_{c}") for b in range(2)] for c in range(cols)]
                   for r in range(rows)]
        with m.If(self.w_we):
            for r in range(rows):
                with m.If(self.w_row == r):
                    for c in range(cols):
                        for b in range(2):
                            with m.If(self.w_bank == b):
                                m.d.sync += weights[r][c][b].eq(self.w_data[c])

        # Skew: row r of the array receives input element r (and its bank bit) r cycles late.
        left = []
        for r in range(rows):
            a, bank = self.in_data[r], self.in_bank
            for stage in range(r):
                a_next = Signal(signed(8), name=f"skew_a{r}_{stage}")
                bank_next = Signal(name=f"skew_b{r}_{stage}")
                m.d.sync += [a_next.eq(a), bank_next.eq(bank)]
                a, bank = a_next, bank_next
            left.append((a, bank))

        # PE grid: operands move right, partial sums move down, one register each per PE.
        above = [Const(0, signed(ACC_BITS))] * cols
        for r in range(rows):
            a, bank = left[r]
            for c in range(cols):
                weight = Signal(signed(8), name=f"wsel_{r}_{c}")
                m.d.comb += weight.eq(Mux(bank, weights[r][c][1], weights[r][c][0]))
                psum = Signal(signed(ACC_BITS), name=f"psum_{r}_{c}")
                m.d.sync += psum.eq(above[c] + a * weight)
                above[c] = psum
                a_right = Signal(signed(8), name=f"a_{r}_{c}")
                bank_right = Signal(name=f"b_{r}_{c}")
                m.d.sync += [a_right.eq(a), bank_right.eq(bank)]
                a, bank = a_right, bank_right

        # De-skew: column c finishes c cycles after column 0; delay it by cols-1-c.
        for c in range(cols):
            value = above[c]
            for stage in range(cols - 1 - c):
                delayed = Signal(signed(ACC_BITS), name=f"deskew_{c}_{stage}")
                m.d.sync += delayed.eq(value)
                value = delayed
            m.d.comb += self.out_data[c].eq(value)

        valid = self.in_valid
        for stage in range(self.latency):
            delayed = Signal(name=f"valid_{stage}")
            m.d.sync += delayed.eq(valid)
            valid = delayed
        m.d.comb += self.out_valid.eq(valid)
        return m
