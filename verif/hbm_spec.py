"""The HBM port's protocol (:mod:`tcloud.rtl.hbm`) as a small executable reference, and a request
player that drives one request sequence through every HBM model.

:func:`reference` computes, from the specification alone, when each request of a sequence is
accepted and when, in which order and with which data each response arrives.
:class:`HbmPlayer` is a small design with the pNPU's ports (host CSRs, ``idle``, ``hbm``) that
presents the same sequence to whatever HBM model serves its ``hbm`` port and logs what happens, so
:class:`tcloud.rtl.sim.HbmModel` (Amaranth simulator), the Verilator harness's C++ model (the player
compiled in place of the pNPU) and the cocotb :class:`~tcloud.verif.cocotb_bench.HbmResponder` can
each be compared with the reference cycle for cycle.
"""

from collections import deque
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from tcloud.rtl.hbm import hbm_signature, id_bits, port_words, request_layout

NORMAL, DROP_VALID, CHANGE_PAYLOAD = range(3)
"""Player modes (the value of the starting ``csr_we``): well-behaved, and two that break the stream
rules while the HBM keeps a request waiting (on odd cycles ``valid`` drops, or the address changes),
to test protocol checkers."""

CYCLE_BITS = 32


@dataclass(frozen=True)
class Request:
    """One request the player sends.

    Attributes
    ----------
    at : int
        Earliest cycle after the start at which it is presented (it also waits for the request
        before it to be taken: one request a cycle at most).
    addr, count, write, fetch, id
        Payload fields (:func:`tcloud.rtl.hbm.request_layout`).
    wdata : tuple of int
        Words written (``count`` of them) for a write.
    """

    at: int
    addr: int
    count: int
    write: bool = False
    fetch: bool = False
    id: int = 0
    wdata: tuple = ()

    def payload(self):
        return {"addr": self.addr, "count": self.count, "write": self.write, "fetch": self.fetch,
                "id": self.id, "wdata": list(self.wdata)}


@dataclass(frozen=True)
class Trace:
    """What an HBM port did with a request sequence.

    Attributes
    ----------
    accepted : tuple of int
        Cycle (after the start) in which each request was taken, in request order.
    responses : tuple of (int, int, tuple or None)
        ``(cycle, id, read words)`` of each response in delivery order; ``None`` for a write's
        acknowledgement, whose data is undefined.
    """

    accepted: tuple
    responses: tuple


def port_gbps(config):
    """The HBM bandwidth (GB/s) that fills the port's full width every cycle at ``config``'s clock."""
    return config.hbm_port_bytes * config.clock_mhz / 1e3


def reference(config, requests, ready, memory):
    """The protocol of :mod:`tcloud.rtl.hbm` applied to a request sequence.

    Parameters
    ----------
    config : ArchConfig
        Beat (``hbm_port_bytes``), bandwidth (``hbm_bytes_per_cycle``) and ``hbm_latency``.
    requests : sequence of Request
    ready : sequence of bool
        The master's ``rsp.ready`` in cycle ``c`` is ``ready[c % len(ready)]``.
    memory : numpy.ndarray of uint32
        HBM words before the start; the writes are applied to it.

    Returns
    -------
    Trace
    """
    beat, rate, latency = config.hbm_port_bytes, config.hbm_bytes_per_cycle, config.hbm_latency
    credit, queues, offered, last = 2.0 * beat, (deque(), deque()), None, 0
    accepted, responses, cycle = [], [], 0
    while len(responses) < len(requests):
        credit = min(credit + rate, 2 * beat)
        request = requests[len(accepted)] if len(accepted) < len(requests) else None
        taken = request is not None and cycle >= request.at and credit >= beat
        if offered is None:
            offered = next((q for q in (1 - last, last) if queues[q] and queues[q][0][0] <= cycle), None)
        if offered is not None and ready[cycle % len(ready)]:
            answered = requests[queues[offered].popleft()[1]]
            words = slice(answered.addr, answered.addr + answered.count)
            if answered.write:
                memory[words] = answered.wdata
            responses.append((cycle, answered.id, None if answered.write else tuple(int(w) for w in memory[words])))
            offered, last = None, offered
        if taken:
            credit -= 4 * request.count
            queues[int(request.fetch)].append((cycle + 1 + latency, len(accepted)))
            accepted.append(cycle)
        cycle += 1
    return Trace(tuple(accepted), tuple(responses))


