"""DMA engine: 2-D strided copies between HBM and the scratchpad."""

from amaranth.hdl import Mux, Signal
from amaranth.lib import data

from tcloud.isa.table import EngineClass, FaultCode

from .decode import OPCODES
from .engine import Engine, region_end
from .hbm import port_words


class DmaEngine(Engine):
    """Executes ``dma.load`` and ``dma.store`` row by row, ``beat`` words per transfer.

    Both regions are bounds-checked before the first byte moves (the region read first is checked
    first, as in the golden model). Each beat is one HBM request and one scratchpad access.
    """

    engine_class = EngineClass.DMA

    def __init__(self, config):
        self.beat = min(port_words(config), config.sram_banks)
        super().__init__(config)

    def execute(self, m, instr):
        op = instr.dma_load
        beat = self.beat
        row = Signal(12)
        offset = Signal(14)
        buffer = Signal(data.ArrayLayout(32, beat))
        is_load = instr.as_value()[:8] == OPCODES["dma.load"]
        count = Signal(range(beat + 1))
        m.d.comb += count.eq(Mux(op.row_bytes - offset < beat, op.row_bytes - offset, beat))
        hbm_at = self.hbm_addr(op.hbm + row * op.hbm_stride + offset)
        sram_at = self.sram_addr(op.sram + row * op.sram_stride + offset)
        hbm_ok = self.hbm_fits(region_end(op.hbm, op.rows, op.hbm_stride, op.row_bytes))
        sram_ok = self.sram_fits(region_end(op.sram, op.rows, op.sram_stride, op.row_bytes))

        with m.State("EXECUTE"):
            m.d.comb += self.busy.eq(1)
            m.d.sync += [row.eq(0), offset.eq(0)]
            with m.If(is_load & ~hbm_ok):
                self.raise_fault(m, FaultCode.HBM_BOUNDS)
            with m.Elif(~sram_ok):
                self.raise_fault(m, FaultCode.SRAM_BOUNDS)
            with m.Elif(~hbm_ok):
                self.raise_fault(m, FaultCode.HBM_BOUNDS)
            with m.Elif(is_load):
                m.next = "DMA_HBM_READ"
            with m.Else():
                m.next = "DMA_SRAM_READ"

        with m.State("DMA_HBM_READ"):
            m.d.comb += [self.busy.eq(1), self.hbm.req.valid.eq(1), self.hbm.req.payload.addr.eq(hbm_at),
                         self.hbm.req.payload.count.eq(count)]
            with m.If(self.hbm.req.ready):
                m.next = "DMA_HBM_READ_WAIT"
        with m.State("DMA_HBM_READ_WAIT"):
            m.d.comb += [self.busy.eq(1), self.hbm.rsp.ready.eq(1)]
            with m.If(self.hbm.rsp.valid):
                m.d.sync += buffer.eq(self.hbm.rsp.payload.rdata.as_value()[:32 * beat])
                m.d.comb += self.count_hbm_read.eq(count * 4)
                m.next = "DMA_SRAM_WRITE"
        with m.State("DMA_SRAM_WRITE"):
            m.d.comb += [self.busy.eq(1), self.sram.valid.eq(1), self.sram.we.eq(1), self.sram.addr.eq(sram_at)]
            for lane in range(beat):
                m.d.comb += [self.sram.wdata[lane].eq(buffer[lane]),
                             self.sram.wmask[lane].eq(Mux(lane < count, 0b1111, 0))]
            with m.If(self.sram.ready):
                self._advance(m, op, row, offset, count, "DMA_HBM_READ")

        with m.State("DMA_SRAM_READ"):
            m.d.comb += [self.busy.eq(1), self.sram.valid.eq(1), self.sram.addr.eq(sram_at)]
            with m.If(self.sram.ready):
                m.next = "DMA_SRAM_READ_WAIT"
        with m.State("DMA_SRAM_READ_WAIT"):
            m.d.comb += self.busy.eq(1)
            with m.If(self.sram.rvalid):
                m.d.sync += buffer.eq(self.sram.rdata.as_value()[:32 * beat])
                m.next = "DMA_HBM_WRITE"
        with m.State("DMA_HBM_WRITE"):
            m.d.comb += [self.busy.eq(1), self.hbm.req.valid.eq(1), self.hbm.req.payload.addr.eq(hbm_at),
                         self.hbm.req.payload.count.eq(count), self.hbm.req.payload.write.eq(1)]
            for lane in range(beat):
                m.d.comb += self.hbm.req.payload.wdata[lane].eq(buffer[lane])
            with m.If(self.hbm.req.ready):
                m.next = "DMA_HBM_WRITE_WAIT"
        with m.State("DMA_HBM_WRITE_WAIT"):
            m.d.comb += [self.busy.eq(1), self.hbm.rsp.ready.eq(1)]
            with m.If(self.hbm.rsp.valid):
                m.d.comb += self.count_hbm_write.eq(count * 4)
                self._advance(m, op, row, offset, count, "DMA_SRAM_READ")

    @staticmethod
    def _advance(m, op, row, offset, count, again):
        with m.If(offset + count < op.row_bytes):
            m.d.sync += offset.eq(offset + count)
            m.next = again
        with m.Elif(row + 1 < op.rows):
            m.d.sync += [offset.eq(0), row.eq(row + 1)]
            m.next = again
        with m.Else():
            m.next = "NEXT"
