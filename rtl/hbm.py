"""The HBM port: request/response streams and the arbiter that shares them between units.

HBM itself lives outside the RTL (in each backend's memory model). The protocol:

* a request carries a word address, a word count (1 .. ``port_words``), a write flag and, for
  writes, the data (lane ``i`` is the word at ``addr + i``);
* every request gets exactly one response, in request order: read data, or an acknowledgement for a
  write once it is performed (so a uTOp that saw its acknowledgements has really written HBM).
"""

from amaranth.hdl import Module
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .arbiter import RoundRobin

HBM_ADDR_BITS = 30


def port_words(config):
    """32-bit words per HBM beat."""
    return config.hbm_port_bytes // 4


def request_layout(config):
    return data.StructLayout({
        "addr": HBM_ADDR_BITS,
        "count": range(port_words(config) + 1),
        "write": 1,
        "wdata": data.ArrayLayout(32, port_words(config)),
    })


def response_layout(config):
    return data.StructLayout({"rdata": data.ArrayLayout(32, port_words(config))})


def hbm_signature(config):
    """An HBM master: requests out, responses in."""
    return wiring.Signature({
        "req": Out(stream.Signature(request_layout(config))),
        "rsp": In(stream.Signature(response_layout(config))),
    })


MAX_OUTSTANDING = 8
"""Requests one master may have in flight (the DMA engines pipeline their reads)."""


class HbmArbiter(wiring.Component):
    """Share one HBM port between ``count`` masters, each with at most :data:`MAX_OUTSTANDING`
    requests in flight.

    Requests are granted round-robin; the index of each granted master enters a FIFO, and the
    response at the head of the HBM's in-order response stream goes to the master at its head.
    """

    def __init__(self, config, count):
        self.count = count
        members = {f"master{i}": In(hbm_signature(config)) for i in range(count)}
        members["hbm"] = Out(hbm_signature(config))
        super().__init__(members)

    def master(self, index):
        return getattr(self, f"master{index}")

    def elaborate(self, platform):
        m = Module()
        masters = [self.master(i) for i in range(self.count)]
        m.submodules.arbiter = arbiter = RoundRobin(self.count)
        m.submodules.order = order = fifo.SyncFIFOBuffered(width=max(1, (self.count - 1).bit_length()),
                                                           depth=self.count * MAX_OUTSTANDING)
        m.d.comb += [arbiter.requests[i].eq(p.req.valid) for i, p in enumerate(masters)]
        m.d.comb += [self.hbm.req.valid.eq(arbiter.valid & order.w_rdy),
                     order.w_data.eq(arbiter.grant),
                     order.w_en.eq(self.hbm.req.valid & self.hbm.req.ready),
                     arbiter.advance.eq(self.hbm.req.valid & self.hbm.req.ready)]
        for i, p in enumerate(masters):
            with m.If(arbiter.grant == i):
                m.d.comb += [self.hbm.req.payload.eq(p.req.payload),
                             p.req.ready.eq(self.hbm.req.ready & order.w_rdy)]
            m.d.comb += p.rsp.payload.eq(self.hbm.rsp.payload)
            with m.If(order.r_rdy & (order.r_data == i)):
                m.d.comb += [p.rsp.valid.eq(self.hbm.rsp.valid), self.hbm.rsp.ready.eq(p.rsp.ready)]
        m.d.comb += order.r_en.eq(self.hbm.rsp.valid & self.hbm.rsp.ready)
        return m
