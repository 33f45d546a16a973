"""The multi-tenant core of the pNPU: the context table and the uTOp scheduler.

:class:`ContextTable` holds what the hypervisor configures per context (windows, owned engines,
priority, watchdog budget). :class:`UtopScheduler` runs every RUNNING context at once:

* **Front ends.** Each context fetches and decodes its own top-level instructions through one
  shared fetch unit (round-robin between contexts) and holds its next decoded uTOp header: its uTOp
  queue. uTOps of one context issue in program order; its 16 counting-semaphore tokens decide when
  the head uTOp is ready.
* **Dispatch.** Every cycle the scheduler dispatches at most one ready uTOp onto a free engine of
  its class. Which engines a context may use is the policy (:class:`~tcloud.isa.Policy`, the
  ``POLICY`` register): ``static`` owned engines only; ``harvest`` also free engines whose owners
  have no ready uTOp of that class and have left idle for ``HARVEST_GRACE`` cycles, for uTOps that
  declare a cost within ``HARVEST_COST`` (the owner wins at the end of that uTOp, within
  :func:`~tcloud.rtl.engine.reclaim_bound`); ``temporal`` one
  context at a time on the whole pNPU; ``operator`` one context per engine class at a time.
  Among contexts that could dispatch, a context whose ready uTOp has waited ``STARVATION`` cycles
  outranks the rest, then higher priority wins, then round-robin; under ``operator`` it also makes
  the context holding the class it waits for stop issuing to that class once the holder has had it
  for ``QUANTUM`` x (priority + 1) cycles, so the class drains and changes hands: no context
  starves under any policy.
* **Completions.** Engines remember whose uTOp they run; completions signal that context's
  tokens, count into its counters, and report faults to it alone. A faulting (or killed, or
  over-budget) context stops issuing, waits for its own in-flight uTOps, keeps the fault that is
  earliest in program order, and then reports FAULTED; other contexts are not disturbed. The
  in-flight uTOps of a killed or over-budget context are aborted (``abort``), so it stops within
  :func:`~tcloud.rtl.engine.abort_bound` cycles whatever those uTOps would still run; a context
  stopping on a fault of its own lets them finish, so that the fault reported is the earliest in
  program order, exactly as in the golden model.
"""

from amaranth.hdl import Array, Cat, Const, Elaboratable, Module, Mux, Signal

from tcloud.isa.csr import COUNTERS
from tcloud.isa.table import (HARVESTED_CLASSES, NUM_TOKENS, TOKEN_MAX_COUNT, ContextStatus, EngineClass,
                              FaultCode, Policy)

from .arbiter import RoundRobin
from .decode import INSTRUCTION_LAYOUT, OPCODES, add_decoder
from .engine import COST_BITS, FAULT_BITS, INSTRUCTION_WORDS
from .hbm import HBM_ADDR_BITS
from .scratchpad import sram_addr_bits

class ContextTable:
    """Per-context configuration registers, written by the host-command unit.

    Every field is an ``Array`` of one signal per context. Each context owns every engine until
    ``ctx.engines`` says otherwise.
    """

    def __init__(self, config):
        self.count = config.contexts
        sram_bits = sram_addr_bits(config)

        def field(width, name, init=0):
            return Array(Signal(width, name=f"ctx{c}_{name}", init=init) for c in range(self.count))

        self.sram_base, self.sram_size = field(sram_bits + 1, "sram_base"), field(sram_bits + 1, "sram_size")
        self.hbm_base, self.hbm_size = field(HBM_ADDR_BITS, "hbm_base"), field(HBM_ADDR_BITS + 1, "hbm_size")
        self.me_mask = field(config.me_count, "me_mask", init=(1 << config.me_count) - 1)
        self.ve_mask = field(config.ve_count, "ve_mask", init=(1 << config.ve_count) - 1)
        self.dma_mask = field(config.dma_count, "dma_mask", init=(1 << config.dma_count) - 1)
        self.priority = field(8, "priority")
        self.budget = field(32, "budget")


