"""What every engine (DMA, ME, VE) shares: dispatch, body fetch, decode, faults, counters.

The sequencer dispatches a uTOp by pulsing ``start`` with the context-relative word address and
length of its body and the context's windows. The engine fetches each body instruction from HBM
(bounds-checked like every other access), decodes it, checks it belongs to its class and executes
it; it ends with one ``done`` pulse carrying ``fault`` (``NONE`` on success) and ``fault_pc``.
Matrix and vector engines prefetch: from dispatch on they keep the next ``fetch_depth`` body
instructions requested or buffered, so a uTOp pays one HBM round trip before its first instruction
and none between instructions whose work covers a round trip's share.

While ``abort`` is high (the scheduler raises it when the context of the running uTOp is killed
or over its watchdog budget) the engine stops at its next safe point instead of finishing the
uTOp: between body instructions, after the current HBM requests and scratchpad accesses have
completed, and inside long instructions at their natural granule (a DMA stops issuing and drains
its outstanding requests; a VE stops after the current chunk of lanes; an ME stops streaming and
waits for its systolic array and weight loader to drain). It then pulses ``done`` with ``aborted``
set and ``fault`` ``NONE``: the uTOp neither completes nor faults, and nothing of it is left in the
engine. :func:`abort_bound` gives the worst case in cycles.

Subclasses implement :meth:`Engine.execute`, which adds FSM states starting at ``"EXECUTE"`` and
ends each instruction with ``m.next = "NEXT"`` or :meth:`Engine.raise_fault`.
"""

import math

from amaranth.hdl import Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from tcloud.isa.cost import INSTRUCTION_UNITS, instruction_units
from tcloud.isa.table import BY_MNEMONIC, INSTRUCTION_BYTES, INSTRUCTIONS, FaultCode

from .decode import INSTRUCTION_LAYOUT, OPCODES, add_decoder, member_name
from .hbm import HBM_ADDR_BITS, SLICE_ROUND_TRIP, hbm_signature, master_count, port_words
from .scratchpad import access_wait, sram_addr_bits, sram_port_signature

INSTRUCTION_WORDS = INSTRUCTION_BYTES // 4
FAULT_BITS = 4
COUNTER_BITS = 32
COST_BITS = BY_MNEMONIC["utop"].field("cost").width


def dispatch_signature(config):
    """Sequencer → engine dispatch and engine → sequencer completion (seen from the engine)."""
    sram_bits = sram_addr_bits(config)
    return {
        "start": In(1),
        "abort": In(1),
        "body_pc": In(HBM_ADDR_BITS),
        "body_len": In(12),
        "cost": In(COST_BITS),
        "sram_base": In(sram_bits + 1),
        "sram_size": In(sram_bits + 1),
        "hbm_base": In(HBM_ADDR_BITS),
        "hbm_size": In(HBM_ADDR_BITS + 1),
        "busy": Out(1),
        "done": Out(1),
        "aborted": Out(1),
        "fault": Out(FAULT_BITS),
        "fault_pc": Out(HBM_ADDR_BITS),
        "count_instr": Out(1),
        "count_hbm_read": Out(16),
        "count_hbm_write": Out(16),
        "count_macs": Out(COUNTER_BITS),
        "count_ve": Out(COUNTER_BITS),
    }


def _access_round(config):
    """Cycles a scratchpad access may take, waiting included: one cycle for every port that may
    compete for its banks (reads: every engine and the MEs' weight loaders; writes: every engine and
    the scrubber)."""
    readers = config.dma_count + 2 * config.me_count + config.ve_count
    writers = config.dma_count + config.me_count + config.ve_count + 1
    return 1 + access_wait(max(readers, writers))


def data_round_trip(config, hbm_latency, requests):
    """Worst-case cycles until the HBM has answered ``requests`` data requests of one master that it
    took: behind every other data request in flight (``dma_outstanding`` per DMA engine and the
    scrubber), each response possibly waiting for a scratchpad write and taking turns with an
    instruction fetch."""
    in_flight = (config.dma_count + 1) * config.dma_outstanding
    return hbm_latency + SLICE_ROUND_TRIP + 2 + (in_flight + requests) * (2 + _access_round(config))