def random_requests(config, rng, count, words):
    """A request sequence for comparing HBM models: instruction fetches, data reads and writes of 1 ..
    ``port_words`` words, some reading back what an earlier write stored, from every master ``id``,
    in back-to-back bursts and after gaps, within the first ``words`` words of HBM.

    Returns
    -------
    list of Request
    """
    width, ids, at, requests = port_words(config), 1 << id_bits(config), 0, []
    for _ in range(count):
        at += int(rng.choice([0, 0, 0, 1, 2, config.hbm_latency]))
        kind = rng.choice(["fetch", "read", "write", "read back"])
        length = width if kind == "fetch" else int(rng.integers(1, width + 1))
        addr = int(rng.integers(0, words - width))
        if kind == "read back":
            written = [r for r in requests if r.write]
            if written:
                addr, length = written[-1].addr, written[-1].count
        wdata = tuple(int(w) for w in rng.integers(0, 1 << 32, length, dtype=np.uint64)) if kind == "write" else ()
        requests.append(Request(at, addr, length, write=kind == "write", fetch=kind == "fetch",
                                id=int(rng.integers(0, ids)), wdata=wdata))
    return requests


class HbmPlayer(wiring.Component):
    """Presents a request sequence on its HBM port and logs each acceptance and response.

    It has the pNPU's ports, so the Verilator harness can run it in the pNPU's place. The first
    ``csr_we`` starts it in the mode ``csr_wdata`` names (:data:`NORMAL`, :data:`DROP_VALID`,
    :data:`CHANGE_PAYLOAD`); ``now`` counts cycles from the next one. Request ``i`` is presented
    (``valid`` held, payload unchanged) from cycle ``requests[i].at`` once request ``i - 1`` was
    taken; ``rsp.ready`` in cycle ``now`` is ``ready[now % len(ready)]``. ``idle`` rises when every
    request has been answered. ``csr_rdata`` shows the log word at ``csr_addr``: see
    :meth:`accept_address` and :meth:`response_address`, or read it all with :meth:`read_trace`.

    Parameters
    ----------
    config : ArchConfig
    requests : sequence of Request
    ready : sequence of bool
    """

    def __init__(self, config, requests, ready):
        self.config, self.requests, self.ready = config, list(requests), [bool(r) for r in ready]
        count = len(self.requests)
        self.word_bits = (1 + port_words(config)).bit_length()  # cycle, id, then the read words
        self.response_base = 1 << (count - 1).bit_length()
        address_bits = (self.response_base + (count << self.word_bits) - 1).bit_length()
        super().__init__({"csr_addr": In(address_bits), "csr_wdata": In(32), "csr_we": In(1),
                          "csr_rdata": Out(32), "idle": Out(1),
                          "hbm": Out(hbm_signature(config, tagged=True))})

    def accept_address(self, index):
        """Log address of the cycle request ``index`` was taken in."""
        return index

    def response_address(self, index, word):
        """Log address of word ``word`` (0: cycle, 1: id, then the read data) of response ``index``."""
        return self.response_base + (index << self.word_bits) + word

    def read_trace(self, csr_read, like):
        """The :class:`Trace` logged, read with ``csr_read(address) -> int``. Response ``i``'s data is
        cut as in response ``i`` of ``like`` (the reference): ``count`` words of a read, ``None`` for a
        write's acknowledgement."""
        accepted = tuple(csr_read(self.accept_address(i)) for i in range(len(self.requests)))
        responses = tuple((csr_read(self.response_address(i, 0)), csr_read(self.response_address(i, 1)),
                           None if words is None else tuple(csr_read(self.response_address(i, 2 + w))
                                                            for w in range(len(words))))
                          for i, (_, _, words) in enumerate(like.responses))
        return Trace(accepted, responses)

    def elaborate(self, platform):
        m = Module()
        count, width = len(self.requests), port_words(self.config)
        entry = data.StructLayout({"at": CYCLE_BITS, "request": request_layout(self.config)})
        m.submodules.rom = rom = Memory(shape=entry, depth=count, init=[
            {"at": r.at, "request": r.payload()} for r in self.requests])
        m.submodules.accepts = accepts = Memory(shape=CYCLE_BITS, depth=count, init=[])
        m.submodules.log = log = Memory(shape=data.ArrayLayout(32, 1 << self.word_bits), depth=count, init=[])
        rom_read, accept_write, log_write = rom.read_port(domain="comb"), accepts.write_port(), log.write_port()
        accept_read, log_read = accepts.read_port(domain="comb"), log.read_port(domain="comb")

        started, now, mode = Signal(), Signal(CYCLE_BITS), Signal(range(CHANGE_PAYLOAD + 1))
        index, answered = Signal(range(count + 1)), Signal(range(count + 1))
        pattern = Const(sum(bit << i for i, bit in enumerate(self.ready)), len(self.ready))
        phase = Signal(range(len(self.ready)))
        m.d.sync += started.eq(started | self.csr_we)
        with m.If(self.csr_we & ~started):
            m.d.sync += mode.eq(self.csr_wdata)
        with m.If(started):
            m.d.sync += [now.eq(now + 1), phase.eq(Mux(phase == len(self.ready) - 1, 0, phase + 1))]

        req, rsp, current = self.hbm.req, self.hbm.rsp, rom_read.data
        odd = now[0]
        m.d.comb += [rom_read.addr.eq(index),
                     req.valid.eq(started & (index < count) & (now >= current.at)
                                  & ~((mode == DROP_VALID) & odd)),
                     req.payload.eq(current.request),
                     req.payload.addr.eq(current.request.addr ^ ((mode == CHANGE_PAYLOAD) & odd)),
                     accept_write.addr.eq(index), accept_write.data.eq(now),
                     accept_write.en.eq(req.valid & req.ready)]
        with m.If(req.valid & req.ready):
            m.d.sync += index.eq(index + 1)

        m.d.comb += [rsp.ready.eq(started & pattern.bit_select(phase, 1)),
                     log_write.addr.eq(answered), log_write.en.eq(rsp.valid & rsp.ready),
                     log_write.data[0].eq(now), log_write.data[1].eq(rsp.payload.id)]
        m.d.comb += [log_write.data[2 + w].eq(rsp.payload.rdata[w]) for w in range(width)]
        with m.If(rsp.valid & rsp.ready):
            m.d.sync += answered.eq(answered + 1)

        base, address = self.response_base, self.csr_addr
        m.d.comb += [self.idle.eq(started & (index == count) & (answered == count)),
                     accept_read.addr.eq(address), log_read.addr.eq((address - base) >> self.word_bits),
                     self.csr_rdata.eq(Mux(address >= base,
                                           log_read.data.as_value().word_select(address[:self.word_bits], 32),
                                           accept_read.data))]
        return m



