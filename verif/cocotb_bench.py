"""cocotb testbench components for the generated pNPU Verilog.

* :class:`HbmBus` finds an HBM port's streams by name prefix (``HbmBus(dut, "hbm", config)`` finds
  ``hbm__req__valid``, ``hbm__req__payload``, ...) and decodes/encodes their payloads with the
  layouts of :mod:`tcloud.rtl.hbm`.
* :class:`HostDriver` drives the CSR host interface (commands, doorbell, status reads) with the
  transactions of :mod:`tcloud.isa.host_protocol`, as the runtime does.
* :class:`HbmResponder` is the HBM bus-functional model of :mod:`tcloud.rtl.hbm`'s protocol: memory,
  bandwidth credit, random latency and extra backpressure from a pause generator on ``req.ready``.
* :class:`HbmMonitor` turns every HBM request handshake into an :class:`HbmTransaction` and hands it
  to its subscribers (the scoreboard, the coverage collector).
* :class:`Scoreboard` checks each HBM write as it crosses the bus against the values the golden
  model writes there, and compares each case's memory, outputs and counters with the golden model's.

The protocol itself is checked by :class:`tcloud.verif.cocotb_protocol.HbmProtocolChecker`. Each
component has ``start()``/``stop()`` and its own logger. Signal handshakes are sampled in the
read-only phase after the inputs of a cycle are driven, i.e. exactly what the next clock edge sees.
"""

import logging
from collections import defaultdict, deque
from dataclasses import dataclass

import numpy as np
from amaranth.lib import data
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from tcloud.isa import ContextStatus, Machine, host_protocol
from tcloud.rtl.hbm import request_layout, response_layout
from tcloud.runtime import FunctionalDevice


def random_pauses(rng, probability):
    """Endless booleans: ``True`` (pause) with ``probability``."""
    while True:
        yield bool(rng.random() < probability)


class StreamBus:
    """One ``amaranth.lib.stream`` interface of a cocotb DUT: ``<prefix>__valid``, ``__ready`` and
    ``__payload``.

    Parameters
    ----------
    dut : cocotb handle
    prefix : str
    layout : amaranth.lib.data.Layout
        The payload's layout.

    Raises
    ------
    AttributeError
        Naming the signals the DUT lacks.
    """

    signals = ("valid", "ready", "payload")

    def __init__(self, dut, prefix, layout):
        missing = [f"{prefix}__{name}" for name in self.signals if not hasattr(dut, f"{prefix}__{name}")]
        if missing:
            raise AttributeError(f"{dut._name} has no {', '.join(missing)}")
        self.name, self.layout = prefix, layout
        self.valid, self.ready, self.payload = (getattr(dut, f"{prefix}__{name}") for name in self.signals)

    def read(self):
        """The payload as a ``data.Const`` of :attr:`layout`."""
        return data.Const(self.layout, int(self.payload.value))

    def drive(self, fields):
        """Drive the payload from a dict (or ``data.Const``) of :attr:`layout`'s fields."""
        const = fields if isinstance(fields, data.Const) else self.layout.const(fields)
        self.payload.value = const.as_value().value

    def fired(self):
        """``valid & ready`` (sample it in the read-only phase)."""
        return bool(int(self.valid.value) and int(self.ready.value))


class HbmBus:
    """An HBM port of a cocotb DUT: the request and response streams under ``prefix``.

    Parameters
    ----------
    dut : cocotb handle
    prefix : str
        The port's name, e.g. ``"hbm"``.
    config : ArchConfig
        Gives the payload layouts (:func:`tcloud.rtl.hbm.request_layout`, ``response_layout``).
    clock : str
        The clock signal of ``dut``.
    """

    def __init__(self, dut, prefix, config, clock="clk"):
        self.name, self.config = prefix, config
        self.req = StreamBus(dut, f"{prefix}__req", request_layout(config))
        self.rsp = StreamBus(dut, f"{prefix}__rsp", response_layout(config))
        self.clock = getattr(dut, clock)