def fetch_round_trip(config, hbm_latency):
    """Worst-case cycles from an engine's instruction fetch request to its response.

    The arbiter grants each master in turn (at most one wait per master, each at most one beat of
    bandwidth credit); fetches have their own queue in the HBM (:mod:`tcloud.rtl.hbm`), in which
    the request may wait behind the fetches in flight of every other engine (``fetch_depth`` for an
    ME or VE, one for a DMA engine) and of the front end, each taking turns with a data response
    that may wait for a scratchpad write.
    """
    beat_cycles = math.ceil(config.hbm_port_bytes / min(config.hbm_bytes_per_cycle, config.hbm_port_bytes))
    fetchers = config.dma_count + (config.me_count + config.ve_count) * config.fetch_depth + 1
    return (master_count(config) * beat_cycles + hbm_latency + SLICE_ROUND_TRIP + 2
            + fetchers * (2 + _access_round(config)))


def abort_bound(config, hbm_latency):
    """Worst-case cycles from ``abort`` rising to the engine's ``done``.

    Parameters
    ----------
    config : ArchConfig
    hbm_latency : int
        Cycles within which the HBM answers a request it accepted.

    The slowest engine sets the bound: a DMA draining ``dma_outstanding`` requests
    (:func:`data_round_trip`), an engine waiting for an instruction fetch and a prefetch in flight
    (:func:`fetch_round_trip`), or a matrix engine finishing a weight load (``me_rows`` rows) and
    draining its systolic array (``me_rows + me_cols`` cycles); every scratchpad access may wait
    for each port that competes for its banks.
    """
    access = _access_round(config)
    fetch = fetch_round_trip(config, hbm_latency)
    dma = data_round_trip(config, hbm_latency, config.dma_outstanding) + access
    me = 2 * fetch + 2 * (config.me_rows + config.me_cols) + access
    ve = 2 * fetch + 5 * access
    return max(dma, me, ve) + 8


def reclaim_bound(config, hbm_latency, harvest_cost):
    """Worst-case cycles an owner's ready uTOp waits for an ME or VE another context harvested.

    Under the ``harvest`` policy (which never harvests DMA engines) only uTOps declaring at most
    ``harvest_cost`` work units (:mod:`tcloud.isa.cost`) run on MEs and VEs their context does not
    own, and the engine faults such a uTOp before it exceeds its declaration; once the owner has a
    ready uTOp no other context is dispatched to the engine. The owner therefore waits for at most
    the rest of one uTOp of ``harvest_cost`` units: its first instruction fetch, then per unit at
    most one cycle plus a scratchpad access's wait for its banks
    (:func:`~tcloud.rtl.scratchpad.access_wait`), or a share of an instruction fetch: an instruction
    costs at least :data:`~tcloud.isa.cost.INSTRUCTION_UNITS`, and the engine requests instruction
    ``k + fetch_depth`` as soon as it takes instruction ``k`` from its prefetch buffer, so each
    ``fetch_depth`` instructions wait for at most one fetch round trip (plus the three cycles from
    the buffer to execution) on top of their own work — by induction on ``k``, instruction ``k``
    starts within the first fetch plus, summed over the instructions before it, the larger of their
    work and ``1 / fetch_depth`` of a round trip. Then the matrix engine's array drain and the
    dispatch itself. Assumes each engine has one owner (the hypervisor never gives an engine to two
    contexts).

    Parameters
    ----------
    config : ArchConfig
    hbm_latency : int
        Cycles within which the HBM answers a request it accepted.
    harvest_cost : int
        The ``HARVEST_COST`` register.
    """
    fetch = fetch_round_trip(config, hbm_latency)
    per_unit = max(_access_round(config), (3 + fetch) / (config.fetch_depth * INSTRUCTION_UNITS))
    drain = config.me_rows + config.me_cols + 4
    return fetch + math.ceil(harvest_cost * per_unit) + drain + 4


