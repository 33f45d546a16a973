"""Matrix engine: ``me.loadw`` / ``me.matmul`` on a :class:`~tcloud.rtl.systolic.SystolicArray`."""

from amaranth.hdl import Mux, Signal, signed
from amaranth.lib import data, memory
from amaranth.lib.wiring import Out

from tcloud.isa.errors import ConfigError
from tcloud.isa.table import BY_MNEMONIC, EngineClass, FaultCode

from .decode import INSTRUCTION_LAYOUT, OPCODES, add_decoder
from tcloud.isa.cost import overlap, region_end
from tcloud.isa.cost import words as _words

from .engine import Engine
from .scratchpad import sram_port_signature
from .systolic import SystolicArray

ACC_ROWS = BY_MNEMONIC["me.matmul"].field("m").encoded_max + 1
"""Rows of the engine's local accumulator memory: enough for the largest ``m`` of one matmul."""


def end_signal(m, end, name):
    """A signal wide enough for the region end ``end`` (never truncated), driven by it."""
    signal = Signal(end.shape(), name=name)
    m.d.comb += signal.eq(end)
    return signal


class MatrixEngine(Engine):
    """Executes matrix-engine uTOps on a ``me_rows × me_cols`` systolic array.

    ``me.loadw`` writes all ``me_rows`` weight rows of the array (zero outside the ``k × n`` tile).
    ``me.matmul`` streams one row of A per cycle through the array and accumulates each int32 output
    row into a local accumulator memory. The result stays there while the following matmuls of the
    same uTOp accumulate into the same region (same ``out``, ``out_stride``, ``m`` and ``n``); it is
    written back to the scratchpad when the region changes and before the uTOp completes. This is
    invisible to race-free programs (no other uTOp may touch the region meanwhile) and saves a read
    and a write of every output row per matmul. A matmul with ``acc`` into a new region first loads
    the old rows from the scratchpad.

    Within the uTOp the engine honours the ISA's sequential semantics: a ``me.matmul`` whose A, or
    a ``me.loadw`` whose W, overlaps the region held locally (compared as word intervals from the
    first to one past the last word) first writes that region back, and the weight loader does not
    run ahead into a ``me.loadw`` whose W overlaps the output of the matmul streaming meanwhile.
    """

    engine_class = EngineClass.ME
    prefetch = True

    def __init__(self, config):
        if config.me_cols > config.sram_line_words or config.me_rows > 4 * config.sram_line_words:
            self._MustUse__used = True  # rejected, not forgotten: no UnusedElaboratable warning
            raise ConfigError(f"a {config.me_rows}x{config.me_cols} array (me_rows, me_cols) needs rows of up "
                              f"to {config.me_cols} words per scratchpad access, and sram_line_words is "
                              f"{config.sram_line_words}")
        super().__init__(config)

    def extra_members(self, config):
        return {"weight_sram": Out(sram_port_signature(config))}

    def quiescent(self):
        return ~self._loader_busy & ~self._collecting

    def unit_state(self):
        return {"continues": self._continues}

    def on_start(self, m):
        m.d.sync += [self._have_weights.eq(0), self._pending.eq(0), self._loaded_ahead.eq(0)]

    def elaborate(self, platform):
        self._have_weights = Signal()
        self._pending = Signal()
        self._loader_busy = Signal()
        self._loaded_ahead = Signal()
        self._fsm_streaming = Signal()
        self._continues = Signal()  # the decoded matmul continues the region held locally
        m = super().elaborate(platform)
        m.submodules.array = self._array
        m.submodules.accumulators = self._acc_mem
        return m

    def execute(self, m, instr):
        cfg = self.config
        rows, cols = cfg.me_rows, cfg.me_cols
        self._array = array = SystolicArray(rows, cols)
        self._acc_mem = acc_mem = memory.Memory(shape=data.ArrayLayout(signed(32), cols), depth=ACC_ROWS, init=[])
        acc_read = acc_mem.read_port(domain="comb")
        acc_write = acc_mem.write_port()
        opcode = instr.as_value()[:8]
        lw, mm = instr.me_loadw, instr.me_matmul
        k, n = Signal(8), Signal(8)
        bank = Signal()
        row = Signal(12)
        issued, received = Signal(13), Signal(13)
        accumulate = Signal()
        pending = self._pending
        pend_out, pend_stride, pend_m, pend_n = Signal(24), Signal(16), Signal(12), Signal(8)
        self._out_end = out_end = end_signal(m, region_end(mm.out, mm.m, mm.out_stride, n), "out_end")
        a_end = end_signal(m, region_end(mm.a, mm.m, mm.a_stride, _words(k)), "a_end")
        w_end = end_signal(m, region_end(lw.w, lw.k, lw.w_stride, _words(lw.n)), "w_end")
        pend_end = Signal.like(out_end, name="pend_end")
        self._flush_return_done = flush_to_done = Signal()
        flush_to_execute = Signal()
        self._collecting = collecting = Signal()
        self._queued = queued = Signal()
        col_left, col_row, col_acc, col_macs = Signal(13), Signal(12), Signal(), Signal(16)
        self._start, self._start_left, self._start_acc, self._start_macs = Signal(), Signal(13), Signal(), Signal(16)
        line = self.sram.rdata.as_value()
        row_bits = max(1, (rows - 1).bit_length())
        same_region = (pending & (pend_out == mm.out) & (pend_stride == mm.out_stride) & (pend_m == mm.m)
                       & (pend_n == n))
        a_reads_pending = pending & overlap(mm.a, a_end, pend_out, pend_end)
        w_reads_pending = pending & overlap(lw.w, w_end, pend_out, pend_end)
        m.d.comb += self._continues.eq(same_region & ~a_reads_pending)

        self._drain = drain = Signal(range(array.latency + 3))

        def flush_then_execute():
            """Write the local region back (once the collector is idle), then run this instruction again."""
            with m.If(~collecting):
                m.d.sync += [flush_to_done.eq(0), flush_to_execute.eq(1)]
                m.next = "ME_FLUSH"

        def begin_new_region():
            """A matmul into a region not held locally: load the old rows first when accumulating."""
            with m.If(mm.acc):
                m.next = "ME_PRELOAD"
            with m.Else():
                m.d.sync += accumulate.eq(0)
                m.next = "ME_STREAM"

        with m.State("EXECUTE"):
            m.d.comb += self.busy.eq(1)
            m.d.sync += [row.eq(0), issued.eq(0), received.eq(0)]
            with m.If((opcode == OPCODES["me.loadw"]) & (self._loader_busy | self._loaded_ahead)):
                with m.If(~self._loader_busy):  # the weight loader already executed this loadw
                    m.d.sync += [k.eq(lw.k), n.eq(lw.n), bank.eq(~bank), self._have_weights.eq(1),
                                 self._loaded_ahead.eq(0)]
                    m.next = "NEXT"
            with m.Elif(opcode == OPCODES["me.loadw"]):
                with m.If((lw.k > rows) | (lw.n > cols)):
                    self.raise_fault(m, FaultCode.ILLEGAL_FIELD)
                with m.Elif(~self.sram_fits(w_end)):
                    self.raise_fault(m, FaultCode.SRAM_BOUNDS)
                with m.Elif(w_reads_pending):
                    flush_then_execute()
                with m.Else():
                    m.d.sync += [k.eq(lw.k), n.eq(lw.n), bank.eq(~bank)]
                    m.next = "ME_LOAD"
            with m.Elif(queued | (collecting & ~same_region)):
                pass  # the collector is full, or the local accumulators are about to be reused
            with m.Else():
                with m.If(~self._have_weights):
                    self.raise_fault(m, FaultCode.ME_STATE)
                with m.Elif(~self.sram_fits(a_end)):
                    self.raise_fault(m, FaultCode.SRAM_BOUNDS)
                with m.Elif(~self.sram_fits(out_end)):
                    self.raise_fault(m, FaultCode.SRAM_BOUNDS)
                with m.Elif(a_reads_pending):
                    flush_then_execute()
                with m.Elif(same_region):
                    m.d.sync += accumulate.eq(mm.acc)
                    m.next = "ME_STREAM"
                with m.Elif(pending):
                    m.d.sync += [flush_to_done.eq(0), flush_to_execute.eq(0)]
                    m.next = "ME_FLUSH"
                with m.Else():
                    begin_new_region()
            self._abort_point(m)

        with m.State("ME_LOAD"):
            m.d.comb += self.busy.eq(1)
            with m.If(issued < k):
                m.d.comb += [self.sram.valid.eq(1), self.sram.addr.eq(self.sram_addr(lw.w + issued * lw.w_stride)),
                             self.sram.words.eq(_words(lw.n))]
                with m.If(self.sram.ready):
                    m.d.sync += issued.eq(issued + 1)
            with m.If(self.sram.rvalid):
                for c in range(cols):
                    m.d.comb += array.w_data[c].eq(Mux(c < n, line[8 * c:8 * c + 8], 0))
            with m.If(self.sram.rvalid | (received >= k)):  # rows past k are written with zeros
                m.d.comb += [array.w_we.eq(1), array.w_bank.eq(bank), array.w_row.eq(received[:row_bits])]
                m.d.sync += received.eq(received + 1)
                with m.If(received == rows - 1):
                    m.d.sync += [self._have_weights.eq(1), issued.eq(0), received.eq(0)]
                    m.next = "NEXT"

        with m.State("ME_FLUSH"):
            m.d.comb += [self.busy.eq(1), self.sram.valid.eq(1), self.sram.we.eq(1),
                         self.sram.addr.eq(self.sram_addr(pend_out + row * pend_stride))]
            for c in range(cols):
                m.d.comb += [self.sram.wdata[c].eq(acc_read.data[c]),
                             self.sram.wmask[c].eq(Mux(c < pend_n, 0b1111, 0))]
            with m.If(self.sram.ready):
                m.d.sync += row.eq(row + 1)
                with m.If(row + 1 == pend_m):
                    m.d.sync += [pending.eq(0), row.eq(0)]
                    with m.If(flush_to_done):
                        m.next = "DONE"
                    with m.Elif(flush_to_execute):
                        m.next = "EXECUTE"
                    with m.Else():
                        begin_new_region()
            self._abort_point(m)

        with m.State("ME_PRELOAD"):
            m.d.comb += self.busy.eq(1)
            with m.If(issued < mm.m):
                m.d.comb += [self.sram.valid.eq(1), self.sram.addr.eq(self.sram_addr(mm.out + issued * mm.out_stride)),
                             self.sram.words.eq(n)]
                with m.If(self.sram.ready):
                    m.d.sync += issued.eq(issued + 1)
            with m.If(self.sram.rvalid):
                m.d.comb += [acc_write.addr.eq(received), acc_write.en.eq(1)]
                for c in range(cols):
                    m.d.comb += acc_write.data[c].eq(Mux(c < n, self.sram.rdata[c].as_signed(), 0))
                m.d.sync += received.eq(received + 1)
                with m.If(received + 1 == mm.m):
                    m.d.sync += [accumulate.eq(1), issued.eq(0), received.eq(0)]
                    m.next = "ME_STREAM"
            self._abort_point(m)

        with m.State("ME_STREAM"):
            m.d.comb += [self.busy.eq(1), self._fsm_streaming.eq(1)]
            with m.If(issued < mm.m):
                m.d.comb += [self.sram.valid.eq(1), self.sram.addr.eq(self.sram_addr(mm.a + issued * mm.a_stride)),
                             self.sram.words.eq(_words(k))]
                with m.If(self.sram.ready):
                    m.d.sync += issued.eq(issued + 1)
            with m.If(self.sram.rvalid):
                m.d.comb += [array.in_valid.eq(1), array.in_bank.eq(bank)]
                for r in range(rows):
                    m.d.comb += array.in_data[r].eq(Mux(r < k, line[8 * r:8 * r + 8], 0))
                with m.If(received == 0):
                    m.d.comb += [self._start.eq(1), self._start_left.eq(mm.m), self._start_acc.eq(accumulate),
                                 self._start_macs.eq(k * n)]
                m.d.sync += received.eq(received + 1)
                with m.If(received + 1 == mm.m):
                    m.d.sync += [pending.eq(1), pend_out.eq(mm.out), pend_end.eq(out_end), pend_stride.eq(mm.out_stride),
                                 pend_m.eq(mm.m), pend_n.eq(n), issued.eq(0), received.eq(0)]
                    m.next = "NEXT"
            self._abort_point(m)

        with m.State("ME_ABORT"):
            # rows already in the array leave it within its latency; then nothing of the uTOp remains
            m.d.comb += self.busy.eq(1)
            with m.If(drain <= array.latency + 1):
                m.d.sync += drain.eq(drain + 1)
            with m.Elif(~self._loader_busy):
                m.d.sync += [collecting.eq(0), queued.eq(0), pending.eq(0)]
                self.end_aborted(m)

        self._instr = instr
        self._collector = (acc_read, acc_write, col_left, col_row, col_acc, col_macs, row)
        self._loader_context = (bank, received)

    def background(self, m):
        """The collector accumulates array outputs whatever the FSM does, so the engine can fetch
        and load the next weights (into the other bank) while the array drains. The weight loader
        executes a prefetched, legal ``me.loadw`` into the idle bank while a matmul streams (once
        ``me_cols`` rows of it have entered the array, so the bank is free); the FSM then only commits
        its effects. A loadw that would fault is left to the FSM, which faults in program order."""
        self._weight_loader(m)
        acc_read, acc_write, col_left, col_row, col_acc, col_macs, row = self._collector
        array, collecting, queued = self._array, self._collecting, self._queued
        next_left, next_acc, next_macs = Signal(13), Signal(), Signal(16)
        last_output = array.out_valid & (col_left == 1)
        with m.If(array.out_valid):
            m.d.comb += [acc_write.addr.eq(col_row), acc_write.en.eq(1), self.count_macs.eq(col_macs)]
            for c in range(self.config.me_cols):
                m.d.comb += acc_write.data[c].eq(Mux(col_acc, acc_read.data[c], 0) + array.out_data[c])
            m.d.sync += [col_row.eq(col_row + 1), col_left.eq(col_left - 1)]
        with m.If(last_output):
            # the array's outputs arrive in order: the queued matmul's first row comes next
            with m.If(queued):
                m.d.sync += [col_row.eq(0), col_left.eq(next_left), col_acc.eq(next_acc), col_macs.eq(next_macs),
                             queued.eq(0)]
            with m.Else():
                m.d.sync += collecting.eq(0)
        with m.If(self._start):
            with m.If(~collecting | (last_output & ~queued)):
                m.d.sync += [collecting.eq(1), col_row.eq(0), col_left.eq(self._start_left),
                             col_acc.eq(self._start_acc), col_macs.eq(self._start_macs)]
            with m.Else():
                m.d.sync += [queued.eq(1), next_left.eq(self._start_left), next_acc.eq(self._start_acc),
                             next_macs.eq(self._start_macs)]
        m.d.comb += acc_read.addr.eq(Mux(collecting, col_row, row))

    def _weight_loader(self, m):
        cfg = self.config
        rows, cols = cfg.me_rows, cfg.me_cols
        array, port = self._array, self.weight_sram
        bank, fed = self._loader_context
        nxt = Signal(INSTRUCTION_LAYOUT)
        m.d.comb += nxt.eq(self._pf_word)
        legal = add_decoder(m, "loader_decoder", nxt).legal
        view = nxt.me_loadw
        w_end = end_signal(m, region_end(view.w, view.k, view.w_stride, _words(view.n)), "loader_w_end")
        streaming_out = self._instr.me_matmul.out
        can_start = (self._fsm_streaming & (fed >= cols) & self._pf_ready & legal
                     & (nxt.as_value()[:8] == OPCODES["me.loadw"]) & (view.k <= rows) & (view.n <= cols)
                     & self.sram_fits(w_end) & ~overlap(view.w, w_end, streaming_out, self._out_end)
                     & ~self._loader_busy & ~self._loaded_ahead)
        w, k, n, stride = Signal(24), Signal(8), Signal(8), Signal(16)
        issued, written = Signal(range(rows + 1)), Signal(range(rows + 1))
        row_bits = max(1, (rows - 1).bit_length())
        with m.If(can_start):
            m.d.sync += [self._loader_busy.eq(1), w.eq(view.w), k.eq(view.k), n.eq(view.n),
                         stride.eq(view.w_stride), issued.eq(0), written.eq(0)]
        with m.If(self._loader_busy):
            with m.If(issued < k):
                m.d.comb += [port.valid.eq(1), port.addr.eq(self.sram_addr(w + issued * stride)), port.words.eq(_words(n))]
                with m.If(port.ready):
                    m.d.sync += issued.eq(issued + 1)
            with m.If(port.rvalid):
                line = port.rdata.as_value()
                for c in range(cols):
                    m.d.comb += array.w_data[c].eq(Mux(c < n, line[8 * c:8 * c + 8], 0))
            with m.If(port.rvalid | (written >= k)):
                m.d.comb += [array.w_we.eq(1), array.w_bank.eq(~bank), array.w_row.eq(written[:row_bits])]
                m.d.sync += written.eq(written + 1)
                with m.If(written == rows - 1):
                    m.d.sync += [self._loader_busy.eq(0), self._loaded_ahead.eq(1)]

    def finish(self, m):
        with m.State("FINISH"):
            m.d.comb += self.busy.eq(1)
            m.d.sync += self._flush_return_done.eq(1)
            with m.If(self._collecting | self._loader_busy):
                pass  # wait for the last outputs
            with m.Elif(self._pending):
                m.next = "ME_FLUSH"
            with m.Else():
                m.next = "DONE"
            self._abort_point(m)

    def _abort_point(self, m):
        """Leave for ME_ABORT when the uTOp is aborted (overriding this state's other decisions)."""
        with m.If(self._stop):
            m.d.sync += self._drain.eq(0)
            m.next = "ME_ABORT"