class HostDriver:
    """Drives ``csr_addr``/``csr_wdata``/``csr_we`` and reads ``csr_rdata``.

    A write or a read takes one clock cycle. :meth:`command`, :meth:`set_policy`, :meth:`context`,
    :meth:`cycles` and :meth:`stats` issue the CSR transactions of :mod:`tcloud.isa.host_protocol`,
    the same as the runtime's :class:`~tcloud.runtime.backends.amaranth.CsrDevice`.

    Parameters
    ----------
    dut : cocotb handle
        The pNPU, with ``clk``, ``idle`` and the CSR port.
    """

    poll_cycles = 1
    """Cycles between two reads of ``DOORBELL`` while a command runs."""

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
        """Write a CSR (one cycle)."""
        self.dut.csr_addr.value = address
        self.dut.csr_wdata.value = value
        self.dut.csr_we.value = 1
        await RisingEdge(self.dut.clk)
        self.dut.csr_we.value = 0

    async def read(self, address):
        """Read a CSR (one cycle): its value in the cycle the address is driven."""
        self.dut.csr_addr.value = address
        await ReadOnly()
        value = int(self.dut.csr_rdata.value)
        await RisingEdge(self.dut.clk)
        return value

    async def wait(self, cycles):
        """A :class:`~tcloud.isa.host_protocol.Wait`: ``cycles`` cycles between two status reads,
        the first read's own cycle included; returns ``cycles``."""
        if cycles > 1:
            await ClockCycles(self.dut.clk, cycles - 1)
        return cycles

    async def _drive(self, operation):
        return await host_protocol.drive_async(operation, self.write, self.read, self.wait)

    async def command(self, instr, timeout=1_000_000):
        """Issue a ``ctx.*`` command and wait for it (:func:`tcloud.isa.host_protocol.command`).

        Parameters
        ----------
        instr : tcloud.isa.Instr
        timeout : int
            Cycles to wait for the doorbell to clear.

        Returns
        -------
        tcloud.isa.csr.CommandError

        Raises
        ------
        HostCommandTimeout
            If the doorbell is still rung after ``timeout`` cycles.
        """
        error = await self._drive(host_protocol.command(instr, timeout=timeout, poll_cycles=self.poll_cycles))
        self.log.debug("%s -> %s", instr.mnemonic, error.name)
        return error

    async def set_policy(self, policy, **values):
        """Program the scheduling policy and its parameters (:func:`tcloud.isa.host_protocol.set_policy`,
        whose keywords ``values`` takes).

        Raises
        ------
        ValueError
            For a value outside its register's range.
        tcloud.isa.host_protocol.ConfigRefused
            If the pNPU refused a write all the same.
        """
        await self._drive(host_protocol.set_policy(policy, **values))

    async def cycles(self):
        """Cycles since reset."""
        return await self._drive(host_protocol.cycles())

    async def stats(self, config):
        """Cycles since reset and busy cycles per engine of a pNPU of ``config``
        (:func:`tcloud.isa.host_protocol.stats`)."""
        return await self._drive(host_protocol.stats(config))

    async def wait_idle(self, timeout):
        for cycle in range(timeout):
            await ReadOnly()
            if int(self.dut.idle.value):
                await RisingEdge(self.dut.clk)
                return cycle
            await RisingEdge(self.dut.clk)
        raise TimeoutError(f"the pNPU did not become idle within {timeout} cycles")

    async def context(self, index):
        """Context ``index``'s registers: :func:`tcloud.isa.host_protocol.context`'s dict (``status``,
        ``fault``, ``fault_pc``, ``counters``, ``timing``) and ``run_cycles`` (``RUN_CYCLES``)."""
        info = await self._drive(host_protocol.context(index))
        return {**info, "run_cycles": info["timing"]["run_cycles"]}


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
    """HBM model behind an :class:`HbmBus`, as :mod:`tcloud.rtl.hbm` specifies it.

    ``req.ready`` needs a beat of bandwidth credit (``config.hbm_bytes_per_cycle`` a cycle, up to two
    beats) and no pause; a request is answered ``latency`` cycles after the cycle it was taken in,
    fetches and data each in order, the two queues in turn when both are due; a write takes effect
    when its acknowledgement is taken.

    Parameters
    ----------
    bus : HbmBus
    config : ArchConfig
    rng : numpy.random.Generator
    latency : (int, int)
        Inclusive range of cycles from acceptance to response; ``(config.hbm_latency,) * 2`` with
        ``pause_probability=0`` times exactly as :class:`tcloud.rtl.sim.HbmModel` does.
    pause_probability : float
        Chance per cycle that ``req.ready`` is low although there is credit.
    pauses : iterable of bool, optional
        Instead of random pauses: ``True`` in each cycle ``req.ready`` is to be low although there is
        credit (e.g. ``itertools.cycle`` of a pattern, for stalls of set lengths).
    """

    def __init__(self, bus, config, rng, latency=(4, 12), pause_probability=0.3, pauses=None):
        self.bus, self.config, self.rng = bus, config, rng
        self.memory = np.zeros(config.hbm_bytes, dtype=np.uint8)
        self.latency = latency
        self.pauses = iter(pauses) if pauses is not None else random_pauses(rng, pause_probability)
        self.log = logging.getLogger("tb.hbm")

    def words(self, addr, count):
        """A view of ``count`` 32-bit words at word address ``addr``."""
        return self.memory[addr * 4:(addr + count) * 4].view("<u4")

    async def _run(self):
        req, rsp, beat = self.bus.req, self.bus.rsp, self.config.hbm_port_bytes
        queues, presented, last = (deque(), deque()), None, 0  # data, fetch: each in order, in turn when both due
        cycle, credit = 0, 2.0 * beat
        while True:
            credit = min(credit + self.config.hbm_bytes_per_cycle, 2 * beat)
            accept = credit >= beat and not next(self.pauses)
            req.ready.value = accept
            if presented is None:
                due = [q for q in (1 - last, last) if queues[q] and queues[q][0][0] <= cycle]
                presented = due[0] if due else None
            head = queues[presented][0] if presented is not None else None
            rsp.valid.value = head is not None
            if head is not None:
                request = head[1]
                rdata = [] if request.write else [int(w) for w in self.words(int(request.addr), int(request.count))]
                rsp.drive({"rdata": rdata, "id": int(request.id)})
            await ReadOnly()
            taken = int(rsp.ready.value)
            request = req.read() if accept and int(req.valid.value) else None
            await RisingEdge(self.bus.clock)
            cycle += 1
            if head is not None and taken:
                queues[presented].popleft()
                presented, last = None, presented
                done = head[1]
                if done.write:
                    self.words(int(done.addr), int(done.count))[:] = list(done.wdata)[:int(done.count)]
            if request is not None:
                credit -= 4 * int(request.count)
                queue = queues[int(request.fetch)]
                delay = int(self.rng.integers(self.latency[0], self.latency[1] + 1))
                queue.append((max(cycle + delay, queue[-1][0] if queue else 0), request))


