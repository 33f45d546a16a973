"""cocotb testbench components for the generated pNPU Verilog.

* :class:`HostDriver` drives the CSR host interface (commands, doorbell, status reads).
* :class:`HbmResponder` is the HBM bus-functional model: memory, random latency, and backpressure
  from a pause generator on ``req.ready``.
* :class:`HbmMonitor` watches every HBM handshake and checks the protocol (one response per
  request, in order, inside the memory).
* :class:`Scoreboard` compares the pNPU's outputs and counters with the golden model's.

Each component has ``start()``/``stop()`` and its own logger. Signal handshakes are sampled in the
read-only phase after the inputs of a cycle are driven, i.e. exactly what the next clock edge sees.
"""

import itertools
import logging
from collections import deque

import numpy as np
from amaranth.lib import data
from cocotb.triggers import ReadOnly, RisingEdge

from tcloud.isa import ContextStatus, FaultCode, csr
from tcloud.rtl.hbm import port_words, request_layout, response_layout



def random_pauses(rng, probability):
    """Endless booleans: ``True`` (pause) with ``probability``."""
    while True:
        yield bool(rng.random() < probability)


class HostDriver:
    """Drives ``csr_addr``/``csr_wdata``/``csr_we`` and reads ``csr_rdata``."""

    def __init__(self, dut):
        self.dut = dut
        self.log = logging.getLogger("tb.host")

    def start(self):
        self.dut.csr_we.value = 0
        self.dut.csr_addr.value = 0
        self.dut.csr_wdata.value = 0

    def stop(self):
        self.dut.csr_we.value = 0

    async def write(self, address, value):
        self.dut.csr_addr.value = address
        self.dut.csr_wdata.value = value
        self.dut.csr_we.value = 1
        await RisingEdge(self.dut.clk)
        self.dut.csr_we.value = 0

    async def read(self, address):
        self.dut.csr_addr.value = address
        await ReadOnly()
        value = int(self.dut.csr_rdata.value)
        await RisingEdge(self.dut.clk)
        return value

    async def command(self, instr, timeout=1_000_000):
        """Issue a ``ctx.*`` command and wait for it; return its :class:`CommandError`."""
        word = int.from_bytes(instr.encode(), "little")
        for i in range(4):
            await self.write(csr.GLOBAL[f"CMD{i}"], (word >> (32 * i)) & 0xFFFFFFFF)
        await self.write(csr.GLOBAL["DOORBELL"], 1)
        for _ in range(timeout):
            if not await self.read(csr.GLOBAL["DOORBELL"]):
                break
        error = csr.CommandError(await self.read(csr.GLOBAL["CMD_ERROR"]))
        self.log.debug("%s -> %s", instr.mnemonic, error.name)
        return error

    async def wait_idle(self, timeout):
        for cycle in range(timeout):
            await ReadOnly()
            if int(self.dut.idle.value):
                await RisingEdge(self.dut.clk)
                return cycle
            await RisingEdge(self.dut.clk)
        raise TimeoutError(f"the pNPU did not become idle within {timeout} cycles")

    async def context(self, index):
        read = lambda name: self.read(csr.context_csr(index, name))
        return {"status": ContextStatus(await read("STATUS")), "fault": FaultCode(await read("FAULT")),
                "fault_pc": await read("FAULT_PC"),
                "counters": csr.counter_report({name: await read(name) for counter in csr.COUNTERS
                                                for name in counter.registers})["counters"]}


class _Background:
    """A component whose work is one coroutine running beside the test."""

    _task = None

    def start(self):
        import cocotb

        self._task = cocotb.start_soon(self._run())

    def stop(self):
        if self._task is not None:
            self._task.cancel()
            self._task = None


