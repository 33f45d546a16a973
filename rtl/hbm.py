"""The HBM port: request/response streams and the arbiter that shares them between units.

HBM itself lives outside the RTL (in each backend's memory model). The protocol, which every HBM
model implements (:class:`tcloud.rtl.sim.HbmModel`, the Verilator harness, the cocotb responder):

* a request carries a word address, a word count (1 .. ``port_words``), a write flag, for writes
  the data (lane ``i`` is the word at ``addr + i``), a ``fetch`` flag marking instruction fetches,
  and an ``id`` naming the master that sent it;
* every request gets exactly one response carrying the request's ``id``: read data, or an
  acknowledgement for a write once it is performed (so a uTOp that saw its acknowledgements has
  really written HBM);
* instruction fetches and data requests form two queues, each answered in request order; when
  both have a response due, the queue not served last goes first (a response already offered stays
  offered until taken). The memory controller's second class keeps an engine's instruction fetch
  from queueing behind the DMA engines' data in flight (up to ``dma_outstanding`` beats each), which
  would otherwise bound every instruction fetch by the whole data queue, and taking turns keeps
  either class from starving the other;
* the HBM accepts at most one request per cycle and at most ``ArchConfig.hbm_bytes_per_cycle``
  bytes per cycle on average: a byte credit grows by that much each cycle up to two beats
  (``2 × hbm_port_bytes``), ``req.ready`` needs a beat of credit and an accepted request spends
  ``4 × count`` bytes; a request taken at the clock edge that ends cycle ``c`` is answered from
  cycle ``c + 1 + hbm_latency``, or once the previous response was taken if that is later.

Both streams follow the ``amaranth.lib.stream`` rules: once ``valid`` is high it stays high, with
the payload unchanged, until ``ready`` takes it.

The pNPU registers its HBM port in both directions (:class:`HbmRegisterSlice`), as an SoC
boundary is: a request leaves the cycle after the arbiter grants it and a response reaches its
master the cycle after the HBM offers it, and no output of the port depends combinationally on an
input.

Responses are routed by ``id``, so a master may keep as many requests in flight as it can track
(the DMA engines keep up to ``ArchConfig.dma_outstanding``) and the arbiter needs no record of
them: it is the tag the memory controller returns, as an AXI ID is.
"""

from amaranth.hdl import Module
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .arbiter import RoundRobin

HBM_ADDR_BITS = 30
SLICE_ROUND_TRIP = 2
"""Cycles the port's register slices add to a request's round trip (one each way)."""


def port_words(config):
    """32-bit words per HBM beat."""
    return config.hbm_port_bytes // 4


def master_count(config):
    """HBM masters of a pNPU: every engine (instruction fetch; DMA data too), the scheduler's
    front-end fetch and the host's scrubber."""
    return config.dma_count + config.me_count + config.ve_count + 2


def id_bits(config):
    """Width of the ``id`` tag."""
    return max(1, (master_count(config) - 1).bit_length())


def request_layout(config, tagged=True):
    """A request; ``tagged``: with the ``id`` the arbiter adds (the last field, so a master's untagged
    request is the low bits of the tagged one)."""
    members = {
        "addr": HBM_ADDR_BITS,
        "count": range(port_words(config) + 1),
        "write": 1,
        "wdata": data.ArrayLayout(32, port_words(config)),
        "fetch": 1,
    }
    if tagged:
        members["id"] = id_bits(config)
    return data.StructLayout(members)


def response_layout(config, tagged=True):
    """A response; ``tagged``: with the ``id`` of its request (the last field)."""
    members = {"rdata": data.ArrayLayout(32, port_words(config))}
    if tagged:
        members["id"] = id_bits(config)
    return data.StructLayout(members)


def hbm_signature(config, tagged=False):
    """An HBM port, seen from the master: requests out, responses in. A master's port is untagged;
    the port between the arbiter and the HBM (the pNPU's ``hbm``) carries the ``id`` tag."""
    return wiring.Signature({
        "req": Out(stream.Signature(request_layout(config, tagged))),
        "rsp": In(stream.Signature(response_layout(config, tagged))),
    })


class HbmArbiter(wiring.Component):
    """Share one HBM port between ``count`` masters.

    Requests are granted round-robin and tagged with the master's index; a grant offered to the HBM
    holds until the HBM takes it, so the payload never changes under ``valid & ~ready``. Each
    response goes to the master its ``id`` names.
    """

    def __init__(self, config, count):
        self.count = count
        members = {f"master{i}": In(hbm_signature(config)) for i in range(count)}
        members["hbm"] = Out(hbm_signature(config, tagged=True))
        super().__init__(members)

    def master(self, index):
        return getattr(self, f"master{index}")

    def elaborate(self, platform):
        m = Module()
        masters = [self.master(i) for i in range(self.count)]
        m.submodules.arbiter = arbiter = RoundRobin(self.count, holds=True)
        m.d.comb += [arbiter.requests[i].eq(p.req.valid) for i, p in enumerate(masters)]
        m.d.comb += [self.hbm.req.valid.eq(arbiter.valid),
                     arbiter.advance.eq(self.hbm.req.valid & self.hbm.req.ready),
                     arbiter.hold.eq(self.hbm.req.valid & ~self.hbm.req.ready)]
        for i, p in enumerate(masters):
            with m.If(arbiter.grant == i):
                m.d.comb += [self.hbm.req.payload.as_value()[:len(p.req.payload.as_value())].eq(p.req.payload),
                             self.hbm.req.payload.id.eq(i), p.req.ready.eq(self.hbm.req.ready)]
            m.d.comb += p.rsp.payload.eq(self.hbm.rsp.payload.as_value()[:len(p.rsp.payload.as_value())])
            with m.If(self.hbm.rsp.payload.id == i):
                m.d.comb += [p.rsp.valid.eq(self.hbm.rsp.valid), self.hbm.rsp.ready.eq(p.rsp.ready)]
        return m


class HbmRegisterSlice(wiring.Component):
    """A register slice on each stream of a tagged HBM port: ``inner`` faces the arbiter, ``outer``
    the HBM.

    Each direction is a two-entry FIFO, so it passes one beat per cycle, adds one cycle, and its
    ``ready`` is a register (a full slice refuses until it drains). The stream rules hold on both
    sides: a FIFO keeps what it offers until it is taken.
    """

    def __init__(self, config):
        super().__init__({"inner": In(hbm_signature(config, tagged=True)),
                          "outer": Out(hbm_signature(config, tagged=True))})

    def elaborate(self, platform):
        m = Module()
        for name, source, sink in (("request", self.inner.req, self.outer.req),
                                   ("response", self.outer.rsp, self.inner.rsp)):
            m.submodules[name] = queue = fifo.SyncFIFO(width=len(source.payload.as_value()), depth=2)
            m.d.comb += [queue.w_en.eq(source.valid), queue.w_data.eq(source.payload), source.ready.eq(queue.w_rdy),
                         sink.valid.eq(queue.r_rdy), sink.payload.eq(queue.r_data), queue.r_en.eq(sink.ready)]
        return m
