"""Weight-stationary int8 systolic array with double-buffered weights."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
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

        # Weights: one register of ``cols`` bytes per (row, bank); a weight write replaces a whole row.
        weights = [[Signal(8 * cols, name=f"w{b}_row{r}", reset_less=True) for b in range(2)] for r in range(rows)]
        for r in range(rows):
            for b in range(2):
                with m.If(self.w_we & (self.w_row == r) & (self.w_bank == b)):
                    m.d.sync += weights[r][b].eq(self.w_data.as_value())

        # Operands: row r of the array sees input element r after r cycles of skew, and each PE
        # passes it one column right per cycle, so PE (r, c) holds the element that entered r + c
        # cycles ago. Row r's skew and systolic registers form one byte-wide pipeline of
        # r + cols - 1 stages; PE (r, c) reads stage r + c - 1 (the raw input when r + c = 0).
        def operand(r, c):
            if r + c == 0:
                return self.in_data[0]
            return pipes[r][8 * (r + c - 1):8 * (r + c)].as_signed()

        pipes = []
        for r in range(rows):
            stages = r + cols - 1
            pipe = Signal(max(8 * stages, 1), name=f"operands{r}", reset_less=True)
            if stages:
                m.d.sync += pipe.eq(Cat(self.in_data[r], pipe[:8 * (stages - 1)]))
            pipes.append(pipe)

        # The weight-bank bit of an input row travels with it, so PE (r, c) uses the bank of the row
        # that entered r + c cycles ago: one bit per anti-diagonal.
        diagonals = rows + cols - 1
        banks = Signal(max(diagonals - 1, 1), name="diagonal_banks", reset_less=True)
        if diagonals > 1:
            m.d.sync += banks.eq(Cat(self.in_bank, banks[:diagonals - 2]))

        def bank_of(d):
            return self.in_bank if d == 0 else banks[d - 1]

        # PE grid: partial sums move down, one register per PE.
        above = [Const(0, signed(ACC_BITS))] * cols
        for r in range(rows):
            for c in range(cols):
                word = Mux(bank_of(r + c), weights[r][1], weights[r][0])
                weight = word[8 * c:8 * c + 8].as_signed()
                # The factors sign-extended to ACC_BITS, and the product taken modulo 2 ** ACC_BITS: the
                # same sum as above[c] + operand * weight, in the word width a simulator computes in.
                factors = [Signal(signed(ACC_BITS), name=f"{kind}_{r}_{c}") for kind in ("a", "w")]
                m.d.comb += [factors[0].eq(operand(r, c)), factors[1].eq(weight)]
                psum = Signal(signed(ACC_BITS), name=f"psum_{r}_{c}", reset_less=True)
                m.d.sync += psum.eq(above[c] + (factors[0] * factors[1])[:ACC_BITS].as_signed())
                above[c] = psum

        # De-skew: column c finishes c cycles after column 0; delay it by cols-1-c.
        for c in range(cols):
            value = above[c]
            for stage in range(cols - 1 - c):
                delayed = Signal(signed(ACC_BITS), name=f"deskew_{c}_{stage}", reset_less=True)
                m.d.sync += delayed.eq(value)
                value = delayed
            m.d.comb += self.out_data[c].eq(value)

        valid = Signal(self.latency, name="valid_pipe")
        m.d.sync += valid.eq(Cat(self.in_valid, valid[:-1]))
        m.d.comb += self.out_valid.eq(valid[-1])
        return m