class HbmResponder(_Background):
    """HBM model behind ``hbm__req__*``/``hbm__rsp__*``.

    Parameters
    ----------
    dut, config
    rng : numpy.random.Generator
    latency : (int, int)
        Inclusive range of cycles from acceptance to response.
    pause_probability : float
        Chance per cycle that ``req.ready`` is low.
    """

    def __init__(self, dut, config, rng, latency=(4, 12), pause_probability=0.3):
        self.dut, self.config, self.rng = dut, config, rng
        self.memory = np.zeros(config.hbm_bytes, dtype=np.uint8)
        self.latency, self.pauses = latency, random_pauses(rng, pause_probability)
        self.request, self.response_id = request_layout(config), response_layout(config)["id"].offset
        self.log = logging.getLogger("tb.hbm")

    async def _run(self):
        dut = self.dut
        queues, presented, last = (deque(), deque()), None, 0  # data, fetch: each in order, in turn when both due
        cycle = 0
        while True:
            accept = not next(self.pauses)
            dut.hbm__req__ready.value = accept
            if presented is None:
                due = [q for q in (1 - last, last) if queues[q] and queues[q][0][0] <= cycle]
                presented = due[0] if due else None
            head = queues[presented][0] if presented is not None else None
            dut.hbm__rsp__valid.value = head is not None
            if head is not None:
                words = [] if head[1] else self.memory[head[2] * 4:(head[2] + head[3]) * 4].view("<u4")
                dut.hbm__rsp__payload.value = (sum(int(w) << (32 * i) for i, w in enumerate(words))
                                               | head[5] << self.response_id)
            await ReadOnly()
            valid, taken = int(dut.hbm__req__valid.value), int(dut.hbm__rsp__ready.value)
            payload = int(dut.hbm__req__payload.value) if valid and accept else 0
            await RisingEdge(dut.clk)
            cycle += 1
            if head is not None and taken:
                queues[presented].popleft()
                presented, last = None, presented
                if head[1]:
                    words = [(head[4] >> (32 * i)) & 0xFFFFFFFF for i in range(head[3])]
                    self.memory[head[2] * 4:(head[2] + head[3]) * 4] = np.array(words, "<u4").view(np.uint8)
            if valid and accept:
                request = data.Const(self.request, payload)
                queue = queues[int(request.fetch)]
                delay = int(self.rng.integers(self.latency[0], self.latency[1] + 1))
                due = max(cycle + delay, queue[-1][0] if queue else 0)
                queue.append((due, bool(request.write), int(request.addr), int(request.count),
                              request.wdata.as_value().value, int(request.id)))

class HbmMonitor(_Background):
    """Records HBM handshakes and checks the protocol."""

    def __init__(self, dut, config):
        self.dut, self.config = dut, config
        self.requests, self.responses = [], 0
        self.errors = []
        self.log = logging.getLogger("tb.hbm_monitor")

    async def _run(self):
        dut, words, layout = self.dut, port_words(self.config), request_layout(self.config)
        for _ in itertools.count():
            await ReadOnly()
            if int(dut.hbm__req__valid.value) and int(dut.hbm__req__ready.value):
                request = data.Const(layout, int(dut.hbm__req__payload.value))
                addr, count = int(request.addr), int(request.count)
                if not 1 <= count <= words:
                    self.errors.append(f"request with count {count}")
                if (addr + count) * 4 > self.config.hbm_bytes:
                    self.errors.append(f"request beyond HBM at word {addr:#x}")
                self.requests.append((addr, count))
            if int(dut.hbm__rsp__valid.value) and int(dut.hbm__rsp__ready.value):
                self.responses += 1
                if self.responses > len(self.requests):
                    self.errors.append("a response without a request")
            await RisingEdge(dut.clk)

    def check_quiescent(self):
        """Raise if the protocol was violated or a request is still unanswered."""
        if self.responses != len(self.requests):
            self.errors.append(f"{len(self.requests)} requests but {self.responses} responses")
        if self.errors:
            raise AssertionError("HBM protocol errors: " + "; ".join(self.errors[:5]))


class Scoreboard:
    """Compares each case's RTL outputs, counters and fault codes with the golden model's."""

    def __init__(self):
        self.log = logging.getLogger("tb.scoreboard")
        self.cases = 0
        self.failures = []

    def start(self):
        self.cases, self.failures = 0, []

    def stop(self):
        self.log.info("%d cases, %d failures", self.cases, len(self.failures))

    def compare(self, name, expected_outputs, expected_counters, outputs, context):
        self.cases += 1
        if context["status"] != ContextStatus.DONE:
            self.failures.append(f"{name}: status {context['status'].name} fault {context['fault'].name}")
            return
        for key, value in expected_outputs.items():
            if not np.array_equal(outputs[key], value):
                self.failures.append(f"{name}: output {key} differs")
        if context["counters"] != expected_counters:
            self.failures.append(f"{name}: counters {context['counters']} != {expected_counters}")

    def compare_fault(self, name, expected_fault, context):
        """A case that must stop with ``expected_fault``."""
        self.cases += 1
        if context["status"] != ContextStatus.FAULTED or context["fault"] != expected_fault:
            self.failures.append(f"{name}: status {context['status'].name} fault {context['fault'].name}, "
                                 f"expected FAULTED {expected_fault.name}")

    def check(self):
        if self.failures:
            raise AssertionError("; ".join(self.failures[:5]))
