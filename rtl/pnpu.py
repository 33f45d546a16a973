"""The physical NPU: engines, scratchpad, HBM port, context table, uTOp scheduler and host CSRs.

The scheduler (:mod:`tcloud.rtl.scheduler`) runs the uTOps of every RUNNING context concurrently
under the policy in the ``POLICY`` register; the host-command unit here executes ``ctx.*``
commands (windows, engines, priority, budget, start, kill, and a hardware scrub of a context's
windows) and serves the CSRs.
"""

from amaranth.hdl import Cat, ClockDomain, Module, Mux, ResetInserter, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect

from tcloud.isa import csr
from tcloud.isa.errors import ConfigError
from tcloud.isa.table import INSTRUCTION_BYTES, ContextStatus, EngineClass

from .decode import HOST_CTX_BITS, INSTRUCTION_LAYOUT, OPCODES, add_decoder
from .dma import DmaEngine
from .hbm import HBM_ADDR_BITS, HbmArbiter, HbmRegisterSlice, hbm_signature, master_count, port_words
from .matrix_engine import MatrixEngine
from .scheduler import ContextTable, UtopScheduler
from .scratchpad import Scratchpad
from .vector_engine import VectorEngine

_ENGINE_TYPES = ((EngineClass.DMA, DmaEngine, "dma_count"), (EngineClass.ME, MatrixEngine, "me_count"),
                 (EngineClass.VE, VectorEngine, "ve_count"))


def _engines(config):
    """The pNPU's engines as ``(class, engine)`` pairs; :class:`ConfigError` if ``config`` has no RTL."""
    if config.hbm_port_bytes < INSTRUCTION_BYTES:
        raise ConfigError(f"hbm_port_bytes={config.hbm_port_bytes} must be at least one instruction "
                          f"({INSTRUCTION_BYTES} bytes)")
    return [(cls, factory(config)) for cls, factory, count in _ENGINE_TYPES for _ in range(getattr(config, count))]


def rtl_refusal(config):
    """Why ``config`` has no RTL (the ``amaranth`` and ``verilator`` backends), or ``None`` if it has."""
    try:
        _engines(config)
    except ConfigError as error:
        return str(error)
    return None


