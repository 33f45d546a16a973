"""Devices that run the pNPU RTL: the CSR-level driver shared by all RTL backends, and the
Amaranth-simulator backend."""

from tcloud.isa import get_config, host_protocol
from tcloud.isa.errors import HostCommandError
from tcloud.isa.csr import CommandError

from .device import ContextInfo, DeviceError, check_hbm_range


class CsrDevice:
    """The :class:`~tcloud.runtime.backends.Device` protocol on top of four primitives a backend
    provides: ``csr_write``, ``csr_read``, ``run_until_idle(max_cycles)`` and
    ``run_cycles(count)``, plus direct HBM access.

    The CSR transactions are :mod:`tcloud.isa.host_protocol`'s, which the cocotb testbench's
    :class:`~tcloud.verif.cocotb_bench.HostDriver` issues too; this class steps them synchronously
    (a read takes no cycle, a :class:`~tcloud.isa.host_protocol.Wait` runs ``run_cycles``) and raises
    :class:`~tcloud.runtime.DeviceError` where the protocol raises a
    :class:`~tcloud.isa.host_protocol.HostProtocolError`.
    """

    command_timeout = 10_000_000
    """Cycles a host command may take before :meth:`host` raises."""
    command_poll_cycles = 64
    """Cycles run between checks that a host command has completed."""

    def _drive(self, operation):
        try:
            return host_protocol.drive(operation, self.csr_write, self.csr_read, self.run_cycles)
        except host_protocol.HostProtocolError as error:
            raise DeviceError(str(error)) from error

    def host(self, command):
        """Execute one privileged ``ctx.*`` command.

        Raises
        ------
        HostCommandError
            If the pNPU rejected it (the message names the :class:`~tcloud.isa.csr.CommandError`).
        DeviceError
            If it did not complete within :attr:`command_timeout` cycles.
        """
        error = self._drive(host_protocol.command(command, timeout=self.command_timeout,
                                                  poll_cycles=self.command_poll_cycles))
        if error != CommandError.OK:
            raise HostCommandError(f"the pNPU rejected {command!r}: {error.name}")

    def run(self, max_cycles=None):
        return self.run_until_idle(max_cycles)

    def set_policy(self, policy, *, quantum=None, starvation=None, harvest_cost=None, harvest_grace=None):
        """Program the scheduling policy (:func:`tcloud.isa.host_protocol.set_policy`); raises
        ``ValueError`` for a value outside its register's range, :class:`DeviceError` if the pNPU
        refuses one all the same."""
        self._drive(host_protocol.set_policy(policy, quantum=quantum, starvation=starvation,
                                             harvest_cost=harvest_cost, harvest_grace=harvest_grace))

    def context(self, index):
        """The :class:`~tcloud.runtime.ContextInfo` of context ``index``, read from its CSRs."""
        info = self._drive(host_protocol.context(index))
        return ContextInfo(info["status"], info["fault"], info["fault_pc"], "", info["counters"], info["timing"])

    @property
    def cycles(self):
        """Cycles since reset."""
        return self._drive(host_protocol.cycles())

    def stats(self):
        """Cycles since reset and busy cycles per engine (counters are cumulative)."""
        return {"backend": self.name, **self._drive(host_protocol.stats(self.config))}


class AmaranthDevice(CsrDevice):
    """The pNPU RTL in Amaranth's simulator (exact and slow: for unit tests on ``tiny``).

    Parameters
    ----------
    config : ArchConfig or str
    hbm_latency : int, optional
        HBM response latency in cycles; default the configuration's ``hbm_latency``.
    hbm_jitter : int
        Random extra latency, 0 .. ``hbm_jitter`` cycles.
    hbm_accept_probability : float
        Below 1, the HBM randomly refuses requests (backpressure).
    seed : int
    vcd : path, optional
        Write a waveform of the whole session here.
    """

    name = "amaranth"

    def __init__(self, config, *, hbm_latency=None, hbm_jitter=0, hbm_accept_probability=1.0, seed=0, vcd=None):
        from tcloud.rtl.pnpu import PNPU
        from tcloud.rtl.sim import HbmModel, SimulationThread

        self.config = get_config(config)
        self.dut = PNPU(self.config)
        self.hbm_model = HbmModel(self.config, latency=hbm_latency, jitter=hbm_jitter,
                                  accept_probability=hbm_accept_probability, seed=seed)
        self.hbm_worst_latency = self.hbm_model.latency + hbm_jitter
        self._sim = SimulationThread(self.dut, background=[self.hbm_model.serve(self.dut.hbm)],
                                     on_stop=[self._stop_hbm], vcd_path=vcd)

    def _stop_hbm(self):
        self.hbm_model.stopped = True

    def close(self):
        """Stop the simulation thread (also done when the device is garbage-collected)."""
        self._sim.close()

    def __del__(self):
        sim = getattr(self, "_sim", None)
        if sim is not None:
            sim.close()

    def write_hbm(self, address, data):
        check_hbm_range(self.config, address, len(data))
        self.hbm_model.memory[address:address + len(data)] = memoryview(bytes(data))

    def read_hbm(self, address, size):
        check_hbm_range(self.config, address, size)
        return self.hbm_model.memory[address:address + size].tobytes()

    def csr_write(self, address, value):
        dut = self.dut

        async def write(ctx):
            ctx.set(dut.csr_addr, address)
            ctx.set(dut.csr_wdata, value)
            ctx.set(dut.csr_we, 1)
            await ctx.tick()
            ctx.set(dut.csr_we, 0)
        self._sim.call(write)

    def csr_read(self, address):
        dut = self.dut

        async def read(ctx):
            ctx.set(dut.csr_addr, address)
            return ctx.get(dut.csr_rdata)
        return self._sim.call(read)

    def run_cycles(self, count):
        async def run(ctx):
            for _ in range(count):
                await ctx.tick()
            return count
        return self._sim.call(run)

    def run_until_idle(self, max_cycles=None):
        dut = self.dut

        async def run(ctx):
            cycles = 0
            await ctx.tick()
            while not ctx.get(dut.idle):
                if max_cycles is not None and cycles >= max_cycles:
                    return False
                await ctx.tick()
                cycles += 1
            return True
        return self._sim.call(run)
