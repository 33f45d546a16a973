"""The host's side of the pNPU's CSR interface (:mod:`tcloud.isa.csr`), written once for every driver.

Each operation of the host protocol is a generator that touches no hardware: it yields the bus
transactions it needs, :class:`Write`, :class:`Read` and :class:`Wait`, is sent each one's result and
returns the operation's result (sans-IO). A driver steps it with its own primitives: :func:`drive`
with synchronous ones (the runtime's RTL backends, :class:`tcloud.runtime.backends.amaranth.CsrDevice`),
:func:`drive_async` with coroutines (the cocotb testbench, :class:`tcloud.verif.cocotb_bench.HostDriver`).
So both issue the same transactions for the same operation, and a protocol change is made here once::

    error = drive(command(instr, timeout=10_000, poll_cycles=64), write, read, wait)

The operations: :func:`command` (a ``ctx.*`` command through ``CMD0..3`` and ``DOORBELL``),
:func:`set_policy` (the configuration registers, checking ``CONFIG_REFUSED``), :func:`context`
(a context's status, fault and counters), :func:`cycles` and :func:`stats` (cycles since reset, busy
cycles per engine).
"""

from dataclasses import dataclass

from . import csr
from .errors import TcloudError
from .table import ContextStatus, FaultCode, parse_policy


@dataclass(frozen=True)
class Write:
    """Write ``value`` to the CSR at byte offset ``address``; the result is ``None``."""

    address: int
    value: int


@dataclass(frozen=True)
class Read:
    """Read the CSR at byte offset ``address``; the result is its value (an ``int``)."""

    address: int


@dataclass(frozen=True)
class Wait:
    """Let ``cycles`` clock cycles pass between two status reads, counting the first read's own cycle
    on a bus where a read takes one (the cocotb bench's; the runtime's reads take none). The result is
    the number of cycles that passed."""

    cycles: int


class HostProtocolError(TcloudError):
    """The pNPU did not do what the host asked of its CSRs (base class of this module's errors)."""


class HostCommandTimeout(HostProtocolError, TimeoutError):
    """A host command did not complete (the doorbell stayed rung) within its timeout.

    Attributes
    ----------
    mnemonic : str
        The command's.
    timeout : int
        The cycles it was given.
    waited : int
        The cycles it had run, at least ``timeout``, when the host gave up.
    """

    def __init__(self, mnemonic, timeout, waited):
        self.mnemonic, self.timeout, self.waited = mnemonic, timeout, waited
        super().__init__(f"{mnemonic} did not complete within {timeout} cycles (the doorbell was still "
                         f"rung after {waited})")


class ConfigRefused(HostProtocolError):
    """The pNPU refused a configuration register write (``CONFIG_REFUSED`` read 1 after it).

    Attributes
    ----------
    register : tcloud.isa.csr.Csr
    value : int
    """

    def __init__(self, register, value):
        self.register, self.value = register, value
        super().__init__(f"the pNPU refused {register.name} = {value}")


def command(instr, *, timeout, poll_cycles=1):
    """Issue a ``ctx.*`` command and wait for it to complete.

    Writes the instruction's four words to ``CMD0..3`` and 1 to ``DOORBELL``, then reads ``DOORBELL``
    every ``poll_cycles`` cycles until it reads 0, and reads ``CMD_ERROR``.

    Parameters
    ----------
    instr : tcloud.isa.Instr
        A host (``ctx.*``) command.
    timeout : int
        Cycles to wait for the doorbell to clear.
    poll_cycles : int
        Cycles between two reads of ``DOORBELL`` (at least 1).

    Returns
    -------
    tcloud.isa.csr.CommandError
        ``OK``, or why the pNPU rejected the command.

    Raises
    ------
    HostCommandTimeout
        If the doorbell is still rung ``timeout`` cycles after the first read.
    """
    if poll_cycles < 1:
        raise ValueError(f"poll_cycles must be at least 1, got {poll_cycles}")
    word = int.from_bytes(instr.encode(), "little")
    for i in range(4):
        yield Write(csr.GLOBAL[f"CMD{i}"], (word >> (32 * i)) & 0xFFFFFFFF)
    yield Write(csr.GLOBAL["DOORBELL"], 1)
    waited = 0
    while (yield Read(csr.GLOBAL["DOORBELL"])):
        if waited >= timeout:
            raise HostCommandTimeout(instr.mnemonic, timeout, waited)
        waited += yield Wait(poll_cycles)
    return csr.CommandError((yield Read(csr.GLOBAL["CMD_ERROR"])))