class PNPU(wiring.Component):
    """One pNPU for an :class:`~tcloud.isa.ArchConfig`.

    Members
    -------
    csr_addr, csr_wdata, csr_we : In
        Host register access (byte offsets of :mod:`tcloud.isa.csr`); writes take effect at the
        clock edge, ``csr_rdata`` reflects ``csr_addr`` combinationally.
    csr_rdata : Out(32)
    hbm : Out(hbm_signature)
        The HBM port (HBM is modelled outside the RTL).
    idle : Out(1)
        No context is running and no host command is in progress.
    rst : In(1)
        Synchronous reset, registered once: ``rst`` high at one clock edge resets every register
        at the next edge. Registers also start from their reset values, so a simulation needs no
        reset pulse. The register keeps the top-level input out of every register's next-state
        logic, which lets Verilator evaluate that logic once per clock edge instead of on every
        input change.
    """

    clock_port = "clk"
    """The clock input of the ``sync`` domain the pNPU defines (see :func:`tcloud.rtl.verilog.to_verilog`)."""

    def __init__(self, config):
        try:
            self.engines = _engines(config)
        except ConfigError as error:
            self._MustUse__used = True  # rejected, not forgotten: no UnusedElaboratable warning
            raise ConfigError(f"config {config.name!r} has no RTL (the amaranth and verilator backends, tcloud "
                              f"verilog): {error}; the functional backend runs it") from None
        self.config = config
        super().__init__({"csr_addr": In(csr.ADDR_BITS), "csr_wdata": In(32), "csr_we": In(1),
                          "csr_rdata": Out(32), "hbm": Out(hbm_signature(config, tagged=True)), "idle": Out(1),
                          "rst": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain("sync", reset_less=True)
        reset = Signal()
        m.d.sync += reset.eq(self.rst)
        m.submodules.core = ResetInserter(reset)(self._core())
        return m

    def _core(self):
        m = Module()
        cfg = self.config
        n_ctx, n_eng = cfg.contexts, len(self.engines)
        sram_words, hbm_words = cfg.sram_bytes // 4, cfg.hbm_bytes // 4

        second_ports = [engine for _, engine in self.engines if hasattr(engine, "weight_sram")]
        m.submodules.sram = sram = Scratchpad(cfg, ports=n_eng + len(second_ports) + 1)
        m.submodules.hbm_arbiter = arbiter = HbmArbiter(cfg, count=master_count(cfg))
        m.submodules.hbm_slice = hbm_slice = HbmRegisterSlice(cfg)
        connect(m, arbiter.hbm, hbm_slice.inner)
        connect(m, hbm_slice.outer, wiring.flipped(self.hbm))
        for e, ((_, engine), name) in enumerate(zip(self.engines, csr.engine_names(cfg), strict=True)):
            m.submodules[name] = engine
            connect(m, engine.sram, sram.port(e))
            connect(m, engine.hbm, arbiter.master(e))
        for i, engine in enumerate(second_ports):
            connect(m, engine.weight_sram, sram.port(n_eng + i))
        fetch, scrub_hbm = arbiter.master(n_eng), arbiter.master(n_eng + 1)
        scrub_sram = sram.port(n_eng + len(second_ports))

        # --- context table and scheduler ------------------------------------------------------------
        table = ContextTable(cfg)
        m.submodules.scheduler = scheduler = UtopScheduler(cfg, table, self.engines, fetch)
        status, counters = scheduler.status, scheduler.counters
        policy = Signal(2, init=csr.POLICY_RESET)
        quantum = Signal(16, init=csr.QUANTUM_RESET)
        starvation = Signal(16, init=csr.STARVATION_RESET)
        harvest_cost = Signal.like(scheduler.harvest_cost, init=csr.HARVEST_COST_RESET)
        harvest_grace = Signal.like(scheduler.harvest_grace, init=csr.HARVEST_GRACE_RESET)
        m.d.comb += [scheduler.policy.eq(policy), scheduler.quantum.eq(quantum),
                     scheduler.starvation.eq(starvation), scheduler.harvest_cost.eq(harvest_cost),
                     scheduler.harvest_grace.eq(harvest_grace)]
        config_refused = Signal()
        registers = {"POLICY": policy, "QUANTUM": quantum, "STARVATION": starvation,
                     "HARVEST_COST": harvest_cost, "HARVEST_GRACE": harvest_grace}
        for register in csr.CONFIG_CSRS:
            with m.If(self.csr_we & (self.csr_addr == register.offset)):
                accepted = self.csr_wdata < register.values.stop
                if register.values.start:
                    accepted &= self.csr_wdata >= register.values.start
                m.d.sync += config_refused.eq(~accepted)
                with m.If(accepted):
                    m.d.sync += registers[register.name].eq(self.csr_wdata)

        # --- cycle and engine counters --------------------------------------------------------------
        cycles = Signal(64)
        m.d.sync += cycles.eq(cycles + 1)
        busy_cycles = [Signal(32, name=f"{name}_busy") for name in csr.engine_names(cfg)]
        for e, (_, engine) in enumerate(self.engines):
            m.d.sync += busy_cycles[e].eq(busy_cycles[e] + engine.busy)

        # --- host commands ------------------------------------------------------------------------
        cmd_words = [Signal(32, name=f"cmd{i}") for i in range(4)]
        command = Signal(INSTRUCTION_LAYOUT)
        m.d.comb += command.as_value().eq(Cat(*cmd_words))
        cmd_decoder = add_decoder(m, "cmd_decoder", command)
        cmd_known, cmd_legal, cmd_engine = cmd_decoder.known, cmd_decoder.legal, cmd_decoder.engine
        cmd_op = command.as_value()[:8]
        cmd_ctx = command.as_value()[slice(*HOST_CTX_BITS)]
        cmd_error = Signal(8)
        cmd_busy = Signal()
        scrub_ctx = Signal(range(n_ctx))
        scrub_addr = Signal(HBM_ADDR_BITS + 1)
        scrub_end = Signal(HBM_ADDR_BITS + 1)
        scrub_pending = Signal(range(cfg.dma_outstanding + 1))  # HBM writes not acknowledged yet
        doorbell = self.csr_we & (self.csr_addr == csr.GLOBAL["DOORBELL"]) & self.csr_wdata[0]
        for i in range(4):
            with m.If(self.csr_we & (self.csr_addr == csr.GLOBAL[f"CMD{i}"]) & ~cmd_busy):
                m.d.sync += cmd_words[i].eq(self.csr_wdata)

        def reject(code):
            m.d.sync += cmd_error.eq(code)
            m.next = "IDLE"

        with m.FSM(name="host"):
            with m.State("IDLE"):
                with m.If(doorbell):
                    m.d.sync += cmd_busy.eq(1)
                    m.next = "EXECUTE"
            with m.State("EXECUTE"):
                m.d.sync += [cmd_error.eq(csr.CommandError.OK), cmd_busy.eq(0)]
                with m.If(~cmd_known | (cmd_engine != int(EngineClass.HOST))):
                    reject(csr.CommandError.NOT_A_HOST_COMMAND)
                with m.Elif(~cmd_legal):
                    reject(csr.CommandError.ILLEGAL_FIELD)
                with m.Elif(cmd_ctx >= n_ctx):
                    reject(csr.CommandError.NO_SUCH_CONTEXT)
                with m.Elif(cmd_op == OPCODES["ctx.kill"]):
                    m.d.comb += scheduler.kill.eq(1 << cmd_ctx)
                    m.next = "IDLE"
                with m.Elif(status[cmd_ctx] == ContextStatus.RUNNING):
                    reject(csr.CommandError.CONTEXT_RUNNING)
                for name, view, physical, base, size in (
                        ("ctx.sram", command.ctx_sram, sram_words, table.sram_base, table.sram_size),
                        ("ctx.hbm", command.ctx_hbm, hbm_words, table.hbm_base, table.hbm_size)):
                    with m.Elif(cmd_op == OPCODES[name]):
                        with m.If(view.base + view.size > physical):
                            reject(csr.CommandError.WINDOW_OUT_OF_RANGE)
                        with m.Else():
                            m.d.sync += [base[cmd_ctx].eq(view.base), size[cmd_ctx].eq(view.size)]
                            m.next = "IDLE"
                with m.Elif(cmd_op == OPCODES["ctx.engines"]):
                    view = command.ctx_engines
                    with m.If((view.me_mask >> cfg.me_count != 0) | (view.ve_mask >> cfg.ve_count != 0)
                              | (view.dma_mask >> cfg.dma_count != 0)):
                        reject(csr.CommandError.NO_SUCH_ENGINE)
                    with m.Else():
                        m.d.sync += [table.me_mask[cmd_ctx].eq(view.me_mask), table.ve_mask[cmd_ctx].eq(view.ve_mask),
                                     table.dma_mask[cmd_ctx].eq(view.dma_mask)]
                        m.next = "IDLE"
                with m.Elif(cmd_op == OPCODES["ctx.prio"]):
                    m.d.sync += table.priority[cmd_ctx].eq(command.ctx_prio.priority)
                    m.next = "IDLE"
                with m.Elif(cmd_op == OPCODES["ctx.budget"]):
                    m.d.sync += table.budget[cmd_ctx].eq(command.ctx_budget.cycles)
                    m.next = "IDLE"
                with m.Elif(cmd_op == OPCODES["ctx.start"]):
                    m.d.comb += [scheduler.start.eq(1 << cmd_ctx), scheduler.start_pc.eq(command.ctx_start.pc)]
                    m.next = "IDLE"
                with m.Elif(cmd_op == OPCODES["ctx.scrub"]):
                    m.d.sync += [cmd_busy.eq(1), scrub_ctx.eq(cmd_ctx), scrub_addr.eq(table.sram_base[cmd_ctx]),
                                 scrub_end.eq(table.sram_base[cmd_ctx] + table.sram_size[cmd_ctx])]
                    m.next = "SCRUB_SRAM"
                with m.Else():
                    reject(csr.CommandError.UNIMPLEMENTED)
            with m.State("SCRUB_SRAM"):
                with m.If(scrub_addr >= scrub_end):
                    m.d.sync += [scrub_addr.eq(table.hbm_base[scrub_ctx]),
                                 scrub_end.eq(table.hbm_base[scrub_ctx] + table.hbm_size[scrub_ctx])]
                    m.next = "SCRUB_HBM"
                with m.Else():
                    m.d.comb += [scrub_sram.valid.eq(1), scrub_sram.we.eq(1), scrub_sram.addr.eq(scrub_addr),
                                 scrub_sram.wdata.eq(0)]
                    for lane in range(cfg.sram_line_words):
                        m.d.comb += scrub_sram.wmask[lane].eq(Mux(scrub_addr + lane < scrub_end, 0b1111, 0))
                    with m.If(scrub_sram.ready):
                        m.d.sync += scrub_addr.eq(scrub_addr + cfg.sram_line_words)
            with m.State("SCRUB_HBM"):
                left = scrub_end - scrub_addr
                beat = Mux(left < port_words(cfg), left, port_words(cfg))
                issue = Signal()
                m.d.comb += scrub_hbm.rsp.ready.eq(1)
                m.d.sync += scrub_pending.eq(scrub_pending + issue - scrub_hbm.rsp.valid)
                with m.If((scrub_addr >= scrub_end) & (scrub_pending == 0)):
                    m.d.sync += cmd_busy.eq(0)
                    m.d.comb += scheduler.clear.eq(1 << scrub_ctx)
                    m.next = "IDLE"
                with m.Elif((scrub_addr < scrub_end) & (scrub_pending < cfg.dma_outstanding)):
                    m.d.comb += [scrub_hbm.req.valid.eq(1), scrub_hbm.req.payload.addr.eq(scrub_addr),
                                 scrub_hbm.req.payload.count.eq(beat), scrub_hbm.req.payload.write.eq(1),
                                 scrub_hbm.req.payload.wdata.eq(0), scrub_hbm.req.payload.fetch.eq(0)]
                    with m.If(scrub_hbm.req.ready):
                        m.d.comb += issue.eq(1)
                        m.d.sync += scrub_addr.eq(scrub_addr + beat)

        # --- status outputs and CSR reads ---------------------------------------------------------
        running = Signal(n_ctx)
        m.d.comb += running.eq(Cat(status[c] == ContextStatus.RUNNING for c in range(n_ctx)))
        m.d.comb += self.idle.eq(~scheduler.busy & ~cmd_busy)
        fingerprint = int.from_bytes(cfg.fingerprint(), "little")
        reads = {
            csr.GLOBAL["ID"]: csr.ID_VALUE,
            csr.GLOBAL["FINGERPRINT_LO"]: fingerprint & 0xFFFFFFFF,
            csr.GLOBAL["FINGERPRINT_HI"]: fingerprint >> 32,
            csr.GLOBAL["DOORBELL"]: cmd_busy,
            csr.GLOBAL["CMD_ERROR"]: cmd_error,
            csr.GLOBAL["CYCLES_LO"]: cycles[:32],
            csr.GLOBAL["CYCLES_HI"]: cycles[32:],
            csr.GLOBAL["RUNNING"]: running,
            csr.GLOBAL["CONFIG_REFUSED"]: config_refused,
        }
        reads.update({register.offset: registers[register.name] for register in csr.CONFIG_CSRS})
        for i in range(4):
            reads[csr.GLOBAL[f"CMD{i}"]] = cmd_words[i]
        for c in range(n_ctx):
            values = {"STATUS": status[c], "FAULT": scheduler.fault[c], "FAULT_PC": scheduler.fault_pc[c] * 4,
                      "PC": scheduler.pc[c] * 4, "BUDGET": table.budget[c]}
            for counter in csr.COUNTERS:
                values.update({name: counters[counter.name][c].word_select(i, 32)
                               for i, name in enumerate(counter.registers)})
            if values.keys() != csr.CONTEXT.keys():
                raise AssertionError(f"context registers without a value: {csr.CONTEXT.keys() - values.keys()}")
            for name, value in values.items():
                reads[csr.context_csr(c, name)] = value
        for e in range(n_eng):
            reads[csr.engine_csr(e)] = busy_cycles[e]
        with m.Switch(self.csr_addr):
            for address, value in reads.items():
                with m.Case(address):
                    m.d.comb += self.csr_rdata.eq(value)
            with m.Default():
                m.d.comb += self.csr_rdata.eq(0)
        return m
