"""Matrix engine: ``me.loadw`` / ``me.matmul`` on a :class:`~tcloud.rtl.systolic.SystolicArray`."""

from amaranth.hdl import Mux, Signal, signed
from amaranth.lib import data

from tcloud.isa.table import EngineClass, FaultCode

from .decode import OPCODES
from .engine import Engine, region_end
from .systolic import SystolicArray


def _words(byte_count):
    return (byte_count + 3) >> 2


class MatrixEngine(Engine):
    """Executes matrix-engine uTOps on a ``me_rows × me_cols`` systolic array.

    ``me.loadw`` writes all ``me_rows`` weight rows of the array (zero outside the ``k × n`` tile)
    into the bank the next ``me.matmul`` uses. ``me.matmul`` streams the rows of A through the
    array and writes each int32 output row (after adding the old row when ``acc``). This first
    version handles one row at a time; the array's double buffering is in place for a pipelined
    controller.
    """

    engine_class = EngineClass.ME

    def __init__(self, config):
        if config.me_cols > config.sram_banks or config.me_rows > 4 * config.sram_banks:
            self._MustUse__used = True  # rejected, not forgotten: no UnusedElaboratable warning
            raise ValueError(f"a {config.me_rows}x{config.me_cols} array needs rows of up to "
                             f"{config.me_cols} words per scratchpad access, which has "
                             f"{config.sram_banks}")
        super().__init__(config)

    def on_start(self, m):
        m.d.sync += self._have_weights.eq(0)

    def elaborate(self, platform):
        self._have_weights = Signal()
        m = super().elaborate(platform)
        m.submodules.array = self._array
        return m

    def execute(self, m, instr):
        cfg = self.config
        rows, cols = cfg.me_rows, cfg.me_cols
        self._array = array = SystolicArray(rows, cols)
        opcode = instr.as_value()[:8]
        lw, mm = instr.me_loadw, instr.me_matmul
        k, n = Signal(8), Signal(8)
        bank = Signal()
        row = Signal(12)
        result = Signal(data.ArrayLayout(signed(32), cols))
        line = self.sram.rdata.as_value()

        with m.State("EXECUTE"):
            m.d.comb += self.busy.eq(1)
            m.d.sync += row.eq(0)
            with m.If(opcode == OPCODES["me.loadw"]):
                with m.If((lw.k > rows) | (lw.n > cols)):
                    self.raise_fault(m, FaultCode.ILLEGAL_FIELD)
                with m.Elif(~self.sram_fits(region_end(lw.w, lw.k, lw.w_stride, _words(lw.n)))):
                    self.raise_fault(m, FaultCode.SRAM_BOUNDS)
                with m.Else():
                    m.d.sync += [k.eq(lw.k), n.eq(lw.n), bank.eq(~bank)]
                    m.next = "ME_LOAD_ROW"
            with m.Else():
                with m.If(~self._have_weights):
                    self.raise_fault(m, FaultCode.ME_STATE)
                with m.Elif(~self.sram_fits(region_end(mm.a, mm.m, mm.a_stride, _words(k)))):
                    self.raise_fault(m, FaultCode.SRAM_BOUNDS)
                with m.Elif(~self.sram_fits(region_end(mm.out, mm.m, mm.out_stride, n))):
                    self.raise_fault(m, FaultCode.SRAM_BOUNDS)
                with m.Else():
                    m.next = "ME_READ_A"

        with m.State("ME_LOAD_ROW"):
            m.d.comb += self.busy.eq(1)
            with m.If(row < k):
                m.d.comb += [self.sram.valid.eq(1), self.sram.addr.eq(self.sram_addr(lw.w + row * lw.w_stride))]
                with m.If(self.sram.ready):
                    m.next = "ME_LOAD_WAIT"
            with m.Else():
                m.d.comb += [array.w_we.eq(1), array.w_bank.eq(bank), array.w_row.eq(row[:max(1, (rows - 1).bit_length())])]
                self._next_weight_row(m, row, rows)
        with m.State("ME_LOAD_WAIT"):
            m.d.comb += self.busy.eq(1)
            with m.If(self.sram.rvalid):
                m.d.comb += [array.w_we.eq(1), array.w_bank.eq(bank), array.w_row.eq(row[:max(1, (rows - 1).bit_length())])]
                for c in range(cols):
                    m.d.comb += array.w_data[c].eq(Mux(c < n, line[8 * c:8 * c + 8], 0))
                self._next_weight_row(m, row, rows)

        with m.State("ME_READ_A"):
            m.d.comb += [self.busy.eq(1), self.sram.valid.eq(1),
                         self.sram.addr.eq(self.sram_addr(mm.a + row * mm.a_stride))]
            with m.If(self.sram.ready):
                m.next = "ME_FEED"
        with m.State("ME_FEED"):
            m.d.comb += self.busy.eq(1)
            with m.If(self.sram.rvalid):
                m.d.comb += [array.in_valid.eq(1), array.in_bank.eq(bank)]
                for r in range(rows):
                    m.d.comb += array.in_data[r].eq(Mux(r < k, line[8 * r:8 * r + 8], 0))
                m.next = "ME_DRAIN"
        with m.State("ME_DRAIN"):
            m.d.comb += self.busy.eq(1)
            with m.If(array.out_valid):
                m.d.sync += result.eq(array.out_data)
                with m.If(mm.acc):
                    m.next = "ME_READ_OLD"
                with m.Else():
                    m.next = "ME_WRITE"
        with m.State("ME_READ_OLD"):
            m.d.comb += [self.busy.eq(1), self.sram.valid.eq(1),
                         self.sram.addr.eq(self.sram_addr(mm.out + row * mm.out_stride))]
            with m.If(self.sram.ready):
                m.next = "ME_ADD_OLD"
        with m.State("ME_ADD_OLD"):
            m.d.comb += self.busy.eq(1)
            with m.If(self.sram.rvalid):
                for c in range(cols):
                    m.d.sync += result[c].eq(result[c] + self.sram.rdata[c].as_signed())
                m.next = "ME_WRITE"
        with m.State("ME_WRITE"):
            m.d.comb += [self.busy.eq(1), self.sram.valid.eq(1), self.sram.we.eq(1),
                         self.sram.addr.eq(self.sram_addr(mm.out + row * mm.out_stride))]
            for c in range(cols):
                m.d.comb += [self.sram.wdata[c].eq(result[c]), self.sram.wmask[c].eq(Mux(c < n, 0b1111, 0))]
            with m.If(self.sram.ready):
                m.d.comb += self.count_macs.eq(k * n)
                m.d.sync += row.eq(row + 1)
                with m.If(row + 1 == mm.m):
                    m.next = "NEXT"
                with m.Else():
                    m.next = "ME_READ_A"

    def _next_weight_row(self, m, row, rows):
        m.d.sync += row.eq(row + 1)
        with m.If(row + 1 == rows):
            m.d.sync += self._have_weights.eq(1)
            m.next = "NEXT"
        with m.Else():
            m.next = "ME_LOAD_ROW"
