"""One host protocol (:mod:`tcloud.isa.host_protocol`) for the runtime and the cocotb bench: both
drivers issue the same CSR transactions for the same operation, and both raise on a timeout.

The drivers run against :class:`FakePnpu`, a register file that records every transaction; the
real buses are covered by the RTL tests (``test_rtl_pnpu``, ``test_runtime``) and the cocotb run
(``test_cocotb``: ``host_command_timeout``)."""

import asyncio

import pytest

from tcloud.isa import ContextStatus, FaultCode, HostCommandError, Instr, Policy, get_config, csr
from tcloud.isa.host_protocol import (ConfigRefused, HostCommandTimeout, HostProtocolError, Read, Wait, Write,
                                      command, drive)
from tcloud.runtime import DeviceError
from tcloud.runtime.backends.amaranth import CsrDevice
from tcloud.verif.cocotb_bench import HostDriver

CONFIG = get_config("tiny")
DOORBELL, CMD_ERROR, CONFIG_REFUSED = (csr.GLOBAL[name] for name in ("DOORBELL", "CMD_ERROR", "CONFIG_REFUSED"))
COMMAND = Instr("ctx.hbm", ctx=1, base=0x1000, size=0x2000)


class FakePnpu:
    """CSRs that answer as a pNPU's do and record every transaction.

    Parameters
    ----------
    busy_polls : int or None
        How many :class:`Wait` s a command runs for after the doorbell is rung; ``None``: forever.
    error : CommandError
        What ``CMD_ERROR`` reads.
    refuse : set of int
        Configuration register offsets whose writes ``CONFIG_REFUSED`` refuses.
    """

    def __init__(self, busy_polls=3, error=csr.CommandError.OK, refuse=()):
        self.busy_polls, self.error, self.refuse = busy_polls, error, set(refuse)
        self.busy, self.refused, self.transactions = 0, False, []
        self.values = {csr.context_csr(1, "STATUS"): ContextStatus.FAULTED,
                       csr.context_csr(1, "FAULT"): FaultCode.HBM_BOUNDS}

    def write(self, address, value):
        self.transactions.append(Write(address, value))
        if address == DOORBELL:
            self.busy = float("inf") if self.busy_polls is None else self.busy_polls
        self.refused = address in self.refuse

    def read(self, address):
        self.transactions.append(Read(address))
        if address == DOORBELL:
            return int(self.busy > 0)
        if address == CMD_ERROR:
            return self.error
        if address == CONFIG_REFUSED:
            return int(self.refused)
        return self.values.get(address, address * 2654435761 & 0xFFFFFFFF)

    def wait(self, cycles):
        self.transactions.append(Wait(cycles))
        self.busy -= 1
        return cycles


class FakeCsrDevice(CsrDevice):
    """The runtime's driver on a :class:`FakePnpu`."""

    name = "fake"
    config = CONFIG
    command_poll_cycles = 4

    def __init__(self, pnpu):
        self.csr_write, self.csr_read, self.run_cycles = pnpu.write, pnpu.read, pnpu.wait


class FakeHostDriver(HostDriver):
    """The cocotb bench's driver on a :class:`FakePnpu`, its bus coroutines replaced."""

    poll_cycles = FakeCsrDevice.command_poll_cycles

    def __init__(self, pnpu):
        super().__init__(dut=None)
        self.pnpu = pnpu

    async def write(self, address, value):
        self.pnpu.write(address, value)

    async def read(self, address):
        return self.pnpu.read(address)

    async def wait(self, cycles):
        return self.pnpu.wait(cycles)


OPERATIONS = {
    "command": (lambda device: device.host(COMMAND),
                lambda host: host.command(COMMAND, timeout=FakeCsrDevice.command_timeout)),
    "set_policy": (lambda device: device.set_policy("temporal", quantum=7, harvest_grace=3),
                   lambda host: host.set_policy("temporal", quantum=7, harvest_grace=3)),
    "context": (lambda device: device.context(1), lambda host: host.context(1)),
    "cycles": (lambda device: device.cycles, lambda host: host.cycles()),
    "stats": (lambda device: device.stats(), lambda host: host.stats(CONFIG)),
}


def runtime_transactions(operation, pnpu=None):
    pnpu = pnpu or FakePnpu()
    result = OPERATIONS[operation][0](FakeCsrDevice(pnpu))
    return pnpu.transactions, result


