"""DMA engine: 2-D strided copies between HBM and the scratchpad."""

from amaranth.hdl import Mux, ResetInserter, Signal
from amaranth.lib import fifo

from tcloud.isa.cost import region_end
from tcloud.isa.table import EngineClass, FaultCode

from .decode import OPCODES
from .engine import Engine
from .hbm import port_words

STORE_BUFFER_BEATS = 4
"""Scratchpad beats a store reads ahead of the HBM: covers the read latency, so a store sends a
beat every cycle the HBM takes one."""


class DmaEngine(Engine):
    """Executes ``dma.load`` and ``dma.store`` in beats of ``beat`` words.

    Both regions are bounds-checked before the first byte moves (the region read first is checked
    first, as in the golden model). Either direction keeps up to ``ArchConfig.dma_outstanding`` HBM
    requests in flight, enough to cover the bandwidth-delay product, and moves a beat per cycle:
    loads write each response beat to the scratchpad as it arrives; stores read beats from the
    scratchpad into a :data:`STORE_BUFFER_BEATS`-deep buffer and send them from there while earlier
    writes are still being acknowledged.
    """

    engine_class = EngineClass.DMA

    def __init__(self, config):
        self.beat = min(port_words(config), config.sram_line_words)
        super().__init__(config)

    def execute(self, m, instr):
        op = instr.dma_load
        beat = self.beat
        is_load = instr.as_value()[:8] == OPCODES["dma.load"]
        hbm_ok = self.hbm_fits(region_end(op.hbm, op.rows, op.hbm_stride, op.row_bytes))
        sram_ok = self.sram_fits(region_end(op.sram, op.rows, op.sram_stride, op.row_bytes))
        issue_row, issue_offset = Signal(12, name="issue_row"), Signal(14, name="issue_offset")
        done_row, done_offset = Signal(12, name="done_row"), Signal(14, name="done_offset")
        read_row, read_offset = Signal(12, name="read_row"), Signal(14, name="read_offset")
        issue_finished, read_finished = Signal(), Signal()
        outstanding = self.config.dma_outstanding
        in_flight = Signal(range(outstanding + 1))
        reading = Signal()  # a scratchpad read was taken last cycle: its beat arrives now
        flush = Signal()
        m.submodules.store_buffer = store_buffer = ResetInserter(flush)(
            fifo.SyncFIFO(width=32 * beat, depth=STORE_BUFFER_BEATS))

        def count_at(offset):
            return Mux(op.row_bytes - offset < beat, op.row_bytes - offset, beat)

        def advance(row, offset, finished=None):
            step = count_at(offset)
            with m.If(offset + step < op.row_bytes):
                m.d.sync += offset.eq(offset + step)
            with m.Else():
                m.d.sync += [offset.eq(0), row.eq(row + 1)]
                if finished is not None:
                    with m.If(row + 1 == op.rows):
                        m.d.sync += finished.eq(1)

        issue_count, done_count = count_at(issue_offset), count_at(done_offset)
        hbm_at_issue = self.hbm_addr(op.hbm + issue_row * op.hbm_stride + issue_offset)
        sram_at_read = self.sram_addr(op.sram + read_row * op.sram_stride + read_offset)
        sram_at_done = self.sram_addr(op.sram + done_row * op.sram_stride + done_offset)
        last_done = (done_row + 1 == op.rows) & (done_offset + done_count >= op.row_bytes)

        with m.State("EXECUTE"):
            m.d.comb += self.busy.eq(1)
            m.d.comb += flush.eq(1)
            m.d.sync += [issue_row.eq(0), issue_offset.eq(0), done_row.eq(0), done_offset.eq(0), read_row.eq(0),
                         read_offset.eq(0), issue_finished.eq(0), read_finished.eq(0), in_flight.eq(0), reading.eq(0)]
            with m.If(is_load & ~hbm_ok):
                self.raise_fault(m, FaultCode.HBM_BOUNDS)
            with m.Elif(~sram_ok):
                self.raise_fault(m, FaultCode.SRAM_BOUNDS)
            with m.Elif(~hbm_ok):
                self.raise_fault(m, FaultCode.HBM_BOUNDS)
            with m.Elif(is_load):
                m.next = "DMA_LOAD"
            with m.Else():
                m.next = "DMA_STORE"

        with m.State("DMA_LOAD"):
            m.d.comb += self.busy.eq(1)
            issue = ~issue_finished & (in_flight < outstanding) & ~self._stop
            m.d.comb += [self.hbm.req.valid.eq(issue), self.hbm.req.payload.addr.eq(hbm_at_issue),
                         self.hbm.req.payload.count.eq(issue_count)]
            issued = issue & self.hbm.req.ready
            with m.If(issued):
                advance(issue_row, issue_offset, issue_finished)
            m.d.comb += [self.sram.valid.eq(self.hbm.rsp.valid), self.sram.we.eq(1), self.sram.addr.eq(sram_at_done),
                         self.hbm.rsp.ready.eq(self.sram.ready)]
            for lane in range(beat):
                m.d.comb += [self.sram.wdata[lane].eq(self.hbm.rsp.payload.rdata[lane]),
                             self.sram.wmask[lane].eq(Mux(lane < done_count, 0b1111, 0))]
            retired = self.hbm.rsp.valid & self.sram.ready
            m.d.sync += in_flight.eq(in_flight + issued - retired)
            with m.If(retired):
                m.d.comb += self.count_hbm_read.eq(done_count * 4)
                advance(done_row, done_offset)
                with m.If(last_done):
                    m.next = "NEXT"
            with m.If(self._stop & (in_flight == 0)):
                self.end_aborted(m)

        with m.State("DMA_STORE"):
            m.d.comb += self.busy.eq(1)
            room = store_buffer.level + reading < STORE_BUFFER_BEATS
            read = ~read_finished & room & ~self._stop
            m.d.comb += [self.sram.valid.eq(read), self.sram.addr.eq(sram_at_read),
                         self.sram.words.eq(count_at(read_offset))]
            m.d.sync += reading.eq(read & self.sram.ready)
            with m.If(read & self.sram.ready):
                advance(read_row, read_offset, read_finished)
            m.d.comb += [store_buffer.w_en.eq(reading), store_buffer.w_data.eq(self.sram.rdata.as_value()[:32 * beat])]
            send = store_buffer.r_rdy & (in_flight < outstanding) & ~self._stop
            m.d.comb += [self.hbm.req.valid.eq(send), self.hbm.req.payload.write.eq(1),
                         self.hbm.req.payload.addr.eq(hbm_at_issue), self.hbm.req.payload.count.eq(issue_count),
                         self.hbm.req.payload.wdata.as_value().eq(store_buffer.r_data)]
            sent = send & self.hbm.req.ready
            m.d.comb += store_buffer.r_en.eq(sent)
            with m.If(sent):
                advance(issue_row, issue_offset, issue_finished)
            m.d.comb += self.hbm.rsp.ready.eq(1)
            acked = self.hbm.rsp.valid
            m.d.sync += in_flight.eq(in_flight + sent - acked)
            with m.If(acked):
                m.d.comb += self.count_hbm_write.eq(done_count * 4)
                advance(done_row, done_offset)
                with m.If(last_done):
                    m.next = "NEXT"
            with m.If(self._stop & (in_flight == 0) & ~reading):
                self.end_aborted(m)
