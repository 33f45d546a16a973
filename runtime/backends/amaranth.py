"""Devices that run the pNPU RTL: the CSR-level driver shared by all RTL backends, and the
Amaranth-simulator backend."""

from tcloud.isa import ContextStatus, FaultCode, get_config, parse_policy
from tcloud.isa.errors import HostCommandError
from tcloud.isa import csr

from .device import ContextInfo, DeviceError, check_hbm_range


class CsrDevice:
    """The :class:`~tcloud.runtime.backends.Device` protocol on top of four primitives a backend
    provides: ``csr_write``, ``csr_read``, ``run_until_idle(max_cycles)`` and
    ``run_cycles(count)``, plus direct HBM access."""

    command_timeout = 10_000_000
    command_poll_cycles = 64
    """Cycles run between checks that a host command has completed."""

    def host(self, command):
        word = int.from_bytes(command.encode(), "little")
        for i in range(4):
            self.csr_write(csr.GLOBAL[f"CMD{i}"], (word >> (32 * i)) & 0xFFFFFFFF)
        self.csr_write(csr.GLOBAL["DOORBELL"], 1)
        waited = 0
        while self.csr_read(csr.GLOBAL["DOORBELL"]):
            if waited > self.command_timeout:
                raise DeviceError(f"{command.mnemonic} did not complete within {waited} cycles")
            waited += self.run_cycles(self.command_poll_cycles)
        error = csr.CommandError(self.csr_read(csr.GLOBAL["CMD_ERROR"]))
        if error != csr.CommandError.OK:
            raise HostCommandError(f"the pNPU rejected {command!r}: {error.name}")

    def run(self, max_cycles=None):
        return self.run_until_idle(max_cycles)

    def set_policy(self, policy, *, quantum=None, starvation=None, harvest_cost=None, harvest_grace=None):
        for register, value in csr.config_writes(parse_policy(policy), quantum=quantum, starvation=starvation,
                                                 harvest_cost=harvest_cost, harvest_grace=harvest_grace):
            self.csr_write(register.offset, value)
            if self.csr_read(csr.GLOBAL["CONFIG_REFUSED"]):
                raise DeviceError(f"the pNPU refused {register.name} = {value}")

    def context(self, index):
        read = lambda name: self.csr_read(csr.context_csr(index, name))
        report = csr.counter_report({name: read(name) for counter in csr.COUNTERS for name in counter.registers})
        return ContextInfo(ContextStatus(read("STATUS")), FaultCode(read("FAULT")), read("FAULT_PC"), "",
                           report["counters"], report["timing"])

    @property
    def cycles(self):
        return self.csr_read(csr.GLOBAL["CYCLES_LO"]) | self.csr_read(csr.GLOBAL["CYCLES_HI"]) << 32

    def stats(self):
        """Cycles since reset and busy cycles per engine (counters are cumulative)."""
        busy = {name: self.csr_read(csr.engine_csr(e)) for e, name in enumerate(csr.engine_names(self.config))}
        return {"backend": self.name, "cycles": self.cycles, "engine_busy_cycles": busy}


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