def set_policy(policy, *, quantum=None, starvation=None, harvest_cost=None, harvest_grace=None):
    """Program the scheduling policy and its parameters, checking ``CONFIG_REFUSED`` after each write.

    Parameters
    ----------
    policy : tcloud.isa.Policy or str
    quantum, starvation, harvest_cost, harvest_grace : int, optional
        The registers of the same names; ``None`` leaves one as it is.

    Raises
    ------
    ValueError
        Before any write, if a value is outside its register's range
        (:func:`tcloud.isa.csr.config_writes`).
    ConfigRefused
        If the pNPU refused a write all the same.
    """
    writes = csr.config_writes(parse_policy(policy), quantum=quantum, starvation=starvation,
                               harvest_cost=harvest_cost, harvest_grace=harvest_grace)
    for register, value in writes:
        yield Write(register.offset, value)
        if (yield Read(csr.GLOBAL["CONFIG_REFUSED"])):
            raise ConfigRefused(register, value)


def context(index):
    """Read one context's registers.

    Parameters
    ----------
    index : int

    Returns
    -------
    dict
        ``status`` (:class:`~tcloud.isa.ContextStatus`), ``fault`` (:class:`~tcloud.isa.FaultCode`),
        ``fault_pc`` (int), and ``counters`` and ``timing`` as :func:`tcloud.isa.csr.counter_report`
        nests them.
    """
    read = lambda name: Read(csr.context_csr(index, name))
    status = ContextStatus((yield read("STATUS")))
    fault = FaultCode((yield read("FAULT")))
    fault_pc = yield read("FAULT_PC")
    words = {}
    for counter in csr.COUNTERS:
        for name in counter.registers:
            words[name] = yield read(name)
    return {"status": status, "fault": fault, "fault_pc": fault_pc, **csr.counter_report(words)}


def cycles():
    """Read the cycles since reset (``CYCLES_LO``, then ``CYCLES_HI``).

    Returns
    -------
    int
    """
    return (yield Read(csr.GLOBAL["CYCLES_LO"])) | (yield Read(csr.GLOBAL["CYCLES_HI"])) << 32


def stats(config):
    """Read the cycles since reset and each engine's busy cycles (all cumulative).

    Parameters
    ----------
    config : tcloud.isa.ArchConfig
        Names the engines (:func:`tcloud.isa.csr.engine_names`).

    Returns
    -------
    dict
        ``cycles`` (int) and ``engine_busy_cycles`` (engine name to int).
    """
    busy = {}
    for engine, name in enumerate(csr.engine_names(config)):
        busy[name] = yield Read(csr.engine_csr(engine))
    return {"cycles": (yield from cycles()), "engine_busy_cycles": busy}


def _perform(request, write, read, wait):
    if isinstance(request, Write):
        return write(request.address, request.value)
    if isinstance(request, Read):
        return read(request.address)
    if isinstance(request, Wait):
        return wait(request.cycles)
    raise TypeError(f"not a host protocol transaction: {request!r}")


def drive(operation, write, read, wait):
    """Run a host protocol operation with synchronous primitives.

    Parameters
    ----------
    operation : generator
        One of this module's operations, e.g. ``command(instr, timeout=1000)``.
    write : callable
        ``write(address, value)``.
    read : callable
        ``read(address) -> int``.
    wait : callable
        ``wait(cycles) -> int``: let ``cycles`` cycles pass (:class:`Wait`) and return how many did.

    Returns
    -------
    object
        The operation's result.
    """
    try:
        request = next(operation)
        while True:
            request = operation.send(_perform(request, write, read, wait))
    except StopIteration as stop:
        return stop.value


async def drive_async(operation, write, read, wait):
    """Run a host protocol operation with coroutine primitives (a cocotb testbench's).

    Parameters
    ----------
    operation : generator
        One of this module's operations.
    write, read, wait : coroutine function
        As :func:`drive`'s, awaited.

    Returns
    -------
    object
        The operation's result.
    """
    try:
        request = next(operation)
        while True:
            request = operation.send(await _perform(request, write, read, wait))
    except StopIteration as stop:
        return stop.value
