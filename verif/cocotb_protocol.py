"""Protocol checkers for cocotb benches: the ``amaranth.lib.stream`` rules and the HBM port's
request/response pairing (:mod:`tcloud.rtl.hbm`), the cocotb counterparts of
:mod:`tcloud.verif.protocol`.

A checker samples its signals in the read-only phase of every cycle and records each violation, with
its cycle, in :attr:`violations`; :meth:`HbmProtocolChecker.check` raises them all at the end of a
test, so one run reports every broken rule instead of stopping at the first.
"""

import logging

from cocotb.triggers import ReadOnly, RisingEdge

from tcloud.rtl.hbm import port_words

from .cocotb_bench import _Background


class StreamChecker(_Background):
    """Once ``valid`` is high it stays high, with the payload unchanged, until ``ready`` takes it.

    Parameters
    ----------
    stream : tcloud.verif.cocotb_bench.StreamBus
    clock : cocotb handle
    """

    def __init__(self, stream, clock):
        self.stream, self.clock, self.name = stream, clock, stream.name
        self.violations, self.transfers = [], 0
        self.log = logging.getLogger(f"tb.check.{self.name}")

    def _violation(self, cycle, message):
        self.log.error("cycle %d: %s", cycle, message)
        self.violations.append(f"{self.name}: cycle {cycle}: {message}")

    async def _run(self):
        stream, offered, cycle = self.stream, None, 0
        while True:
            await ReadOnly()
            valid, ready = int(stream.valid.value), int(stream.ready.value)
            payload = int(stream.payload.value) if valid else None
            if offered is not None and not valid:
                self._violation(cycle, "valid dropped before the transfer")
            elif offered is not None and payload != offered:
                self._violation(cycle, f"payload changed under valid & ~ready ({offered:#x} -> {payload:#x})")
            offered = payload if valid and not ready else None
            self.transfers += bool(valid and ready)
            await RisingEdge(self.clock)
            cycle += 1


class HbmProtocolChecker(_Background):
    """Both streams of an :class:`~tcloud.verif.cocotb_bench.HbmBus` follow the stream rules; every
    request asks for 1 .. ``port_words`` words inside the HBM; every response answers an outstanding
    request of its ``id``; and at the end (:meth:`check`) every request has been answered.

    Parameters
    ----------
    bus : tcloud.verif.cocotb_bench.HbmBus
    """

    def __init__(self, bus):
        self.bus = bus
        self.streams = [StreamChecker(bus.req, bus.clock), StreamChecker(bus.rsp, bus.clock)]
        self.pairing, self.outstanding = [], {}
        self.log = logging.getLogger(f"tb.check.{bus.name}")

    @property
    def violations(self):
        return [v for stream in self.streams for v in stream.violations] + self.pairing

    def start(self):
        super().start()
        for stream in self.streams:
            stream.start()

    def stop(self):
        super().stop()
        for stream in self.streams:
            stream.stop()

    def _violation(self, cycle, message):
        self.log.error("cycle %d: %s", cycle, message)
        self.pairing.append(f"{self.bus.name}: cycle {cycle}: {message}")

    async def _run(self):
        req, rsp, cycle = self.bus.req, self.bus.rsp, 0
        words, hbm_words = port_words(self.bus.config), self.bus.config.hbm_bytes // 4
        while True:
            await ReadOnly()
            if rsp.fired():
                tag = int(rsp.read().id)
                if self.outstanding.get(tag, 0) == 0:
                    self._violation(cycle, f"a response (id {tag}) without an outstanding request")
                else:
                    self.outstanding[tag] -= 1
            if req.fired():
                request = req.read()
                addr, count, tag = int(request.addr), int(request.count), int(request.id)
                if not 1 <= count <= words:
                    self._violation(cycle, f"a request (id {tag}) for {count} words")
                if addr + count > hbm_words:
                    self._violation(cycle, f"a request (id {tag}) beyond the HBM at word {addr:#x}")
                self.outstanding[tag] = self.outstanding.get(tag, 0) + 1
            await RisingEdge(self.bus.clock)
            cycle += 1

    def check(self, quiescent=True):
        """Raise ``AssertionError`` listing the violations (and, when ``quiescent``, the requests still
        unanswered)."""
        violations = self.violations
        if quiescent:
            violations += [f"{self.bus.name}: {count} request(s) of id {tag} unanswered"
                           for tag, count in sorted(self.outstanding.items()) if count]
        if violations:
            raise AssertionError(f"{len(violations)} HBM protocol violation(s): " + "; ".join(violations[:8]))
