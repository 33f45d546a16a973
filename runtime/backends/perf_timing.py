"""Engine timing models of the ``perf`` backend, derived from the RTL's microarchitecture.

Each model turns one uTOp body into the cycles its engine is busy (``busy`` in the RTL, from the
cycle after dispatch to its ``done``), at a given HBM latency ``L`` (the latency the HBM model adds
to a request it accepted). The structure follows the engines' FSMs (:mod:`tcloud.rtl.engine`,
:mod:`tcloud.rtl.matrix_engine`, :mod:`tcloud.rtl.vector_engine`, :mod:`tcloud.rtl.dma`); the few
constants below are the cycles of their fixed states, named after the states they count and
checked against the Verilator model by ``benchmarks/perf_validation.py``.

Matrix and vector engines (prefetching)
    The prefetcher requests body instruction ``j < fetch_depth`` in the ``j``-th cycle after
    dispatch, and instruction ``j + fetch_depth`` when instruction ``j`` leaves the buffer; an
    instruction can be decoded :data:`FETCH_READY` + ``L`` cycles after its request (register
    slices, HBM, buffer). Every instruction then takes :data:`INSTRUCTION_OVERHEAD` cycles (DECODE,
    EXECUTE, NEXT) plus its work; the uTOp ends with FINISH and DONE (:data:`UTOP_TAIL`).

    * VE: work = the instruction's work units beyond :data:`~tcloud.isa.cost.INSTRUCTION_UNITS`
      (:func:`tcloud.isa.cost.instruction_units`: steps per chunk of lanes and per row).
    * ME: ``me.loadw`` streams ``me_rows`` weight rows (+1 read latency) unless the weight loader
      already loaded it while the previous matmul streamed; ``me.matmul`` streams ``m`` rows (+1),
      preceded by a preload of ``m`` rows (+1) when it accumulates into a new region and by a
      write-back of the held region (``m`` + 1) when it changes region; the collector finishes
      ``me_rows + me_cols - 3`` cycles after a matmul's last row entered the array
      (:data:`ME_DRAIN_SLACK`), it holds at most one queued matmul, and FINISH writes the last region
      back once the collector is done.

DMA engines (no prefetch)
    Each instruction is fetched (``L`` + :data:`DMA_FETCH`), then its beats are requested, one per
    cycle while the HBM accepts them (``dma_outstanding`` in flight), and the instruction ends when
    the last response is written (``L`` + :data:`DMA_DRAIN`, two more for a store's buffer). The
    beats are the HBM's shared resource: concurrent transfers share its request slots and byte
    credit (processor sharing, in :class:`tcloud.runtime.backends.perf.PerfDevice`), and the
    instruction fetches of running MEs and VEs take turns with their responses.

What the event loop does not simulate cycle by cycle (scratchpad bank conflicts, fetches waiting in
the HBM arbiter) is charged per instruction and concurrent engine (:data:`SHARED_ACCESS_CYCLES`),
and HBM jitter by its expected effect (:data:`JITTER_SHARE`, :data:`FRONT_JITTER_SHARE`). Those three
constants are measured on the RTL, not derived from it; each says how.
"""

from dataclasses import dataclass

from tcloud.isa.cost import INSTRUCTION_UNITS, UnitState, overlap, region_end, words
from tcloud.isa.table import BY_MNEMONIC, INSTRUCTION_BITS