@dataclass(frozen=True)
class HbmTransaction:
    """One HBM request as the bus carried it.

    Attributes
    ----------
    cycle : int
        Cycle (since the monitor started) at whose end the HBM took the request.
    request : amaranth.lib.data.Const
        The payload, in :func:`tcloud.rtl.hbm.request_layout`.
    stalled : int
        Cycles the request waited with ``valid & ~ready``.
    """

    cycle: int
    request: data.Const
    stalled: int

    @property
    def kind(self):
        """``"fetch"``, ``"read"`` or ``"write"``."""
        return "fetch" if self.request.fetch else "write" if self.request.write else "read"


class HbmMonitor(_Background):
    """Turns every request handshake on an :class:`HbmBus` into an :class:`HbmTransaction` and calls
    each subscriber with it.

    Parameters
    ----------
    bus : HbmBus
    subscribers : iterable of callable
    """

    def __init__(self, bus, subscribers=()):
        self.bus, self.subscribers = bus, list(subscribers)
        self.transactions = 0
        self.log = logging.getLogger("tb.hbm_monitor")

    def subscribe(self, callback):
        """Call ``callback(transaction)`` for every request from now on."""
        self.subscribers.append(callback)

    async def _run(self):
        req, cycle, stalled = self.bus.req, 0, 0
        while True:
            await ReadOnly()
            if int(req.valid.value):
                if int(req.ready.value):
                    transaction = HbmTransaction(cycle, req.read(), stalled)
                    self.transactions += 1
                    stalled = 0
                    for callback in self.subscribers:
                        callback(transaction)
                else:
                    stalled += 1
            await RisingEdge(self.bus.clock)
            cycle += 1


class WriteRecordingMachine(Machine):
    """The golden model, also recording every value it writes to each HBM word.

    Attributes
    ----------
    hbm_writes : dict of int to set of int
        Physical word address → the 32-bit values written there, row by row (rows of a 2-D store
        whose stride is smaller than the row overwrite each other in row order, as the DMA does).
    """

    def __init__(self, config, **kwargs):
        super().__init__(config, **kwargs)
        self.hbm_writes = defaultdict(set)

    def write(self, ctx, space, addr, stride, data):
        super().write(ctx, space, addr, stride, data)
        if space == "hbm":
            for row, values in enumerate(data):
                first = (ctx.hbm.base + addr + row * stride) // 4
                for i, word in enumerate(np.ascontiguousarray(values).view("<u4")):
                    self.hbm_writes[first + i].add(int(word))


