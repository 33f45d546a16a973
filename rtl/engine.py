"""What every engine (DMA, ME, VE) shares: dispatch, body fetch, decode, faults, counters.

The sequencer dispatches a uTOp by pulsing ``start`` with the context-relative word address and
length of its body and the context's windows. The engine fetches each body instruction from HBM
(bounds-checked like every other access), decodes it, checks it belongs to its class and executes
it; it ends with one ``done`` pulse carrying ``fault`` (``NONE`` on success) and ``fault_pc``.

Subclasses implement :meth:`Engine.execute`, which adds FSM states starting at ``"EXECUTE"`` and
ends each instruction with ``m.next = "NEXT"`` or :meth:`Engine.raise_fault`.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from tcloud.isa.table import INSTRUCTION_BYTES, FaultCode

from .decode import INSTRUCTION_LAYOUT, decode_checks
from .hbm import HBM_ADDR_BITS, hbm_signature
from .scratchpad import sram_addr_bits, sram_port_signature

INSTRUCTION_WORDS = INSTRUCTION_BYTES // 4
FAULT_BITS = 4
COUNTER_BITS = 32


def dispatch_signature(config):
    """Sequencer → engine dispatch and engine → sequencer completion (seen from the engine)."""
    sram_bits = sram_addr_bits(config)
    return {
        "start": In(1),
        "body_pc": In(HBM_ADDR_BITS),
        "body_len": In(12),
        "sram_base": In(sram_bits + 1),
        "sram_size": In(sram_bits + 1),
        "hbm_base": In(HBM_ADDR_BITS),
        "hbm_size": In(HBM_ADDR_BITS + 1),
        "busy": Out(1),
        "done": Out(1),
        "fault": Out(FAULT_BITS),
        "fault_pc": Out(HBM_ADDR_BITS),
        "count_instr": Out(1),
        "count_hbm_read": Out(16),
        "count_hbm_write": Out(16),
        "count_macs": Out(COUNTER_BITS),
        "count_ve": Out(COUNTER_BITS),
    }


def region_end(addr, rows, stride, row_words):
    """Word just past a 2-D region (``addr + (rows-1)*stride + row_words``)."""
    return addr + (rows - 1) * stride + row_words


class Engine(wiring.Component):
    """Base of DMA, matrix and vector engines (see the module docstring).

    Parameters
    ----------
    config : ArchConfig
    """

    engine_class = None
    prefetch = False
    """Fetch the next body instruction while the current one executes (only for engines whose
    instructions do not use the HBM port themselves)."""

    def __init__(self, config):
        self.config = config
        super().__init__({**dispatch_signature(config), "hbm": Out(hbm_signature(config)),
                          "sram": Out(sram_port_signature(config)), **self.extra_members(config)})

    def extra_members(self, config):
        """Further signature members of a subclass (e.g. a second scratchpad port)."""
        return {}

    def execute(self, m, instr):
        """Add the FSM states that execute ``instr`` (a view of INSTRUCTION_LAYOUT)."""
        raise NotImplementedError

    def raise_fault(self, m, code):
        """End the uTOp with fault ``code`` at the current instruction."""
        m.d.sync += self._fault.eq(code)
        m.next = "FAULT"

    def sram_addr(self, offset):
        """Physical scratchpad word address of a context-relative word offset."""
        return self._sram_base + offset

    def hbm_addr(self, offset):
        """Physical HBM word address of a context-relative word offset."""
        return self._hbm_base + offset

    def sram_fits(self, end):
        return end <= self._sram_size

    def hbm_fits(self, end):
        return end <= self._hbm_size

    def elaborate(self, platform):
        m = Module()
        self._sram_base = Signal.like(self.sram_base)
        self._sram_size = Signal.like(self.sram_size)
        self._hbm_base = Signal.like(self.hbm_base)
        self._hbm_size = Signal.like(self.hbm_size)
        self._fault = Signal(FAULT_BITS)
        self._pf_sent = Signal()
        pc = Signal(HBM_ADDR_BITS)
        remaining = Signal(12)
        instr = Signal(INSTRUCTION_LAYOUT)
        known, legal, engine = decode_checks(instr)
        pf_busy, pf_ready = Signal(), Signal()
        pf_word = Signal(128)
        self._pf_ready, self._pf_word = pf_ready, pf_word
        pf_addr = Signal(HBM_ADDR_BITS)
        next_fits = self.hbm_fits(pc + 2 * INSTRUCTION_WORDS)

        m.d.comb += [self.fault.eq(self._fault), self.fault_pc.eq(pc)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [self._sram_base.eq(self.sram_base), self._sram_size.eq(self.sram_size),
                                 self._hbm_base.eq(self.hbm_base), self._hbm_size.eq(self.hbm_size),
                                 pc.eq(self.body_pc), remaining.eq(self.body_len),
                                 self._fault.eq(FaultCode.NONE)]
                    self.on_start(m)
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += self.busy.eq(1)
                with m.If(~self.hbm_fits(pc + INSTRUCTION_WORDS)):
                    self.raise_fault(m, FaultCode.FETCH_BOUNDS)
                with m.Else():
                    m.d.comb += [self.hbm.req.valid.eq(1), self.hbm.req.payload.addr.eq(self.hbm_addr(pc)),
                                 self.hbm.req.payload.count.eq(INSTRUCTION_WORDS),
                                 self.hbm.req.payload.write.eq(0), self.hbm.req.payload.wdata.eq(0)]
                    with m.If(self.hbm.req.ready):
                        m.next = "FETCH_WAIT"
            with m.State("FETCH_WAIT"):
                m.d.comb += [self.busy.eq(1), self.hbm.rsp.ready.eq(1)]
                with m.If(self.hbm.rsp.valid):
                    m.d.sync += instr.eq(self.hbm.rsp.payload.rdata.as_value()[:128])
                    m.next = "DECODE"
            with m.State("DECODE"):
                m.d.comb += self.busy.eq(1)
                with m.If(~known):
                    self.raise_fault(m, FaultCode.ILLEGAL_OPCODE)
                with m.Elif(~legal):
                    self.raise_fault(m, FaultCode.ILLEGAL_FIELD)
                with m.Else():
                    m.d.comb += self.count_instr.eq(1)
                    with m.If(engine != int(self.engine_class)):
                        self.raise_fault(m, FaultCode.WRONG_CLASS)
                    with m.Else():
                        if self.prefetch:
                            with m.If((remaining > 1) & next_fits):
                                m.d.sync += [pf_busy.eq(1), pf_addr.eq(self.hbm_addr(pc + INSTRUCTION_WORDS))]
                        m.next = "EXECUTE"
            self.execute(m, instr)
            with m.State("NEXT"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [pc.eq(pc + INSTRUCTION_WORDS), remaining.eq(remaining - 1)]
                with m.If(remaining == 1):
                    m.next = "FINISH"
                with m.Elif(pf_busy | pf_ready):
                    m.next = "PREFETCHED"
                with m.Else():
                    m.next = "FETCH"
            with m.State("PREFETCHED"):
                m.d.comb += self.busy.eq(1)
                with m.If(pf_ready):
                    m.d.sync += [instr.eq(pf_word), pf_ready.eq(0)]
                    m.next = "DECODE"
            self.finish(m)
            with m.State("DONE"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1)]
                m.next = "IDLE"
            with m.State("FAULT"):
                m.d.comb += self.busy.eq(1)
                with m.If(~pf_busy & self.quiescent()):  # nothing in flight may outlive the uTOp
                    m.d.comb += self.done.eq(1)
                    m.d.sync += pf_ready.eq(0)
                    m.next = "IDLE"
        if self.prefetch:
            with m.If(pf_busy & ~pf_ready):
                with m.If(~self._pf_sent):
                    m.d.comb += [self.hbm.req.valid.eq(1), self.hbm.req.payload.addr.eq(pf_addr),
                                 self.hbm.req.payload.count.eq(INSTRUCTION_WORDS),
                                 self.hbm.req.payload.write.eq(0), self.hbm.req.payload.wdata.eq(0)]
                    with m.If(self.hbm.req.ready):
                        m.d.sync += self._pf_sent.eq(1)
                with m.Else():
                    m.d.comb += self.hbm.rsp.ready.eq(1)
                    with m.If(self.hbm.rsp.valid):
                        m.d.sync += [pf_word.eq(self.hbm.rsp.payload.rdata.as_value()[:128]), pf_ready.eq(1),
                                     pf_busy.eq(0), self._pf_sent.eq(0)]
        self.background(m)
        return m

    def background(self, m):
        """Add logic that runs whatever state the FSM is in (called after the FSM)."""

    def quiescent(self):
        """Expression that is true when no background work of the uTOp is still running."""
        return 1

    def on_start(self, m):
        """Reset per-uTOp engine state (called in the cycle a uTOp is dispatched)."""

    def finish(self, m):
        """Add the ``"FINISH"`` state, entered after the last body instruction; it must end in
        ``"DONE"`` (an engine with buffered results writes them back here)."""
        with m.State("FINISH"):
            m.d.comb += self.busy.eq(1)
            m.next = "DONE"
