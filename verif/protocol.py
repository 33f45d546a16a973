"""Protocol checkers for Amaranth simulations: the ``amaranth.lib.stream`` rules and the HBM port's
request/response pairing (:mod:`tcloud.rtl.hbm`).

Add a checker's :meth:`process` with ``Simulator.add_process``; it samples at every clock edge and
records violations in :attr:`violations` (a test asserts the list is empty), so one run reports
every broken rule with its cycle instead of stopping at the first.
"""

from amaranth.hdl import Const, Value


class StreamChecker:
    """Once ``valid`` is high it stays high, with the payload unchanged, until ``ready`` takes it.

    Parameters
    ----------
    stream : stream interface
        Any object with ``valid``, ``ready`` and ``payload`` (an ``amaranth.lib.stream`` interface).
    name : str
        Used in the violation messages.
    """

    def __init__(self, stream, name):
        self.stream, self.name = stream, name
        self.violations = []
        self.transfers = 0

    def process(self):
        stream = self.stream

        async def check(ctx):
            offered, cycle = None, 0
            async for _, _, valid, ready, payload in ctx.tick().sample(
                    stream.valid, stream.ready, Value.cast(stream.payload)):
                if offered is not None and not valid:
                    self.violations.append(f"{self.name}: cycle {cycle}: valid dropped before the transfer")
                elif offered is not None and payload != offered:
                    self.violations.append(f"{self.name}: cycle {cycle}: payload changed under valid & ~ready "
                                           f"({offered:#x} -> {payload:#x})")
                offered = payload if valid and not ready else None
                self.transfers += bool(valid and ready)
                cycle += 1
        return check


class HbmPortChecker:
    """Both streams of an HBM port follow the stream rules, and no response arrives without an
    outstanding request (per ``id`` when ``per_id``: the port between the arbiter and the HBM).

    Parameters
    ----------
    port : hbm_signature interface
    name : str
    per_id : bool
        Count outstanding requests per ``id`` tag instead of in total (a tagged port).
    """

    def __init__(self, port, name, per_id=False):
        self.port, self.name, self.per_id = port, name, per_id
        self.requests = StreamChecker(port.req, f"{name}.req")
        self.responses = StreamChecker(port.rsp, f"{name}.rsp")
        self.pairing = []

    @property
    def violations(self):
        return self.requests.violations + self.responses.violations + self.pairing

    def processes(self):
        port, per_id = self.port, self.per_id

        req_id = port.req.payload.id if per_id else Const(0)
        rsp_id = port.rsp.payload.id if per_id else Const(0)

        async def pair(ctx):
            outstanding, cycle = {}, 0
            async for _, _, req, req_id_now, rsp, rsp_id_now in ctx.tick().sample(
                    port.req.valid & port.req.ready, req_id, port.rsp.valid & port.rsp.ready, rsp_id):
                if rsp:
                    if outstanding.get(rsp_id_now, 0) == 0:
                        self.pairing.append(f"{self.name}: cycle {cycle}: a response (id {rsp_id_now}) "
                                            f"without an outstanding request")
                    else:
                        outstanding[rsp_id_now] -= 1
                if req:
                    outstanding[req_id_now] = outstanding.get(req_id_now, 0) + 1
                cycle += 1
        return [self.requests.process(), self.responses.process(), pair]


__all__ = ["HbmPortChecker", "StreamChecker"]