def harvest_cost_for(config, hbm_latency, cycles):
    """Largest ``HARVEST_COST`` whose :func:`reclaim_bound` is at most ``cycles`` (0 if none is)."""
    low, high = 0, (1 << COST_BITS) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if reclaim_bound(config, hbm_latency, middle) <= cycles:
            low = middle
        else:
            high = middle - 1
    return low


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

    def end_aborted(self, m):
        """End the uTOp as aborted (once the engine is quiescent, see the module docstring)."""
        m.d.sync += self._aborted.eq(1)
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
        self._aborted = Signal()
        declared, used = Signal(COST_BITS, name="declared_cost"), Signal(COST_BITS, name="used_cost")
        held = Signal()  # an HBM request offered last cycle and not taken: it must stay offered
        self._stop = Signal()
        self._ending = Signal()  # the uTOp is ending: no new prefetch may outlive it
        m.d.sync += held.eq(self.hbm.req.valid & ~self.hbm.req.ready)
        m.d.comb += self._stop.eq(self.abort & ~held)
        pc = Signal(HBM_ADDR_BITS)
        remaining = Signal(12)
        instr = Signal(INSTRUCTION_LAYOUT)
        decoder = add_decoder(m, "decoder", instr)
        known, legal, engine = decoder.known, decoder.legal, decoder.engine
        # Prefetch buffer: the next fetch_depth body instructions, requested whenever there is room.
        depth = self.config.fetch_depth
        flush = Signal()
        buffer = ResetInserter(flush)(fifo.SyncFIFO(width=128, depth=depth)) if self.prefetch else None
        pf_next = Signal(HBM_ADDR_BITS)  # context-relative word address of the next unfetched instruction
        pf_left = Signal(12)             # body instructions not fetched yet
        pf_in_flight = Signal(range(depth + 1))  # requests taken, instructions not yet received
        pf_offered = Signal()  # a prefetch request offered and not taken yet: it stays offered
        pop = Signal()
        fetching = Signal()
        if buffer is not None:
            m.submodules.prefetch_buffer = buffer
            self._pf_ready, self._pf_word = buffer.r_rdy, buffer.r_data
            m.d.comb += buffer.r_en.eq(pop)
        else:
            self._pf_ready, self._pf_word = Const(0), Const(0, 128)
        buffered, buf0 = self._pf_ready, self._pf_word

        m.d.comb += [self.fault.eq(self._fault), self.fault_pc.eq(pc), self.aborted.eq(self._aborted)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [self._sram_base.eq(self.sram_base), self._sram_size.eq(self.sram_size),
                                 self._hbm_base.eq(self.hbm_base), self._hbm_size.eq(self.hbm_size),
                                 pc.eq(self.body_pc), remaining.eq(self.body_len),
                                 self._fault.eq(FaultCode.NONE), self._aborted.eq(0),
                                 pf_next.eq(self.body_pc), pf_left.eq(self.body_len if self.prefetch else 0),
                                 declared.eq(self.cost), used.eq(0)]
                    self.on_start(m)
                    m.next = "FIRST" if self.prefetch else "FETCH"
            if self.prefetch:
                with m.State("FIRST"):  # the prefetcher requests the body from its first instruction on
                    m.d.comb += self.busy.eq(1)
                    with m.If(self._stop):
                        self.end_aborted(m)
                    with m.Elif((pf_left != 0) & self.hbm_fits(pf_next + INSTRUCTION_WORDS)):
                        m.next = "PREFETCHED"  # requested in this cycle, as in NEXT
                    with m.Else():
                        m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += [self.busy.eq(1), fetching.eq(1)]
                with m.If(self._stop):
                    self.end_aborted(m)
                with m.Elif(~self.hbm_fits(pc + INSTRUCTION_WORDS)):
                    self.raise_fault(m, FaultCode.FETCH_BOUNDS)
                with m.Else():
                    m.d.comb += [self.hbm.req.valid.eq(1), self.hbm.req.payload.addr.eq(self.hbm_addr(pc)),
                                 self.hbm.req.payload.count.eq(INSTRUCTION_WORDS),
                                 self.hbm.req.payload.write.eq(0), self.hbm.req.payload.wdata.eq(0),
                                 self.hbm.req.payload.fetch.eq(1)]
                    with m.If(self.hbm.req.ready):
                        m.next = "FETCH_WAIT"
            with m.State("FETCH_WAIT"):
                m.d.comb += [self.busy.eq(1), self.hbm.rsp.ready.eq(1), fetching.eq(1)]
                with m.If(self.hbm.rsp.valid):
                    m.d.sync += instr.eq(self.hbm.rsp.payload.rdata.as_value()[:128])
                    if self.prefetch:
                        m.d.sync += [pf_next.eq(pc + INSTRUCTION_WORDS), pf_left.eq(remaining - 1)]
                    m.next = "DECODE"
            with m.State("DECODE"):
                m.d.comb += self.busy.eq(1)
                with m.If(self._stop):
                    self.end_aborted(m)
                with m.Elif(~known):
                    self.raise_fault(m, FaultCode.ILLEGAL_OPCODE)
                with m.Elif(~legal):
                    self.raise_fault(m, FaultCode.ILLEGAL_FIELD)
                with m.Else():
                    m.d.comb += self.count_instr.eq(1)
                    units = self._work_units(m, instr)
                    with m.If(engine != int(self.engine_class)):
                        self.raise_fault(m, FaultCode.WRONG_CLASS)
                    with m.Elif((declared != 0) & (used + units > declared)):
                        self.raise_fault(m, FaultCode.COST_EXCEEDED)
                    with m.Else():
                        m.d.sync += used.eq(used + units)
                        m.next = "EXECUTE"
            self.execute(m, instr)
            with m.State("NEXT"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [pc.eq(pc + INSTRUCTION_WORDS), remaining.eq(remaining - 1)]
                with m.If(self._stop):
                    self.end_aborted(m)
                with m.Elif(remaining == 1):
                    m.next = "FINISH"
                if buffer is not None:
                    with m.Elif(buffered):
                        m.d.comb += pop.eq(1)
                        m.d.sync += instr.eq(buf0)
                        m.next = "DECODE"
                    with m.Elif((pf_in_flight != 0) | pf_offered
                                | ((pf_left != 0) & self.hbm_fits(pf_next + INSTRUCTION_WORDS))):
                        m.next = "PREFETCHED"  # the prefetcher delivers it; fetching it here too would race
                with m.Else():
                    m.next = "FETCH"
            with m.State("PREFETCHED"):
                m.d.comb += self.busy.eq(1)
                with m.If(buffered):
                    m.d.comb += pop.eq(1)
                    m.d.sync += instr.eq(buf0)
                    m.next = "DECODE"
            self.finish(m)
            with m.State("DONE"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1), self._ending.eq(1)]
                m.next = "IDLE"
            with m.State("FAULT"):
                m.d.comb += [self.busy.eq(1), self._ending.eq(1)]
                with m.If((pf_in_flight == 0) & ~pf_offered & self.quiescent()):  # nothing may outlive the uTOp
                    m.d.comb += [self.done.eq(1), flush.eq(1)]
                    m.d.sync += pf_left.eq(0)
                    m.next = "IDLE"
        if buffer is not None:
            self._prefetcher(m, buffer, pf_next, pf_left, pf_in_flight, pf_offered, fetching)
        self.background(m)
        return m

    def _work_units(self, m, instr):
        """Work units of ``instr`` if it is an instruction of this engine's class (else 0)."""
        units = Signal(64, name="work_units")
        opcode = instr.as_value()[:8]
        with m.Switch(opcode):
            for spec in INSTRUCTIONS:
                if spec.engine == self.engine_class:
                    view = getattr(instr, member_name(spec.mnemonic))
                    with m.Case(OPCODES[spec.mnemonic]):
                        m.d.comb += units.eq(instruction_units(spec.mnemonic, lambda name, v=view: v[name],
                                                               self.config, **self.unit_state()))
        return units

    def unit_state(self):
        """Engine state the cost of an instruction depends on, as keyword arguments of
        :func:`~tcloud.isa.cost.instruction_units` (``ve_rows``, ``continues``)."""
        return {}

    def _prefetcher(self, m, buffer, pf_next, pf_left, pf_in_flight, offered, fetching):
        """Keep up to ``fetch_depth`` upcoming body instructions buffered or requested: one request per
        instruction, as many in flight as the buffer has room for."""
        room = buffer.level + pf_in_flight < self.config.fetch_depth
        issue = offered | (~fetching & (pf_left != 0) & room & self.hbm_fits(pf_next + INSTRUCTION_WORDS)
                           & ~self._stop & ~self._ending)
        taken = issue & self.hbm.req.ready
        m.d.sync += offered.eq(issue & ~self.hbm.req.ready)  # an offered request stays as it was offered
        with m.If(issue):
            m.d.comb += [self.hbm.req.valid.eq(1), self.hbm.req.payload.addr.eq(self.hbm_addr(pf_next)),
                         self.hbm.req.payload.count.eq(INSTRUCTION_WORDS),
                         self.hbm.req.payload.write.eq(0), self.hbm.req.payload.wdata.eq(0),
                         self.hbm.req.payload.fetch.eq(1)]
        with m.If(taken):
            m.d.sync += [pf_next.eq(pf_next + INSTRUCTION_WORDS), pf_left.eq(pf_left - 1)]
        push = (pf_in_flight != 0) & self.hbm.rsp.valid
        with m.If(pf_in_flight != 0):
            m.d.comb += self.hbm.rsp.ready.eq(1)
        m.d.comb += [buffer.w_en.eq(push), buffer.w_data.eq(self.hbm.rsp.payload.rdata.as_value()[:128])]
        m.d.sync += pf_in_flight.eq(pf_in_flight + taken - push)

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
