"""DMA engine: 2-D strided copies between HBM and the scratchpad, and gathers of table rows."""

from amaranth.hdl import Mux, ResetInserter, Signal
from amaranth.lib import fifo

from tcloud.isa.cost import overlap, region_end
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

    ``dma.gather`` makes two passes over its index vector through the engine's scratchpad port: the
    first checks every index against the HBM window (so a bad index faults before any byte is
    written), the second reads each index again, checks it again (a racing writer of the vector
    cannot slip an unchecked row past the first pass) and requests that row's beats, which retire as
    a load's do. Response writes have the port before index reads.
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

        gather = instr.dma_gather
        is_gather = instr.as_value()[:8] == OPCODES["dma.gather"]
        gather_dst_end = region_end(gather.sram, gather.rows, gather.sram_stride, gather.row_bytes)
        gather_sram_ok = self.sram_fits(gather.idx + gather.rows) & self.sram_fits(gather_dst_end)
        gather_overlap = overlap(gather.idx, gather.idx + gather.rows, gather.sram, gather_dst_end)
        index = self.sram.rdata[0].as_signed()  # the index a read of the last cycle returns
        index_ok = (index >= 0) & self.hbm_fits(gather.hbm + (index.as_unsigned()[:31] + 1) * gather.row_bytes)
        checked_row = Signal(12, name="checked_row")
        bad_index = Signal()
        row_base = Signal(len(self._hbm_size), name="gather_row_base")  # context-relative word of the issue row
        row_ready = Signal()  # row_base holds the index of issue_row
        gather_at_done = self.sram_addr(gather.sram + done_row * gather.sram_stride + done_offset)
        index_read = self.sram.valid & ~self.sram.we & self.sram.ready

        def write_response(at):
            """Offer the HBM response beat to the scratchpad at word ``at`` (taken when the port is)."""
            m.d.comb += [self.sram.valid.eq(self.hbm.rsp.valid), self.sram.we.eq(1), self.sram.addr.eq(at),
                         self.hbm.rsp.ready.eq(self.sram.ready)]
            for lane in range(beat):
                m.d.comb += [self.sram.wdata[lane].eq(self.hbm.rsp.payload.rdata[lane]),
                             self.sram.wmask[lane].eq(Mux(lane < done_count, 0b1111, 0))]

        def retire_responses(issued):
            """Count the requests issued and the response beats written; the last one ends the instruction."""
            retired = self.hbm.rsp.valid & self.sram.ready
            m.d.sync += in_flight.eq(in_flight + issued - retired)
            with m.If(retired):
                m.d.comb += self.count_hbm_read.eq(done_count * 4)
                advance(done_row, done_offset)
                with m.If(last_done):
                    m.next = "NEXT"

        with m.State("EXECUTE"):
            m.d.comb += self.busy.eq(1)
            m.d.comb += flush.eq(1)
            m.d.sync += [issue_row.eq(0), issue_offset.eq(0), done_row.eq(0), done_offset.eq(0), read_row.eq(0),
                         read_offset.eq(0), issue_finished.eq(0), read_finished.eq(0), in_flight.eq(0), reading.eq(0),
                         checked_row.eq(0), bad_index.eq(0), row_ready.eq(0)]
            with m.If(is_load & ~hbm_ok):
                self.raise_fault(m, FaultCode.HBM_BOUNDS)
            with m.Elif(is_gather):
                with m.If(~gather_sram_ok):
                    self.raise_fault(m, FaultCode.SRAM_BOUNDS)
                with m.Elif(gather_overlap):
                    self.raise_fault(m, FaultCode.ILLEGAL_FIELD)
                with m.Else():
                    m.next = "GATHER_CHECK"
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
            write_response(sram_at_done)
            retire_responses(issued)
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

        with m.State("GATHER_CHECK"):  # read every index, one a cycle, and check it
            m.d.comb += self.busy.eq(1)
            m.d.comb += [self.sram.valid.eq((read_row != gather.rows) & ~bad_index & ~self._stop),
                         self.sram.addr.eq(self.sram_addr(gather.idx + read_row)), self.sram.words.eq(1)]
            with m.If(index_read):
                m.d.sync += read_row.eq(read_row + 1)
            with m.If(self.sram.rvalid):
                m.d.sync += checked_row.eq(checked_row + 1)
                with m.If(~index_ok):
                    m.d.sync += bad_index.eq(1)
            with m.If(~self.sram.rvalid):
                with m.If(bad_index):
                    self.raise_fault(m, FaultCode.HBM_BOUNDS)
                with m.Elif(self._stop):
                    self.end_aborted(m)
                with m.Elif(checked_row == gather.rows):
                    m.next = "GATHER_COPY"

        with m.State("GATHER_COPY"):  # read each index again, check it again, request its row
            m.d.comb += self.busy.eq(1)
            issue = row_ready & ~issue_finished & (in_flight < outstanding) & ~self._stop
            m.d.comb += [self.hbm.req.valid.eq(issue), self.hbm.req.payload.addr.eq(self.hbm_addr(row_base + issue_offset)),
                         self.hbm.req.payload.count.eq(issue_count)]
            issued = issue & self.hbm.req.ready
            with m.If(issued):
                advance(issue_row, issue_offset, issue_finished)
                with m.If(issue_offset + issue_count >= gather.row_bytes):
                    m.d.sync += row_ready.eq(0)
            want_index = ~row_ready & ~issue_finished & ~self.sram.rvalid & ~bad_index & ~self._stop
            with m.If(self.hbm.rsp.valid):
                write_response(gather_at_done)
            with m.Elif(want_index):
                m.d.comb += [self.sram.valid.eq(1), self.sram.addr.eq(self.sram_addr(gather.idx + issue_row)),
                             self.sram.words.eq(1)]
            with m.If(self.sram.rvalid):
                with m.If(index_ok):
                    m.d.sync += [row_base.eq(gather.hbm + index.as_unsigned()[:31] * gather.row_bytes), row_ready.eq(1)]
                with m.Else():
                    m.d.sync += bad_index.eq(1)
            retire_responses(issued)
            with m.If((in_flight == 0) & ~self.sram.rvalid):
                with m.If(bad_index):
                    self.raise_fault(m, FaultCode.HBM_BOUNDS)
                with m.Elif(self._stop):
                    self.end_aborted(m)