FETCH_READY = 5
"""Cycles from an engine's instruction request to the instruction's DECODE, beyond the HBM latency:
request register slice, response register slice, response handshake, prefetch buffer, its pop."""
INSTRUCTION_OVERHEAD = 3
"""DECODE, EXECUTE and NEXT of every body instruction."""
UTOP_TAIL = 2
"""FINISH and DONE."""
ME_READ_LATENCY = 1
"""The scratchpad's read latency: one extra cycle per streamed region (weights, A rows, preload)."""
ME_DRAIN_SLACK = 3
"""The collector finishes ``me_rows + me_cols - ME_DRAIN_SLACK`` cycles after its matmul's NEXT."""
DMA_FETCH = 5
"""Cycles of a DMA instruction's fetch beyond the HBM latency: FETCH, the register slices,
FETCH_WAIT's handshake, DECODE, EXECUTE."""
DMA_DRAIN = 5
"""Cycles after a DMA instruction's last request beyond the HBM latency until NEXT."""
DMA_STORE_EXTRA = 2
"""A store reads the scratchpad into its buffer before its first request."""
DMA_UTOP_EXTRA = 2
"""A DMA uTOp's dispatch and DONE cycles beyond its instructions."""
SHARED_ACCESS_CYCLES = 0.24
"""Cycles a matrix or vector engine loses per body instruction to each other engine running at the same
time (an ME or VE, or a DMA transfer): its instruction fetches take turns in the HBM arbiter and its
streams wait for scratchpad banks another engine holds. Measured, not derived: four identical ME
uTOps of 16 instructions started together each take 11 cycles longer on the RTL than one alone, two
take 4 longer."""
JITTER_SHARE = 0.75
"""With HBM jitter (each request 0 .. ``J`` cycles late, each queue answered in request order) an
isolated request waits ``J / 2`` on average and one in a stream the latest of those before it,
about ``J``; instruction fetches mostly come in streams (prefetch, the front end behind the engines'
fetches), so the model uses ``hbm_latency + JITTER_SHARE x J``. Measured on the multi-tenant corpus
(0.5 under-estimated latencies by 2-3 %, 1.0 over-estimated them by about 2 %)."""
FRONT_JITTER_SHARE = 0.5
"""The front end's fetch unit has one request in flight at a time, so its fetches see the mean jitter,
``J / 2``. (Measured: 0.75 put multi-tenant latencies 4-7 % high where the shared fetch unit is the
bottleneck; 0.5 leaves them within 3 %, and single-tenant programs with jitter within 1.5 %.)"""
GATHER_ROW_CYCLES = 3
"""Cycles per row of a ``dma.gather`` beyond its beats: its index read in the checking pass, and its
index read again (request, data) before its row's requests in the copying pass."""
GATHER_EXTRA = 2
"""The checking pass's last read latency and the turn between the passes."""
HOST_COMMAND_WRITES = INSTRUCTION_BITS // 32 + 1
"""CSR writes of one host command (the instruction's 32-bit words to ``CMD0..3``, then ``DOORBELL``),
a cycle each."""


@dataclass(frozen=True)
class DmaPhase:
    """One DMA instruction: fixed cycles before its transfer, the transfer, fixed cycles after.

    Attributes
    ----------
    before, after : int
        Cycles (``L``-dependent parts included).
    beats : int
        HBM requests of the transfer.
    bytes : int
        Bytes it moves (the HBM's byte credit).
    """

    before: int
    beats: int
    bytes: int
    after: int


def _encoded(instr):
    spec = BY_MNEMONIC[instr.mnemonic]
    return lambda name: instr[name] // spec.field(name).scale


def prefetched_busy(config, latency, works, tail=UTOP_TAIL):
    """Busy cycles of a prefetching engine running instructions of ``works`` cycles each.

    Parameters
    ----------
    config : ArchConfig
    latency : float
        HBM latency in cycles.
    works : list of callable or int
        Per instruction: its cycles, or ``work(start)`` returning its end (for instructions whose
        duration depends on when they start, e.g. waiting for the ME's collector).
    tail : callable or int
        Cycles after the last instruction, or ``tail(end)`` returning the uTOp's end.

    Returns
    -------
    float
    """
    depth = config.fetch_depth
    ready = latency + FETCH_READY
    starts = []
    end = 0.0
    for j, work in enumerate(works):
        issue = j if j < depth else starts[j - depth]
        start = max(issue + ready, end)
        starts.append(start)
        end = work(start) if callable(work) else start + work
    return tail(end) if callable(tail) else end + tail


def ve_busy(config, latency, body):
    """Busy cycles of a vector-engine uTOp (see the module docstring)."""
    state = UnitState(config)
    works = [INSTRUCTION_OVERHEAD + state.units(instr) - INSTRUCTION_UNITS for instr in body]
    return prefetched_busy(config, latency, works)