class GoldenDevice(FunctionalDevice):
    """A :class:`~tcloud.runtime.FunctionalDevice` on a :class:`WriteRecordingMachine`."""

    def __init__(self, config):
        super().__init__(config)
        self.machine = WriteRecordingMachine(self.config)


class Scoreboard:
    """Checks the pNPU against the golden model: every HBM write as it crosses the bus, and each
    case's memory, outputs, counters and fault codes.

    Subscribe :meth:`hbm_request` to an :class:`HbmMonitor`. Before a case, :meth:`expect_writes`
    gives the values the golden model writes per word and :meth:`expect_scrub` the windows a scrub
    zeroes; a write of any other value is a failure naming its cycle, address and master ``id``.
    """

    def __init__(self):
        self.log = logging.getLogger("tb.scoreboard")
        self.cases, self.writes_checked = 0, 0
        self.failures = []
        self.new_case()

    def start(self):
        self.cases, self.writes_checked, self.failures = 0, 0, []
        self.new_case()

    def stop(self):
        self.log.info("%d cases, %d HBM write words checked, %d failures", self.cases, self.writes_checked,
                      len(self.failures))

    def new_case(self):
        """Forget the previous case's expected writes."""
        self.allowed, self.zeroed = defaultdict(set), []

    def expect_writes(self, writes):
        """Allow the golden model's HBM writes: physical word address → set of values."""
        for address, values in writes.items():
            self.allowed[address] |= values

    def expect_scrub(self, base, size):
        """Allow zeros in ``size`` bytes at physical byte address ``base`` (a ``ctx.scrub``)."""
        self.zeroed.append((base // 4, (base + size) // 4))

    def _fail(self, message):
        self.log.error("%s", message)
        self.failures.append(message)

    def hbm_request(self, transaction):
        """Check a write request the monitor saw against the expected values."""
        request = transaction.request
        if not request.write:
            return
        addr = int(request.addr)
        for i, value in enumerate(list(request.wdata)[:int(request.count)]):
            self.writes_checked += 1
            word = addr + i
            if value in self.allowed.get(word, ()):
                continue
            if value == 0 and any(low <= word < high for low, high in self.zeroed):
                continue
            expected = sorted(self.allowed.get(word, ()))
            self._fail(f"cycle {transaction.cycle}: HBM write of {value:#010x} to byte {word * 4:#x} by master "
                       f"{int(request.id)}; the golden model writes "
                       f"{', '.join(f'{v:#010x}' for v in expected) if expected else 'nothing'} there")

    def compare(self, name, expected_outputs, expected_counters, outputs, context):
        self.cases += 1
        if context["status"] != ContextStatus.DONE:
            self._fail(f"{name}: status {context['status'].name} fault {context['fault'].name}")
            return
        for key, value in expected_outputs.items():
            if not np.array_equal(outputs[key], value):
                self._fail(f"{name}: output {key} differs")
        if context["counters"] != expected_counters:
            self._fail(f"{name}: counters {context['counters']} != {expected_counters}")

    def compare_fault(self, name, expected_fault, expected_pc, context):
        """A case that must stop with ``expected_fault`` at the context-relative ``expected_pc``."""
        self.cases += 1
        if context["status"] != ContextStatus.FAULTED or context["fault"] != expected_fault:
            self._fail(f"{name}: status {context['status'].name} fault {context['fault'].name}, "
                       f"expected FAULTED {expected_fault.name}")
        elif context["fault_pc"] != expected_pc:
            self._fail(f"{name}: {expected_fault.name} at pc {context['fault_pc']:#x}, the golden model's at "
                       f"{expected_pc:#x}")

    def compare_memory(self, name, base, expected, actual):
        """Compare a window's bytes at physical ``base`` after a case."""
        differ = np.flatnonzero(np.frombuffer(expected, np.uint8) != np.frombuffer(actual, np.uint8))
        if differ.size:
            self._fail(f"{name}: HBM differs from the golden model at {differ.size} bytes, the first at "
                       f"{base + int(differ[0]):#x}")

    def check(self):
        if self.failures:
            raise AssertionError("; ".join(self.failures[:5]))
