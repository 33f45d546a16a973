"""The physical NPU: engines, scratchpad, HBM port, context table, uTOp sequencer and host CSRs.

This version's sequencer serves one context at a time (the lowest-numbered RUNNING one) and
issues its uTOps in program order to any free engine of the right class, so the uTOps of a context
run concurrently on all engines; the multi-tenant scheduler with ownership and harvesting policies
replaces it in the virtualization issue. A context that faults (or is killed) stops issuing, waits
for its in-flight uTOps to drain, and only then reports FAULTED, so the host never scrubs a window
an engine is still writing.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect

from tcloud.isa.table import (INSTRUCTION_BYTES, NUM_TOKENS, TOKEN_MAX_COUNT, ContextStatus,
                              EngineClass, FaultCode)

from . import csr
from .decode import INSTRUCTION_LAYOUT, OPCODES, decode_checks
from .dma import DmaEngine
from .engine import FAULT_BITS, INSTRUCTION_WORDS
from .hbm import HBM_ADDR_BITS, HbmArbiter, hbm_signature, port_words
from .matrix_engine import MatrixEngine
from .scratchpad import Scratchpad, sram_addr_bits
from .vector_engine import VectorEngine

_ENGINE_TYPES = ((EngineClass.DMA, DmaEngine, "dma_count"), (EngineClass.ME, MatrixEngine, "me_count"),
                 (EngineClass.VE, VectorEngine, "ve_count"))


class PNPU(wiring.Component):
    """One pNPU for an :class:`~tcloud.isa.ArchConfig`.

    Members
    -------
    csr_addr, csr_wdata, csr_we : In
        Host register access (byte offsets of :mod:`tcloud.rtl.csr`); writes take effect at the
        clock edge, ``csr_rdata`` reflects ``csr_addr`` combinationally.
    csr_rdata : Out(32)
    hbm : Out(hbm_signature)
        The HBM port (HBM is modelled outside the RTL).
    idle : Out(1)
        No context is running and no host command is in progress.
    """

    def __init__(self, config):
        if config.hbm_port_bytes < INSTRUCTION_BYTES:
            self._MustUse__used = True  # rejected, not forgotten: no UnusedElaboratable warning
            raise ValueError(f"hbm_port_bytes={config.hbm_port_bytes} must be at least one instruction "
                             f"({INSTRUCTION_BYTES} bytes)")
        self.config = config
        self.engines = [(cls, factory(config)) for cls, factory, count in _ENGINE_TYPES
                        for _ in range(getattr(config, count))]
        super().__init__({"csr_addr": In(12), "csr_wdata": In(32), "csr_we": In(1),
                          "csr_rdata": Out(32), "hbm": Out(hbm_signature(config)), "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        n_ctx, n_eng = cfg.contexts, len(self.engines)
        sram_bits = sram_addr_bits(cfg)
        sram_words, hbm_words = cfg.sram_bytes // 4, cfg.hbm_bytes // 4

        second_ports = [engine for _, engine in self.engines if hasattr(engine, "weight_sram")]
        m.submodules.sram = sram = Scratchpad(cfg, ports=n_eng + len(second_ports) + 1)
        m.submodules.hbm_arbiter = arbiter = HbmArbiter(cfg, count=n_eng + 2)
        connect(m, arbiter.hbm, wiring.flipped(self.hbm))
        for e, (cls, engine) in enumerate(self.engines):
            m.submodules[f"{cls.name.lower()}{e}"] = engine
            connect(m, engine.sram, sram.port(e))
            connect(m, engine.hbm, arbiter.master(e))
        for i, engine in enumerate(second_ports):
            connect(m, engine.weight_sram, sram.port(n_eng + i))
        fetch, scrub_hbm = arbiter.master(n_eng), arbiter.master(n_eng + 1)
        scrub_sram = sram.port(n_eng + len(second_ports))

        # --- context table -------------------------------------------------------------------------
        def table(width, name, init=0):
            return Array(Signal(width, name=f"ctx{c}_{name}", init=init) for c in range(n_ctx))

        sram_base, sram_size = table(sram_bits + 1, "sram_base"), table(sram_bits + 1, "sram_size")
        hbm_base, hbm_size = table(HBM_ADDR_BITS, "hbm_base"), table(HBM_ADDR_BITS + 1, "hbm_size")
        me_mask, ve_mask, priority = table(16, "me_mask"), table(16, "ve_mask"), table(8, "priority")
        pc, status = table(HBM_ADDR_BITS, "pc"), table(2, "status")
        fault, fault_pc = table(FAULT_BITS, "fault"), table(HBM_ADDR_BITS, "fault_pc")
        kill = table(1, "kill")
        tokens = Array(Array(Signal(8, name=f"ctx{c}_t{t}") for t in range(NUM_TOKENS)) for c in range(n_ctx))
        counter_names = ("utops_dma", "utops_me", "utops_ve", "instructions", "hbm_read", "hbm_write",
                         "ve_elements")
        counters = {name: table(32, name) for name in counter_names}
        counters["macs"] = table(64, "macs")

        # --- cycle and engine counters --------------------------------------------------------------
        cycles = Signal(64)
        m.d.sync += cycles.eq(cycles + 1)
        busy_cycles = [Signal(32, name=f"engine{e}_busy") for e in range(n_eng)]
        for e, (_, engine) in enumerate(self.engines):
            m.d.sync += busy_cycles[e].eq(busy_cycles[e] + engine.busy)

        # --- sequencer ------------------------------------------------------------------------------
        active = Signal(range(n_ctx))
        instr = Signal(INSTRUCTION_LAYOUT)
        known, legal, engine_of = decode_checks(instr)
        opcode = instr.as_value()[:8]
        header = instr.utop
        inflight = Signal(range(n_eng + 1))
        stopping, stop_code, stop_pc = Signal(), Signal(FAULT_BITS), Signal(HBM_ADDR_BITS)
        stop_key = Signal(HBM_ADDR_BITS)  # header pc of the faulting uTOp: earliest in program order wins
        eng_signal = [Signal(NUM_TOKENS, name=f"engine{e}_signal") for e in range(n_eng)]
        eng_pc = [Signal(HBM_ADDR_BITS, name=f"engine{e}_header_pc") for e in range(n_eng)]
        seq_counts_instr = Signal()
        dispatch = Signal()
        cur_pc = pc[active]
        cur_tokens = tokens[active]

        slots = [(header.wait0, header.count0), (header.wait1, header.count1), (header.wait2, header.count2)]
        enough = Const(1)
        for token, count in slots:
            need = sum(Mux(other == token, other_count, 0) for other, other_count in slots)
            enough = enough & ((count == 0) | (cur_tokens[token] >= need))
        free = Signal(n_eng)
        m.d.comb += free.eq(Cat(~engine.busy for _, engine in self.engines))
        chosen = Signal(range(n_eng))
        has_free = Signal()
        for e in reversed(range(n_eng)):
            with m.If(free[e] & (header.cls == int(self.engines[e][0]))):
                m.d.comb += [chosen.eq(e), has_free.eq(1)]

        def stop(code, at):
            with m.If(~stopping):
                m.d.sync += [stopping.eq(1), stop_code.eq(code), stop_pc.eq(at), stop_key.eq(at)]
            m.next = "STOPPING"

        with m.FSM(name="sequencer"):
            with m.State("SELECT"):
                m.d.sync += stopping.eq(0)
                for c in reversed(range(n_ctx)):
                    with m.If(status[c] == ContextStatus.RUNNING):
                        m.d.sync += active.eq(c)
                        m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(stopping):
                    m.next = "STOPPING"
                with m.Elif(kill[active]):
                    stop(FaultCode.KILLED, cur_pc)
                with m.Elif(cur_pc + INSTRUCTION_WORDS > hbm_size[active]):
                    stop(FaultCode.FETCH_BOUNDS, cur_pc)
                with m.Else():
                    m.d.comb += [fetch.req.valid.eq(1), fetch.req.payload.addr.eq(hbm_base[active] + cur_pc),
                                 fetch.req.payload.count.eq(INSTRUCTION_WORDS), fetch.req.payload.write.eq(0),
                                 fetch.req.payload.wdata.eq(0)]
                    with m.If(fetch.req.ready):
                        m.next = "FETCH_WAIT"
            with m.State("FETCH_WAIT"):
                m.d.comb += fetch.rsp.ready.eq(1)
                with m.If(fetch.rsp.valid):
                    m.d.sync += instr.eq(fetch.rsp.payload.rdata.as_value()[:128])
                    m.next = "DECODE"
            with m.State("DECODE"):
                with m.If(~known):
                    stop(FaultCode.ILLEGAL_OPCODE, cur_pc)
                with m.Elif(~legal):
                    stop(FaultCode.ILLEGAL_FIELD, cur_pc)
                with m.Else():
                    m.d.comb += seq_counts_instr.eq(1)
                    with m.If(engine_of == int(EngineClass.HOST)):
                        stop(FaultCode.PRIVILEGED, cur_pc)
                    with m.Elif(engine_of != int(EngineClass.CTRL)):
                        stop(FaultCode.WRONG_CLASS, cur_pc)
                    with m.Elif(opcode == OPCODES["utop"]):
                        m.next = "ISSUE"
                    with m.Elif(opcode == OPCODES["fence"]):
                        m.next = "FENCE"
                    with m.Elif(opcode == OPCODES["halt"]):
                        m.next = "HALT"
                    with m.Else():
                        m.d.sync += cur_pc.eq(cur_pc + INSTRUCTION_WORDS)
                        m.next = "FETCH"
            with m.State("ISSUE"):
                with m.If(stopping | kill[active]):
                    m.next = "FETCH"
                with m.Elif(~enough):
                    with m.If(inflight == 0):
                        stop(FaultCode.TOKEN_DEADLOCK, cur_pc)
                with m.Elif(has_free):
                    m.d.comb += dispatch.eq(1)
                    for e in range(n_eng):
                        with m.If(chosen == e):
                            m.d.sync += [eng_signal[e].eq(header.signal), eng_pc[e].eq(cur_pc)]
                    m.d.sync += cur_pc.eq(cur_pc + INSTRUCTION_WORDS * (header.len + 1))
                    m.next = "FETCH"
            for name in ("FENCE", "HALT"):
                with m.State(name):
                    with m.If(stopping | kill[active]):
                        m.next = "FETCH"
                    with m.Elif(inflight == 0):
                        if name == "FENCE":
                            m.d.sync += cur_pc.eq(cur_pc + INSTRUCTION_WORDS)
                            m.next = "FETCH"
                        else:
                            m.d.sync += cur_pc.eq(cur_pc + INSTRUCTION_WORDS)
                            m.d.sync += status[active].eq(ContextStatus.DONE)
                            m.next = "SELECT"
            with m.State("STOPPING"):
                with m.If(inflight == 0):
                    m.d.sync += [status[active].eq(ContextStatus.FAULTED), fault[active].eq(stop_code),
                                 fault_pc[active].eq(stop_pc), kill[active].eq(0)]
                    m.next = "SELECT"

        for e, (_, engine) in enumerate(self.engines):
            m.d.comb += [engine.start.eq(dispatch & (chosen == e)),
                         engine.body_pc.eq(cur_pc + INSTRUCTION_WORDS), engine.body_len.eq(header.len),
                         engine.sram_base.eq(sram_base[active]), engine.sram_size.eq(sram_size[active]),
                         engine.hbm_base.eq(hbm_base[active]), engine.hbm_size.eq(hbm_size[active])]

        # --- completions: tokens, uTOp counters, engine faults --------------------------------------
        done_ok = [Signal(name=f"engine{e}_ok") for e in range(n_eng)]
        done_bad = [Signal(name=f"engine{e}_fault") for e in range(n_eng)]
        for e, (_, engine) in enumerate(self.engines):
            m.d.comb += [done_ok[e].eq(engine.done & (engine.fault == 0)),
                         done_bad[e].eq(engine.done & (engine.fault != 0))]
        overflow = Signal()
        overflow_pc = Signal(HBM_ADDR_BITS)
        for t in range(NUM_TOKENS):
            inc = sum(Mux(done_ok[e] & eng_signal[e][t], 1, 0) for e in range(n_eng))
            dec = sum(Mux(dispatch & (token == t), count, 0) for token, count in slots)
            total = cur_tokens[t] + inc
            with m.If(total > TOKEN_MAX_COUNT):
                m.d.comb += overflow.eq(1)
            m.d.sync += cur_tokens[t].eq(Mux(total > TOKEN_MAX_COUNT, TOKEN_MAX_COUNT, total) - dec)
        for e in reversed(range(n_eng)):
            with m.If(done_ok[e]):
                m.d.comb += overflow_pc.eq(eng_pc[e])
        m.d.sync += inflight.eq(inflight + dispatch - sum(engine.done for _, engine in self.engines))
        for cls in (EngineClass.DMA, EngineClass.ME, EngineClass.VE):
            name = f"utops_{cls.name.lower()}"
            retired = sum(done_ok[e] for e, (c, _) in enumerate(self.engines) if c == cls)
            m.d.sync += counters[name][active].eq(counters[name][active] + retired)
        engine_fault_pc = Signal(HBM_ADDR_BITS)
        engine_fault_key = Signal(HBM_ADDR_BITS)
        engine_fault = Signal(FAULT_BITS)
        first = self.engines[0][1]
        best = (Mux(done_bad[0], first.fault, 0), first.fault_pc, eng_pc[0])
        for e, (_, engine) in list(enumerate(self.engines))[1:]:
            take = done_bad[e] & ((best[0] == 0) | (eng_pc[e] < best[2]))
            best = (Mux(take, engine.fault, best[0]), Mux(take, engine.fault_pc, best[1]),
                    Mux(take, eng_pc[e], best[2]))
        m.d.comb += [engine_fault.eq(best[0]), engine_fault_pc.eq(best[1]), engine_fault_key.eq(best[2])]
        with m.If((engine_fault != 0) & (~stopping | (engine_fault_key < stop_key))):
            m.d.sync += [stopping.eq(1), stop_code.eq(engine_fault), stop_pc.eq(engine_fault_pc),
                         stop_key.eq(engine_fault_key)]
        with m.Elif(overflow & (~stopping | (overflow_pc < stop_key))):
            m.d.sync += [stopping.eq(1), stop_code.eq(FaultCode.TOKEN_OVERFLOW), stop_pc.eq(overflow_pc),
                         stop_key.eq(overflow_pc)]

        engines = [engine for _, engine in self.engines]
        increments = {
            "instructions": seq_counts_instr + sum(e.count_instr for e in engines),
            "hbm_read": sum(e.count_hbm_read for e in engines),
            "hbm_write": sum(e.count_hbm_write for e in engines),
            "macs": sum(e.count_macs for e in engines),
            "ve_elements": sum(e.count_ve for e in engines),
        }
        for name, value in increments.items():
            m.d.sync += counters[name][active].eq(counters[name][active] + value)

        # --- host commands ------------------------------------------------------------------------
        cmd_words = [Signal(32, name=f"cmd{i}") for i in range(4)]
        command = Signal(INSTRUCTION_LAYOUT)
        m.d.comb += command.as_value().eq(Cat(*cmd_words))
        cmd_known, cmd_legal, cmd_engine = decode_checks(command)
        cmd_op = command.as_value()[:8]
        cmd_ctx = command.ctx_kill.ctx
        cmd_error = Signal(8)
        cmd_busy = Signal()
        scrub_ctx = Signal(range(n_ctx))
        scrub_addr = Signal(HBM_ADDR_BITS + 1)
        scrub_end = Signal(HBM_ADDR_BITS + 1)
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
                    with m.If(status[cmd_ctx] == ContextStatus.RUNNING):
                        m.d.sync += kill[cmd_ctx].eq(1)
                    m.next = "IDLE"
                with m.Elif(status[cmd_ctx] == ContextStatus.RUNNING):
                    reject(csr.CommandError.CONTEXT_RUNNING)
                for name, view, physical, base, size in (
                        ("ctx.sram", command.ctx_sram, sram_words, sram_base, sram_size),
                        ("ctx.hbm", command.ctx_hbm, hbm_words, hbm_base, hbm_size)):
                    with m.Elif(cmd_op == OPCODES[name]):
                        with m.If(view.base + view.size > physical):
                            reject(csr.CommandError.WINDOW_OUT_OF_RANGE)
                        with m.Else():
                            m.d.sync += [base[cmd_ctx].eq(view.base), size[cmd_ctx].eq(view.size)]
                            m.next = "IDLE"
                with m.Elif(cmd_op == OPCODES["ctx.engines"]):
                    view = command.ctx_engines
                    with m.If((view.me_mask >> cfg.me_count != 0) | (view.ve_mask >> cfg.ve_count != 0)):
                        reject(csr.CommandError.NO_SUCH_ENGINE)
                    with m.Else():
                        m.d.sync += [me_mask[cmd_ctx].eq(view.me_mask), ve_mask[cmd_ctx].eq(view.ve_mask)]
                        m.next = "IDLE"
                with m.Elif(cmd_op == OPCODES["ctx.prio"]):
                    m.d.sync += priority[cmd_ctx].eq(command.ctx_prio.priority)
                    m.next = "IDLE"
                with m.Elif(cmd_op == OPCODES["ctx.start"]):
                    m.d.sync += [pc[cmd_ctx].eq(command.ctx_start.pc), status[cmd_ctx].eq(ContextStatus.RUNNING),
                                 fault[cmd_ctx].eq(0), fault_pc[cmd_ctx].eq(0), kill[cmd_ctx].eq(0)]
                    m.d.sync += [tokens[cmd_ctx][t].eq(0) for t in range(NUM_TOKENS)]
                    m.next = "IDLE"
                with m.Else():  # ctx.scrub
                    m.d.sync += [cmd_busy.eq(1), scrub_ctx.eq(cmd_ctx), scrub_addr.eq(sram_base[cmd_ctx]),
                                 scrub_end.eq(sram_base[cmd_ctx] + sram_size[cmd_ctx])]
                    m.next = "SCRUB_SRAM"
            with m.State("SCRUB_SRAM"):
                with m.If(scrub_addr >= scrub_end):
                    m.d.sync += [scrub_addr.eq(hbm_base[scrub_ctx]),
                                 scrub_end.eq(hbm_base[scrub_ctx] + hbm_size[scrub_ctx])]
                    m.next = "SCRUB_HBM"
                with m.Else():
                    m.d.comb += [scrub_sram.valid.eq(1), scrub_sram.we.eq(1), scrub_sram.addr.eq(scrub_addr),
                                 scrub_sram.wdata.eq(0)]
                    for lane in range(cfg.sram_banks):
                        m.d.comb += scrub_sram.wmask[lane].eq(Mux(scrub_addr + lane < scrub_end, 0b1111, 0))
                    with m.If(scrub_sram.ready):
                        m.d.sync += scrub_addr.eq(scrub_addr + cfg.sram_banks)
            with m.State("SCRUB_HBM"):
                left = scrub_end - scrub_addr
                beat = Mux(left < port_words(cfg), left, port_words(cfg))
                with m.If(scrub_addr >= scrub_end):
                    m.d.sync += cmd_busy.eq(0)
                    m.d.sync += [counters[name][scrub_ctx].eq(0) for name in counters]
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += [scrub_hbm.req.valid.eq(1), scrub_hbm.req.payload.addr.eq(scrub_addr),
                                 scrub_hbm.req.payload.count.eq(beat), scrub_hbm.req.payload.write.eq(1),
                                 scrub_hbm.req.payload.wdata.eq(0)]
                    with m.If(scrub_hbm.req.ready):
                        m.d.sync += scrub_addr.eq(scrub_addr + beat)
                        m.next = "SCRUB_HBM_ACK"
            with m.State("SCRUB_HBM_ACK"):
                m.d.comb += scrub_hbm.rsp.ready.eq(1)
                with m.If(scrub_hbm.rsp.valid):
                    m.next = "SCRUB_HBM"

        # --- status outputs and CSR reads ---------------------------------------------------------
        running = Signal(n_ctx)
        m.d.comb += running.eq(Cat(status[c] == ContextStatus.RUNNING for c in range(n_ctx)))
        m.d.comb += self.idle.eq((running == 0) & ~cmd_busy & (inflight == 0))
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
        }
        for i in range(4):
            reads[csr.GLOBAL[f"CMD{i}"]] = cmd_words[i]
        for c in range(n_ctx):
            values = {"STATUS": status[c], "FAULT": fault[c], "FAULT_PC": fault_pc[c] * 4, "PC": pc[c] * 4,
                      "UTOPS_DMA": counters["utops_dma"][c], "UTOPS_ME": counters["utops_me"][c],
                      "UTOPS_VE": counters["utops_ve"][c], "INSTRUCTIONS": counters["instructions"][c],
                      "HBM_READ": counters["hbm_read"][c], "HBM_WRITE": counters["hbm_write"][c],
                      "MACS_LO": counters["macs"][c][:32], "MACS_HI": counters["macs"][c][32:],
                      "VE_ELEMENTS": counters["ve_elements"][c]}
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