def cocotb_transactions(operation, pnpu=None):
    pnpu = pnpu or FakePnpu()
    result = asyncio.run(OPERATIONS[operation][1](FakeHostDriver(pnpu)))
    return pnpu.transactions, result


@pytest.mark.parametrize("operation", OPERATIONS)
def test_the_runtime_and_the_cocotb_bench_issue_the_same_transactions(operation):
    runtime, runtime_result = runtime_transactions(operation)
    cocotb, cocotb_result = cocotb_transactions(operation)
    assert runtime == cocotb and runtime
    if operation == "context":
        assert (runtime_result.status, runtime_result.fault, runtime_result.fault_pc) == (
            ContextStatus.FAULTED, FaultCode.HBM_BOUNDS, cocotb_result["fault_pc"])
        assert (runtime_result.counters, runtime_result.timing) == (cocotb_result["counters"], cocotb_result["timing"])
        assert cocotb_result["run_cycles"] == runtime_result.timing["run_cycles"]
    elif operation == "stats":
        assert runtime_result == {"backend": "fake", **cocotb_result}
    elif operation == "cycles":
        assert runtime_result == cocotb_result
        assert runtime_result == FakePnpu().read(csr.GLOBAL["CYCLES_LO"]) | FakePnpu().read(csr.GLOBAL["CYCLES_HI"]) << 32


def test_a_command_writes_the_four_words_rings_and_polls_the_doorbell_then_reads_the_error():
    transactions, _ = runtime_transactions("command")
    word = int.from_bytes(COMMAND.encode(), "little")
    assert transactions == ([Write(csr.GLOBAL[f"CMD{i}"], word >> 32 * i & 0xFFFFFFFF) for i in range(4)]
                            + [Write(DOORBELL, 1)] + [Read(DOORBELL), Wait(4)] * 3
                            + [Read(DOORBELL), Read(CMD_ERROR)])


def test_policy_writes_are_each_checked_for_a_refusal():
    transactions, _ = runtime_transactions("set_policy")
    assert transactions == [Write(csr.GLOBAL["POLICY"], Policy.TEMPORAL), Read(CONFIG_REFUSED),
                            Write(csr.GLOBAL["QUANTUM"], 7), Read(CONFIG_REFUSED),
                            Write(csr.GLOBAL["HARVEST_GRACE"], 3), Read(CONFIG_REFUSED)]


def test_a_command_that_never_completes_raises_in_both_drivers():
    timeout = 10
    device = FakeCsrDevice(FakePnpu(busy_polls=None))
    device.command_timeout = timeout
    with pytest.raises(DeviceError, match=f"ctx.hbm did not complete within {timeout} cycles") as raised:
        device.host(COMMAND)
    assert isinstance(raised.value.__cause__, HostCommandTimeout)
    assert raised.value.__cause__.waited == 12  # three polls of 4 cycles: the first at or past the timeout

    pnpu = FakePnpu(busy_polls=None)
    with pytest.raises(HostCommandTimeout, match=f"ctx.hbm did not complete within {timeout} cycles") as raised:
        asyncio.run(FakeHostDriver(pnpu).command(COMMAND, timeout=timeout))
    assert isinstance(raised.value, TimeoutError) and raised.value.waited == 12
    assert pnpu.transactions.count(Read(DOORBELL)) == 4


def test_a_refused_configuration_write_raises_in_both_drivers():
    refuse = {csr.GLOBAL["QUANTUM"]}
    with pytest.raises(DeviceError, match="refused QUANTUM = 7"):
        runtime_transactions("set_policy", FakePnpu(refuse=refuse))
    with pytest.raises(ConfigRefused, match="refused QUANTUM = 7"):
        cocotb_transactions("set_policy", FakePnpu(refuse=refuse))
    assert issubclass(ConfigRefused, HostProtocolError) and issubclass(HostCommandTimeout, HostProtocolError)


def test_a_rejected_command_raises_in_the_runtime_and_is_returned_to_the_bench():
    error = csr.CommandError.NO_SUCH_CONTEXT
    with pytest.raises(HostCommandError, match="NO_SUCH_CONTEXT"):
        runtime_transactions("command", FakePnpu(error=error))
    assert cocotb_transactions("command", FakePnpu(error=error))[1] == error


def test_a_command_polls_at_least_every_cycle():
    with pytest.raises(ValueError, match="poll_cycles"):
        drive(command(COMMAND, timeout=10, poll_cycles=0), None, None, None)