def _maximum(m, values, width, name):
    """A signal holding the largest of ``values`` (a chain of comparisons, one signal per step)."""
    best = Signal(width, name=f"{name}0")
    m.d.comb += best.eq(values[0])
    for i, value in enumerate(values[1:], 1):
        step = Signal(width, name=f"{name}{i}")
        m.d.comb += step.eq(Mux(value > best, value, best))
        best = step
    return best


def _lowest_set(m, bits, count, name):
    """(index of the lowest set bit of ``bits``, any bit set)."""
    index, found = Signal(range(max(count, 2)), name=f"{name}_index"), Signal(name=f"{name}_found")
    for i in reversed(range(count)):
        with m.If(bits[i]):
            m.d.comb += [index.eq(i), found.eq(1)]
    return index, found


class UtopScheduler(Elaboratable):
    """Front ends, dispatch, completions, faults and counters of all contexts (module docstring).

    Parameters
    ----------
    config : ArchConfig
    table : ContextTable
    engines : list of (EngineClass, Engine)
        In engine-index order (DMAs, MEs, VEs); the scheduler drives their dispatch inputs.
    fetch : HBM master interface
        The port the front ends fetch instructions through.

    Attributes
    ----------
    start, kill, clear : Signal(contexts), inputs
        One-cycle requests from the host-command unit: start context c at ``start_pc``; kill it;
        clear its counters (scrub).
    start_pc : Signal, input
    policy, quantum, starvation, harvest_cost, harvest_grace : Signal, inputs
        The ``POLICY``, ``QUANTUM``, ``STARVATION``, ``HARVEST_COST`` and ``HARVEST_GRACE`` registers.
    status, pc, fault, fault_pc : Array of Signal
        Per-context run state (word-scaled pc).
    counters : dict of str to Array of Signal
        One per :data:`tcloud.isa.csr.COUNTERS` entry, by its name.
    busy : Signal, output
        A context is running or a uTOp is in flight.
    """

    def __init__(self, config, table, engines, fetch):
        self.config, self.table, self.engines, self.fetch = config, table, engines, fetch
        n = config.contexts
        self.start, self.kill, self.clear = Signal(n), Signal(n), Signal(n)
        self.start_pc = Signal(HBM_ADDR_BITS)
        self.policy = Signal(2)
        self.quantum = Signal(16)
        self.starvation = Signal(16)
        self.harvest_cost = Signal(COST_BITS)
        self.harvest_grace = Signal(16)

        def per_context(width, name, init=0):
            return Array(Signal(width, name=f"ctx{c}_{name}", init=init) for c in range(n))

        self.status, self.pc = per_context(2, "status"), per_context(HBM_ADDR_BITS, "pc")
        self.fault, self.fault_pc = per_context(FAULT_BITS, "fault"), per_context(HBM_ADDR_BITS, "fault_pc")
        self.counters = {counter.name: per_context(counter.bits, counter.name) for counter in COUNTERS}
        self.busy = Signal()

    def elaborate(self, platform):
        m = Module()
        cfg, table = self.config, self.table
        n_ctx, n_eng = cfg.contexts, len(self.engines)
        engines = [engine for _, engine in self.engines]
        classes = [cls for cls, _ in self.engines]
        class_index = {cls: [e for e, c in enumerate(classes) if c == cls] for cls in EngineClass}

        # --- per-context run state -------------------------------------------------------------
        def per_context(width, name, init=0):
            return [Signal(width, name=f"ctx{c}_{name}", init=init) for c in range(n_ctx)]

        head = [Signal(INSTRUCTION_LAYOUT, name=f"ctx{c}_head") for c in range(n_ctx)]
        tokens = [[Signal(8, name=f"ctx{c}_t{t}") for t in range(NUM_TOKENS)] for c in range(n_ctx)]
        inflight = per_context((n_eng + 1).bit_length(), "inflight")
        killed = per_context(1, "killed")
        stopping, stop_code = per_context(1, "stopping"), per_context(FAULT_BITS, "stop_code")
        stop_pc, stop_key = per_context(HBM_ADDR_BITS, "stop_pc"), per_context(HBM_ADDR_BITS, "stop_key")
        issuing = per_context(1, "issuing")      # front end holds a uTOp header (ISSUE state)
        fetching = per_context(1, "fetching")    # front end wants an instruction
        age = per_context(16, "age")
        counted = per_context(1, "counted")      # a top-level instruction decoded (for INSTRUCTIONS)
        streak = per_context(32, "reclaim_streak")
        over_budget = [Signal(name=f"ctx{c}_over_budget") for c in range(n_ctx)]
        for c in range(n_ctx):
            m.d.comb += over_budget[c].eq((table.budget[c] != 0) & (self.counters["run_cycles"][c] >= table.budget[c]))

        # --- shared fetch unit ---------------------------------------------------------------------
        m.submodules.fetch_arbiter = fetch_rr = RoundRobin(n_ctx, holds=True)
        fetch_ctx = Signal(range(max(n_ctx, 2)))
        fetched_instr = Signal(INSTRUCTION_LAYOUT)
        decoder = add_decoder(m, "decoder", fetched_instr)
        known, legal, engine_of = decoder.known, decoder.legal, decoder.engine
        opcode = fetched_instr.as_value()[:8]
        decoded = Signal(n_ctx)
        serving = Signal(n_ctx)   # the fetch unit has an instruction of context c in flight
        m.d.comb += fetch_rr.requests.eq(Cat(fetching))
        req, rsp = self.fetch.req, self.fetch.rsp
        offered = Signal()  # a request offered last cycle and not taken: it stays, unchanged
        offered_addr = Signal.like(req.payload.addr)
        offered_ctx = Signal.like(fetch_ctx)
        m.d.sync += [offered.eq(req.valid & ~req.ready), offered_addr.eq(req.payload.addr),
                     offered_ctx.eq(Mux(offered, offered_ctx, fetch_rr.grant))]
        m.d.comb += fetch_rr.hold.eq(req.valid & ~req.ready)
        with m.FSM(name="fetch"):
            with m.State("REQUEST"):
                with m.If(fetch_rr.valid | offered):
                    m.d.comb += [req.valid.eq(1),
                                 req.payload.addr.eq(Mux(offered, offered_addr,
                                                         table.hbm_base[fetch_rr.grant] + self.pc[fetch_rr.grant])),
                                 req.payload.count.eq(INSTRUCTION_WORDS), req.payload.write.eq(0), req.payload.fetch.eq(1),
                                 req.payload.wdata.eq(0)]
                    with m.If(req.ready):
                        m.d.comb += fetch_rr.advance.eq(1)
                        m.d.sync += fetch_ctx.eq(Mux(offered, offered_ctx, fetch_rr.grant))
                        m.next = "RESPONSE"
            with m.State("RESPONSE"):
                m.d.comb += [rsp.ready.eq(1), serving.eq(1 << fetch_ctx)]
                with m.If(rsp.valid):
                    m.d.sync += fetched_instr.eq(rsp.payload.rdata.as_value()[:128])
                    m.next = "DECODE"
            with m.State("DECODE"):
                m.d.comb += decoded.eq(1 << fetch_ctx)
                m.next = "REQUEST"

        # --- dispatch --------------------------------------------------------------------------------
        free = Signal(n_eng)
        m.d.comb += free.eq(Cat(~engine.busy for engine in engines))
        ready = Signal(n_ctx)
        dispatch = Signal()
        winner = Signal(range(max(n_ctx, 2)))
        chosen = Signal(range(max(n_eng, 2)))
        won = Signal(n_ctx)
        m.d.comb += won.eq(Mux(dispatch, 1 << winner, 0))
        enough, no_engine = [], []
        for c in range(n_ctx):
            utop = head[c].utop
            slots = [(utop.wait0, utop.count0), (utop.wait1, utop.count1), (utop.wait2, utop.count2)]
            ok = Const(1)
            for token, count in slots:
                need = sum(Mux(other == token, other_count, 0) for other, other_count in slots)
                ok = ok & ((count == 0) | (Array(tokens[c])[token] >= need))
            enough.append(Signal(name=f"ctx{c}_enough"))
            m.d.comb += enough[c].eq(ok)
            owns_none = ((utop.cls == int(EngineClass.ME)) & (table.me_mask[c] == 0)
                         | (utop.cls == int(EngineClass.VE)) & (table.ve_mask[c] == 0)
                         | (utop.cls == int(EngineClass.DMA)) & (table.dma_mask[c] == 0))
            no_engine.append(Signal(name=f"ctx{c}_no_engine"))
            m.d.comb += no_engine[c].eq(owns_none & ((self.policy == Policy.STATIC) | (self.policy == Policy.HARVEST)))
            m.d.comb += ready[c].eq(issuing[c] & enough[c] & ~no_engine[c] & ~stopping[c] & ~killed[c]
                                    & ~over_budget[c])

        masks = {EngineClass.DMA: table.dma_mask, EngineClass.ME: table.me_mask, EngineClass.VE: table.ve_mask}

        def owns(c, e):
            """Context c (an index or a signal) owns engine e."""
            return masks[classes[e]][c].bit_select(class_index[classes[e]].index(e), 1)

        engine_ctx = [Signal(range(max(n_ctx, 2)), name=f"engine{e}_ctx") for e in range(n_eng)]
        wants = [[ready[c] & (head[c].utop.cls == int(classes[e])) for e in range(n_eng)] for c in range(n_ctx)]
        owner_wants = Signal(n_eng)
        for e in range(n_eng):
            m.d.comb += owner_wants[e].eq(Cat(wants[c][e] & owns(c, e) for c in range(n_ctx)).any())

        # Temporal policy: the slice holder and its remaining cycles.
        holder, slice_left = Signal(range(max(n_ctx, 2))), Signal(25)
        running = Signal(n_ctx)
        m.d.comb += running.eq(Cat(self.status[c] == ContextStatus.RUNNING for c in range(n_ctx)))
        m.submodules.slice_arbiter = slice_rr = RoundRobin(n_ctx)
        m.d.comb += slice_rr.requests.eq(running)
        with m.If((self.policy == Policy.TEMPORAL) & slice_rr.valid
                  & ((slice_left == 0) | ~running.bit_select(holder, 1))):
            m.d.comb += slice_rr.advance.eq(1)
            m.d.sync += [holder.eq(slice_rr.grant),
                         slice_left.eq(self.quantum * (table.priority[slice_rr.grant] + 1) - 1)]
        with m.Elif(slice_left != 0):
            m.d.sync += slice_left.eq(slice_left - 1)

        # Operator policy: which context holds each engine class, and whether the class has drained.
        class_holder = {cls: Signal(range(max(n_ctx, 2)), name=f"{cls.name.lower()}_holder")
                        for cls in (EngineClass.ME, EngineClass.VE)}
        class_idle = {cls: Signal(name=f"{cls.name.lower()}_idle") for cls in class_holder}
        for cls, idle in class_idle.items():
            m.d.comb += idle.eq(Cat(free[e] for e in class_index[cls]).all())
        starving = [age[c] >= self.starvation for c in range(n_ctx)]
        # Once the holder has had a class for its slice (QUANTUM x (priority + 1) cycles, as under
        # `temporal`), a starving context that wants the class makes the holder stop issuing to it:
        # the class drains and changes hands, so `operator` starves nobody either.
        class_held = {cls: Signal(25, name=f"{cls.name.lower()}_held") for cls in class_holder}
        class_yields = {cls: Signal(name=f"{cls.name.lower()}_yields") for cls in class_holder}
        for cls, yields in class_yields.items():
            slice_cycles = self.quantum * (table.priority[class_holder[cls]] + 1)
            m.d.comb += yields.eq((class_held[cls] >= slice_cycles) & Cat(
                ready[c] & starving[c] & (head[c].utop.cls == int(cls)) & (class_holder[cls] != c)
                for c in range(n_ctx)).any())

        # Harvest policy: only a uTOp that declares a cost within HARVEST_COST may run on an ME or VE
        # its context does not own; the declared cost bounds how long the owner can wait for it.
        harvestable = [Signal(name=f"ctx{c}_harvestable") for c in range(n_ctx)]
        for c in range(n_ctx):
            cost = head[c].utop.cost
            m.d.comb += harvestable[c].eq((cost != 0) & (cost <= self.harvest_cost))

        # ... and only once the engine's owners have left it idle for HARVEST_GRACE cycles, so an owner
        # running a chain of uTOps does not lose its engine in the short gaps between them.
        owner_idle = [Signal(16, name=f"engine{e}_owner_idle", init=0xFFFF) for e in range(n_eng)]
        for e in range(n_eng):
            with m.If(owner_wants[e] | (engines[e].busy & owns(engine_ctx[e], e))):
                m.d.sync += owner_idle[e].eq(0)
            with m.Elif(~owner_idle[e].all()):
                m.d.sync += owner_idle[e].eq(owner_idle[e] + 1)
        idle_enough = Cat(owner_idle[e] >= self.harvest_grace for e in range(n_eng))

        allowed = [Signal(n_eng, name=f"ctx{c}_allowed") for c in range(n_ctx)]
        for c in range(n_ctx):
            for e in range(n_eng):
                cls = classes[e]
                by_policy = Array([
                    owns(c, e),
                    owns(c, e) | (~owner_wants[e] & harvestable[c] & idle_enough[e]) if cls in HARVESTED_CLASSES
                    else owns(c, e),
                    holder == c,
                    ((class_holder[cls] == c) & ~class_yields[cls]) | class_idle[cls] if cls in class_holder
                    else Const(1),
                ])[self.policy]
                m.d.comb += allowed[c][e].eq(wants[c][e] & free[e] & by_policy)
        eligible = Signal(n_ctx)
        m.d.comb += eligible.eq(Cat(allowed[c].any() for c in range(n_ctx)))
        rank = [Mux(eligible[c], Cat(table.priority[c], starving[c], Const(1, 1)), 0) for c in range(n_ctx)]
        best = _maximum(m, rank, 10, "best_rank")
        m.submodules.dispatch_arbiter = dispatch_rr = RoundRobin(n_ctx)
        m.d.comb += dispatch_rr.requests.eq(Cat(eligible[c] & (rank[c] == best) for c in range(n_ctx)))
        m.d.comb += [dispatch.eq(dispatch_rr.valid), winner.eq(dispatch_rr.grant), dispatch_rr.advance.eq(1)]
        winner_allowed = Signal(n_eng)
        winner_owned = Signal(n_eng)
        m.d.comb += winner_allowed.eq(Array(allowed)[winner])
        m.d.comb += winner_owned.eq(winner_allowed & Array(Cat(owns(c, e) for e in range(n_eng))
                                                           for c in range(n_ctx))[winner])
        owned_pick, owned_found = _lowest_set(m, winner_owned, n_eng, "owned_pick")
        any_pick, _ = _lowest_set(m, winner_allowed, n_eng, "any_pick")
        m.d.comb += chosen.eq(Mux(owned_found, owned_pick, any_pick))

        eng_signal = [Signal(NUM_TOKENS, name=f"engine{e}_signal") for e in range(n_eng)]
        eng_pc = [Signal(HBM_ADDR_BITS, name=f"engine{e}_header_pc") for e in range(n_eng)]
        winner_head = Signal(INSTRUCTION_LAYOUT)
        winner_pc = Signal(HBM_ADDR_BITS)
        windows = [Signal.like(getattr(engines[0], name), name=f"winner_{name}")
                   for name in ("sram_base", "sram_size", "hbm_base", "hbm_size")]
        m.d.comb += [winner_head.eq(Array(head)[winner]), winner_pc.eq(self.pc[winner]),
                     *[signal.eq(getattr(table, name)[winner])
                       for signal, name in zip(windows, ("sram_base", "sram_size", "hbm_base", "hbm_size"))]]
        for cls, holder_of_class in class_holder.items():
            held = class_held[cls]
            with m.If(dispatch & (winner_head.utop.cls == int(cls)) & (winner != holder_of_class)):
                m.d.sync += [holder_of_class.eq(winner), held.eq(0)]
            with m.Elif(~held.all()):
                m.d.sync += held.eq(held + 1)
        for e, engine in enumerate(engines):
            start = dispatch & (chosen == e)
            m.d.comb += [engine.start.eq(start), engine.body_pc.eq(winner_pc + INSTRUCTION_WORDS),
                         engine.body_len.eq(winner_head.utop.len), engine.cost.eq(winner_head.utop.cost),
                         engine.sram_base.eq(windows[0]),
                         engine.sram_size.eq(windows[1]), engine.hbm_base.eq(windows[2]),
                         engine.hbm_size.eq(windows[3])]
            with m.If(start):
                m.d.sync += [engine_ctx[e].eq(winner), eng_signal[e].eq(winner_head.utop.signal),
                             eng_pc[e].eq(winner_pc)]

        # --- completions, per context ----------------------------------------------------------------
        done_ok = Signal(n_eng)
        done_bad = Signal(n_eng)
        done_aborted = Signal(n_eng)
        m.d.comb += [done_ok.eq(Cat(engine.done & (engine.fault == 0) & ~engine.aborted for engine in engines)),
                     done_bad.eq(Cat(engine.done & (engine.fault != 0) & ~engine.aborted for engine in engines)),
                     done_aborted.eq(Cat(engine.done & engine.aborted for engine in engines))]
        # a killed or over-budget context's running uTOps are aborted (they neither signal nor fault)
        abandoned = Signal(max(n_ctx, 2))
        m.d.comb += abandoned.eq(Cat(killed[c] | over_budget[c] for c in range(n_ctx)))
        for e, engine in enumerate(engines):
            m.d.comb += engine.abort.eq(abandoned.bit_select(engine_ctx[e], 1))
        of_ctx = [Signal(n_eng, name=f"ctx{c}_engines") for c in range(n_ctx)]  # last dispatched by c
        mine = [Signal(n_eng, name=f"ctx{c}_busy_engines") for c in range(n_ctx)]  # running c's uTOps
        for c in range(n_ctx):
            m.d.comb += of_ctx[c].eq(Cat(engine_ctx[e] == c for e in range(n_eng)))
            m.d.comb += mine[c].eq(of_ctx[c] & ~free)

        def stop(c, code, at):
            with m.If(~stopping[c]):
                m.d.sync += [stopping[c].eq(1), stop_code[c].eq(code), stop_pc[c].eq(at), stop_key[c].eq(at)]
            m.next = "STOPPING"

        for c in range(n_ctx):
            ok_c, bad_c = Signal(n_eng, name=f"ctx{c}_done_ok"), Signal(n_eng, name=f"ctx{c}_done_bad")
            m.d.comb += [ok_c.eq(done_ok & of_ctx[c]), bad_c.eq(done_bad & of_ctx[c])]
            pc = self.pc[c]

            # Front end.
            with m.FSM(name=f"ctx{c}_front"):
                with m.State("IDLE"):
                    with m.If(self.start[c]):
                        m.next = "FETCH"
                with m.State("FETCH"):
                    with m.If(decoded[c]):
                        with m.If(~known):
                            stop(c, FaultCode.ILLEGAL_OPCODE, pc)
                        with m.Elif(~legal):
                            stop(c, FaultCode.ILLEGAL_FIELD, pc)
                        with m.Elif(engine_of == int(EngineClass.HOST)):
                            m.d.comb += counted[c].eq(1)
                            stop(c, FaultCode.PRIVILEGED, pc)
                        with m.Elif(engine_of != int(EngineClass.CTRL)):
                            m.d.comb += counted[c].eq(1)
                            stop(c, FaultCode.WRONG_CLASS, pc)
                        with m.Elif(opcode == OPCODES["utop"]):
                            m.d.comb += counted[c].eq(1)
                            m.d.sync += head[c].eq(fetched_instr)
                            m.next = "ISSUE"
                        with m.Elif(opcode == OPCODES["fence"]):
                            m.d.comb += counted[c].eq(1)
                            m.next = "FENCE"
                        with m.Elif(opcode == OPCODES["halt"]):
                            m.d.comb += counted[c].eq(1)
                            m.next = "HALT"
                        with m.Else():
                            m.d.comb += counted[c].eq(1)
                            m.d.sync += pc.eq(pc + INSTRUCTION_WORDS)
                    with m.Elif(serving[c]):
                        pass
                    with m.Elif(stopping[c]):
                        m.next = "STOPPING"
                    with m.Elif(killed[c]):
                        stop(c, FaultCode.KILLED, pc)
                    with m.Elif(over_budget[c]):
                        stop(c, FaultCode.WATCHDOG, pc)
                    with m.Elif(pc + INSTRUCTION_WORDS > table.hbm_size[c]):
                        stop(c, FaultCode.FETCH_BOUNDS, pc)
                    with m.Else():
                        m.d.comb += fetching[c].eq(1)
                with m.State("ISSUE"):
                    m.d.comb += issuing[c].eq(1)
                    with m.If(stopping[c] | killed[c] | over_budget[c]):
                        m.next = "FETCH"
                    with m.Elif(~enough[c]):
                        with m.If(inflight[c] == 0):
                            stop(c, FaultCode.TOKEN_DEADLOCK, pc)
                    with m.Elif(no_engine[c]):
                        stop(c, FaultCode.NO_ENGINE, pc)
                    with m.Elif(won[c]):
                        m.d.sync += pc.eq(pc + INSTRUCTION_WORDS * (head[c].utop.len + 1))
                        m.next = "FETCH"
                for name in ("FENCE", "HALT"):
                    with m.State(name):
                        with m.If(stopping[c] | killed[c] | over_budget[c]):
                            m.next = "FETCH"
                        with m.Elif(inflight[c] == 0):
                            m.d.sync += pc.eq(pc + INSTRUCTION_WORDS)
                            if name == "FENCE":
                                m.next = "FETCH"
                            else:
                                m.d.sync += self.status[c].eq(ContextStatus.DONE)
                                m.next = "IDLE"
                with m.State("STOPPING"):
                    with m.If(inflight[c] == 0):
                        m.d.sync += [self.status[c].eq(ContextStatus.FAULTED), self.fault[c].eq(stop_code[c]),
                                     self.fault_pc[c].eq(stop_pc[c]), killed[c].eq(0), stopping[c].eq(0)]
                        m.next = "IDLE"

            # Tokens: completions signal, dispatch consumes. Only a completion or a dispatch of this
            # context changes them; guarding the arithmetic lets a simulator skip it in other cycles.
            utop = head[c].utop
            slots = [(utop.wait0, utop.count0), (utop.wait1, utop.count1), (utop.wait2, utop.count2)]
            overflow = Signal(name=f"ctx{c}_overflow")
            with m.If(ok_c.any() | won[c]):
                for t in range(NUM_TOKENS):
                    inc = sum(Mux(ok_c[e] & eng_signal[e][t], 1, 0) for e in range(n_eng))
                    dec = sum(Mux(won[c] & (token == t), count, 0) for token, count in slots)
                    total = Signal(10, name=f"ctx{c}_t{t}_total")
                    m.d.comb += total.eq(tokens[c][t] + inc)
                    with m.If(total > TOKEN_MAX_COUNT):
                        m.d.comb += overflow.eq(1)
                    m.d.sync += tokens[c][t].eq(Mux(total > TOKEN_MAX_COUNT, TOKEN_MAX_COUNT, total) - dec)
            retired = done_ok | done_bad | done_aborted
            m.d.sync += inflight[c].eq(inflight[c] + won[c] - sum(retired[e] & of_ctx[c][e] for e in range(n_eng)))

            # Faults reported by engines: the earliest in program order wins.
            fault_now, fault_pc_now, fault_key = Const(0, FAULT_BITS), Const(0, HBM_ADDR_BITS), Const(0, HBM_ADDR_BITS)
            for e, engine in enumerate(engines):
                take = bad_c[e] if e == 0 else bad_c[e] & ((fault_now == 0) | (eng_pc[e] < fault_key))
                stage = (Signal(FAULT_BITS, name=f"ctx{c}_fault{e}"), Signal(HBM_ADDR_BITS, name=f"ctx{c}_fault_pc{e}"),
                         Signal(HBM_ADDR_BITS, name=f"ctx{c}_fault_key{e}"))
                m.d.comb += [stage[0].eq(Mux(take, engine.fault, fault_now)),
                             stage[1].eq(Mux(take, engine.fault_pc, fault_pc_now)),
                             stage[2].eq(Mux(take, eng_pc[e], fault_key))]
                fault_now, fault_pc_now, fault_key = stage
            overflow_pc = Signal(HBM_ADDR_BITS, name=f"ctx{c}_overflow_pc")
            for e in reversed(range(n_eng)):
                with m.If(ok_c[e]):
                    m.d.comb += overflow_pc.eq(eng_pc[e])
            with m.If((fault_now != 0) & (~stopping[c] | (fault_key < stop_key[c]))):
                m.d.sync += [stopping[c].eq(1), stop_code[c].eq(fault_now), stop_pc[c].eq(fault_pc_now),
                             stop_key[c].eq(fault_key)]
            with m.Elif(overflow & (~stopping[c] | (overflow_pc < stop_key[c]))):
                m.d.sync += [stopping[c].eq(1), stop_code[c].eq(FaultCode.TOKEN_OVERFLOW),
                             stop_pc[c].eq(overflow_pc), stop_key[c].eq(overflow_pc)]

            # Counters.
            counters = {name: values[c] for name, values in self.counters.items()}
            is_running = self.status[c] == ContextStatus.RUNNING
            busy_of = lambda cls, owned: sum(mine[c][e] & (owns(c, e) if owned else ~owns(c, e))
                                             for e in class_index[cls])
            reclaim = ready[c] & ~won[c] & Cat(  # an engine c owns runs a uTOp it harvested
                wants[c][e] & owns(c, e) & engines[e].busy & ~owns(engine_ctx[e], e) for e in range(n_eng)).any()
            increments = {
                "utops_dma": sum(ok_c[e] for e in class_index[EngineClass.DMA]),
                "utops_me": sum(ok_c[e] for e in class_index[EngineClass.ME]),
                "utops_ve": sum(ok_c[e] for e in class_index[EngineClass.VE]),
                "instructions": counted[c] + sum(Mux(of_ctx[c][e], engines[e].count_instr, 0) for e in range(n_eng)),
                "hbm_read": sum(Mux(of_ctx[c][e], engines[e].count_hbm_read, 0) for e in range(n_eng)),
                "hbm_write": sum(Mux(of_ctx[c][e], engines[e].count_hbm_write, 0) for e in range(n_eng)),
                "macs": sum(Mux(of_ctx[c][e], engines[e].count_macs, 0) for e in range(n_eng)),
                "ve_elements": sum(Mux(of_ctx[c][e], engines[e].count_ve, 0) for e in range(n_eng)),
                "active_cycles": is_running,
                "run_cycles": is_running,
                "me_owned": busy_of(EngineClass.ME, True),
                "me_harvested": busy_of(EngineClass.ME, False),
                "ve_owned": busy_of(EngineClass.VE, True),
                "ve_harvested": busy_of(EngineClass.VE, False),
                "dma_cycles": sum(mine[c][e] for e in class_index[EngineClass.DMA]),
                "reclaim_wait": reclaim,
            }
            if counters.keys() - increments.keys() != {"reclaim_max"}:
                raise AssertionError(f"counters without an increment: {counters.keys() - increments.keys()}")
            for name, value in increments.items():
                m.d.sync += counters[name].eq(counters[name] + value)
            m.d.sync += streak[c].eq(Mux(reclaim, streak[c] + 1, 0))
            with m.If(streak[c] > counters["reclaim_max"]):
                m.d.sync += counters["reclaim_max"].eq(streak[c])
            m.d.sync += age[c].eq(Mux(ready[c] & ~won[c], Mux(age[c] == 0xFFFF, age[c], age[c] + 1), 0))

            # Host requests (after the updates above, so they take precedence).
            with m.If(self.kill[c] & is_running):
                m.d.sync += killed[c].eq(1)
            with m.If(self.start[c]):
                m.d.sync += [pc.eq(self.start_pc), self.status[c].eq(ContextStatus.RUNNING),
                             self.fault[c].eq(0), self.fault_pc[c].eq(0), killed[c].eq(0),
                             counters["run_cycles"].eq(0), *[tokens[c][t].eq(0) for t in range(NUM_TOKENS)]]
            with m.If(self.clear[c]):
                m.d.sync += [counter.eq(0) for counter in counters.values()]

        m.d.comb += self.busy.eq((running != 0) | Cat(inflight[c] != 0 for c in range(n_ctx)).any())
        return m
