"""Running the pNPU in Amaranth's simulator: an HBM model and a command-driven simulation thread."""

import queue
import threading
from collections import deque

import numpy as np
from amaranth.lib import data
from amaranth.sim import Simulator


class ProtocolError(AssertionError):
    """A stream broke the ``amaranth.lib.stream`` rules (see :mod:`tcloud.rtl.hbm`)."""


class HbmModel:
    """Word-addressed HBM behind the pNPU's HBM port, as :mod:`tcloud.rtl.hbm` specifies it.

    Requests are accepted at most one per cycle and within the configured bandwidth (a byte credit
    of ``bytes_per_cycle`` a cycle, up to two beats; ``accept_probability`` < 1 adds random
    backpressure) and answered ``latency`` cycles later (plus up to ``jitter``), each response
    carrying its request's ``id``, instruction fetches and data each in order, the two queues in
    turn when both have a response due; a write takes effect when its acknowledgement is
    delivered, so in-order reads after it see it. A request stream that drops ``valid`` or changes
    its payload before the model took it raises :class:`ProtocolError`.

    Parameters
    ----------
    config : ArchConfig
        Memory size (``hbm_bytes``), beat (``hbm_port_bytes``) and bandwidth
        (``hbm_bytes_per_cycle``).
    latency : int, optional
        Cycles from acceptance to the response; default ``config.hbm_latency``.
    jitter : int
        Random extra cycles, 0 .. ``jitter``.
    accept_probability : float
        Chance that ``req.ready`` is high in a cycle with enough credit.
    seed : int
    """

    def __init__(self, config, *, latency=None, jitter=0, accept_probability=1.0, seed=0):
        self.memory = np.zeros(config.hbm_bytes, dtype=np.uint8)
        self.latency = config.hbm_latency if latency is None else latency
        self.jitter, self.accept_probability = jitter, accept_probability
        self.port_bytes, self.bytes_per_cycle = config.hbm_port_bytes, config.hbm_bytes_per_cycle
        self.rng = np.random.default_rng(seed)
        self.stopped = False

    def _words(self, addr, count):
        start, end = addr * 4, (addr + count) * 4
        if end > self.memory.size:
            raise IndexError(f"HBM access to words [{addr:#x}, {addr + count:#x}) beyond {self.memory.size} bytes")
        return self.memory[start:end].view("<u4")

    def serve(self, port):
        """Return a testbench coroutine serving ``port`` (a pNPU ``hbm`` member) until :attr:`stopped`."""
        req, rsp = port.req, port.rsp
        fields = (req.valid, req.payload.as_value(), rsp.ready)
        layout = req.payload.shape()

        async def process(ctx):
            queues = (deque(), deque())  # data, fetch: each answered in order
            cycle, credit, offered, presented, last = 0, 2.0 * self.port_bytes, None, None, 0
            while not self.stopped:
                credit = min(credit + self.bytes_per_cycle, 2 * self.port_bytes)
                accept = credit >= self.port_bytes and self.rng.random() < self.accept_probability
                ctx.set(req.ready, accept)
                if presented is None:
                    due = [q for q in (1 - last, last) if queues[q] and queues[q][0][0] <= cycle]
                    presented = due[0] if due else None
                head = queues[presented][0] if presented is not None else None
                ctx.set(rsp.valid, head is not None)
                if head is not None:
                    ctx.set(rsp.payload.id, head[5])
                    if not head[1]:
                        value = 0
                        for i, word in enumerate(self._words(head[2], head[3])):
                            value |= int(word) << (32 * i)
                        ctx.set(rsp.payload.rdata.as_value(), value)
                _, _, valid, payload, taken = await ctx.tick().sample(*fields)
                if offered is not None and (not valid or payload != offered):
                    raise ProtocolError(f"cycle {cycle}: the HBM request stream "
                                        f"{'dropped valid' if not valid else 'changed its payload'} "
                                        f"before the request was taken")
                offered = payload if valid and not accept else None
                cycle += 1
                if head is not None and taken:
                    queues[presented].popleft()
                    presented, last = None, presented
                    if head[1]:
                        self._words(head[2], head[3])[:] = [(head[4] >> (32 * i)) & 0xFFFFFFFF
                                                            for i in range(head[3])]
                if accept and valid:
                    request = data.Const(layout, payload)
                    credit -= 4 * request.count
                    queue = queues[int(request.fetch)]
                    delay = self.latency + (int(self.rng.integers(0, self.jitter + 1)) if self.jitter else 0)
                    due = max(cycle + delay, queue[-1][0] if queue else 0)
                    queue.append((due, bool(request.write), int(request.addr), int(request.count),
                                  request.wdata.as_value().value, int(request.id)))
        return process


class SimulationThread:
    """Run an Amaranth simulation in a thread, driven by calls from the caller's thread.

    ``call(fn)`` runs ``await fn(ctx)`` inside the simulation (where simulated time advances only
    when ``fn`` awaits ticks) and returns its result or re-raises its exception. Between calls
    simulated time stands still, so the design's state persists exactly as on a real device.
    """

    def __init__(self, dut, background=(), on_stop=(), vcd_path=None):
        self._requests, self._replies = queue.Queue(), queue.Queue()
        self._background, self._on_stop = list(background), list(on_stop)
        sim = Simulator(dut)
        sim.add_clock(1e-9)
        sim.add_testbench(self._driver)
        for process in self._background:
            sim.add_testbench(process)
        self._sim, self._vcd_path = sim, vcd_path
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            if self._vcd_path:
                with self._sim.write_vcd(str(self._vcd_path)):
                    self._sim.run()
            else:
                self._sim.run()
        except BaseException as exc:  # report to the caller waiting for a reply
            self._replies.put((None, exc))

    async def _driver(self, ctx):
        while True:
            fn = self._requests.get()
            if fn is None:
                for stop in self._on_stop:
                    stop()
                return
            try:
                self._replies.put((await fn(ctx), None))
            except Exception as exc:
                self._replies.put((None, exc))

    def call(self, fn):
        if not self._thread.is_alive():
            raise RuntimeError("the simulation thread has stopped")
        self._requests.put(fn)
        result, error = self._replies.get()
        if error is not None:
            raise error
        return result

    def close(self):
        if self._thread.is_alive():
            self._requests.put(None)
            self._thread.join(timeout=60)


__all__ = ["HbmModel", "ProtocolError", "SimulationThread"]