def spec_case(config, seed=0, count=48):
    """The request sequence, ``rsp.ready`` pattern and initial HBM words that the HBM models are
    compared on: ``count`` random requests within the first 16 beats of HBM, and a master that
    refuses about a third of the responses offered to it and then all for ``hbm_latency`` cycles (so
    responses of both queues back up and must take turns).

    Returns
    -------
    requests : list of Request
    ready : list of bool
    memory : numpy.ndarray of uint32
    """
    rng = np.random.default_rng(seed)
    words = 16 * port_words(config)
    requests = random_requests(config, rng, count, words)
    ready = [bool(r) for r in rng.random(29) < 0.7] + [False] * config.hbm_latency
    return requests, ready, rng.integers(0, 1 << 32, words, dtype=np.uint64).astype(np.uint32)


def timing_programs(config):
    """Programs whose cycle counts compare HBM models end to end on a whole pNPU: a GEMM (DMA data
    and instruction fetches) and two random programs, with their inputs.

    Returns
    -------
    list of (ProgramImage, dict)
    """
    from tcloud.firmware import gemm
    from tcloud.verif.random_programs import random_program

    rng = np.random.default_rng(9)
    m, k, n = config.me_rows + 1, 2 * config.me_rows + 3, config.me_cols - 1
    programs = [(gemm(config, m, k, n), {"A": rng.integers(-128, 128, (m, k), dtype=np.int8),
                                         "B": rng.integers(-128, 128, (k, n), dtype=np.int8)})]
    return programs + [random_program(config, seed, utops=6) for seed in (100, 101)]