def me_busy(config, latency, body):
    """Busy cycles of a matrix-engine uTOp (see the module docstring)."""
    rows, cols = config.me_rows, config.me_cols
    drain = rows + cols - ME_DRAIN_SLACK
    state = {"pending": None, "collect_end": None, "previous_end": None, "loader_done": None, "tile": (0, 0)}

    def flush(start):
        """Write the held region back from ``start`` (after its collector); return the end."""
        pending = state["pending"]
        if pending is None:
            return start
        start = max(start, state["collect_end"])
        state["pending"] = None
        return start + pending[0][2] + ME_READ_LATENCY

    def loadw(instr, next_instr):
        field = _encoded(instr)

        def work(start):
            state["tile"] = (field("k"), field("n"))
            w_end = region_end(field("w"), field("k"), field("w_stride"), words(field("n")))
            if state["loader_done"] is not None:
                done, state["loader_done"] = state["loader_done"], None
                return max(start + INSTRUCTION_OVERHEAD, done + 1)
            at = start + 2
            if state["pending"] is not None and overlap(field("w"), w_end, *state["pending"][1]):
                at = flush(at)
            return at + rows + ME_READ_LATENCY + 1
        return work

    def matmul(instr, next_instr):
        field = _encoded(instr)

        def work(start):
            k, n = state["tile"]
            m = field("m")
            key = (field("out"), field("out_stride"), m, n)
            out_span = (field("out"), region_end(field("out"), m, field("out_stride"), n))
            a_end = region_end(field("a"), m, field("a_stride"), words(k))
            pending = state["pending"]
            same = pending is not None and pending[0] == key
            a_reads = pending is not None and overlap(field("a"), a_end, *pending[1])
            at = start + 1  # EXECUTE
            if state["previous_end"] is not None:  # the collector holds one matmul and queues one more
                at = max(at, state["previous_end"])
            if same and not a_reads:
                stream_from = at + 1
            else:
                if pending is not None:
                    at = flush(max(at, state["collect_end"]))
                stream_from = at + 1 + (m + ME_READ_LATENCY if field("acc") else 0)
            end = stream_from + m + ME_READ_LATENCY + 1  # NEXT
            state["previous_end"] = state["collect_end"]
            state["collect_end"] = end + drain
            state["pending"] = (key, out_span)
            if next_instr is not None and next_instr.mnemonic == "me.loadw" and m >= cols:
                nf = _encoded(next_instr)
                w_end = region_end(nf("w"), nf("k"), nf("w_stride"), words(nf("n")))
                if not overlap(nf("w"), w_end, *out_span):
                    state["loader_done"] = stream_from + cols + rows + ME_READ_LATENCY
            return end
        return work

    works = []
    for i, instr in enumerate(body):
        following = body[i + 1] if i + 1 < len(body) else None
        works.append((loadw if instr.mnemonic == "me.loadw" else matmul)(instr, following))

    def tail(end):
        if state["collect_end"] is not None:
            end = max(end, state["collect_end"])
        return flush(end) + UTOP_TAIL

    return prefetched_busy(config, latency, works, tail)


def dma_phases(config, latency, body, jitter=0):
    """The :class:`DmaPhase` of each instruction of a DMA uTOp (see the module docstring).

    ``latency`` is the HBM latency without jitter. With ``jitter`` (each request 0 .. ``jitter``
    cycles late, answered in order) the instruction's own fetch, a lone request, waits ``jitter / 2``
    more on average, and a transfer's last response the latest of its ``n`` beats',
    ``jitter x n / (n + 1)`` on average."""
    beat_bytes = 4 * min(config.hbm_port_bytes // 4, config.sram_line_words)
    phases = []
    for instr in body:
        rows, row_bytes = instr["rows"], instr["row_bytes"]
        beats = rows * -(-row_bytes // beat_bytes)
        before = latency + jitter / 2 + DMA_FETCH
        after = latency + jitter * beats / (beats + 1) + DMA_DRAIN
        if instr.mnemonic == "dma.store":
            after += DMA_STORE_EXTRA
        elif instr.mnemonic == "dma.gather":  # the checking pass, then an index read per row
            before += GATHER_ROW_CYCLES * rows + GATHER_EXTRA
        phases.append(DmaPhase(before, beats, rows * row_bytes, after))
    return phases


def transfer_cycles(config, latency, phase):
    """Cycles a DMA transfer takes alone: a beat per cycle, at most the HBM's byte rate, and at most
    ``dma_outstanding`` requests per round trip."""
    return max(phase.beats, phase.bytes / config.hbm_bytes_per_cycle,
               phase.beats * (latency + FETCH_READY) / config.dma_outstanding)
