"""Running the pNPU in Amaranth's simulator: an HBM model and a command-driven simulation thread."""

import queue
import threading
from collections import deque

import numpy as np
from amaranth.sim import Simulator


class HbmModel:
    """Word-addressed HBM behind the pNPU's HBM port.

    Requests are accepted at most one per cycle (``accept_probability`` < 1 injects backpressure)
    and answered in order ``latency`` cycles later (plus up to ``jitter``); a write takes effect
    when its acknowledgement is delivered, so in-order reads after it see it.

    Parameters
    ----------
    size : int
        Bytes of memory.
    latency, jitter : int
        Cycles from acceptance to the response.
    accept_probability : float
        Chance that ``req.ready`` is high in a cycle.
    seed : int
    """

    def __init__(self, size, *, latency=8, jitter=0, accept_probability=1.0, seed=0):
        self.memory = np.zeros(size, dtype=np.uint8)
        self.latency, self.jitter, self.accept_probability = latency, jitter, accept_probability
        self.rng = np.random.default_rng(seed)
        self.stopped = False
        self.error = None

    def _words(self, addr, count):
        start, end = addr * 4, (addr + count) * 4
        if end > self.memory.size:
            raise IndexError(f"HBM access to words [{addr:#x}, {addr + count:#x}) beyond {self.memory.size} bytes")
        return self.memory[start:end].view("<u4")

    def serve(self, port):
        """Return a testbench coroutine serving ``port`` (a pNPU ``hbm`` member) until :attr:`stopped`."""
        req, rsp = port.req, port.rsp
        fields = (req.valid, req.payload.addr, req.payload.count, req.payload.write,
                  req.payload.wdata.as_value(), rsp.ready)

        async def process(ctx):
            pending = deque()
            cycle = 0
            while not self.stopped:
                accept = self.rng.random() < self.accept_probability
                ctx.set(req.ready, accept)
                head = pending[0] if pending and pending[0][0] <= cycle else None
                ctx.set(rsp.valid, head is not None)
                if head is not None and not head[1]:
                    data = self._words(head[2], head[3])
                    value = 0
                    for i, word in enumerate(data):
                        value |= int(word) << (32 * i)
                    ctx.set(rsp.payload.rdata.as_value(), value)
                _, _, valid, addr, count, write, wdata, taken = await ctx.tick().sample(*fields)
                cycle += 1
                if head is not None and taken:
                    pending.popleft()
                    if head[1]:
                        self._words(head[2], head[3])[:] = [(head[4] >> (32 * i)) & 0xFFFFFFFF
                                                            for i in range(head[3])]
                if accept and valid:
                    delay = self.latency + (int(self.rng.integers(0, self.jitter + 1)) if self.jitter else 0)
                    due = max(cycle + delay, pending[-1][0] if pending else 0)
                    pending.append((due, bool(write), int(addr), int(count), int(wdata)))
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


__all__ = ["HbmModel", "SimulationThread"]
