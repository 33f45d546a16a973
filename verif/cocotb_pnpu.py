"""cocotb tests of the generated pNPU Verilog (run by ``tests/test_cocotb.py`` through the runner).

Every test resets the pNPU and runs the bench of :mod:`tcloud.verif.cocotb_bench`: the monitor hands
each HBM request to the scoreboard (writes checked against the golden model as they happen) and to
the functional coverage; the protocol checker watches both HBM streams. The last test writes the
coverage report.

The planted cases of :mod:`tcloud.verif.planted` reach what random cases rarely do: every fault
code (and the host's ``ctx.kill`` and watchdog), every token pattern of every engine class and every
HBM backpressure level; each is scored against the golden model like the random ones.

Environment: ``TCLOUD_CONFIG`` (preset name), ``TCLOUD_CASES`` (number of random cases),
``TCLOUD_SEED``, ``TCLOUD_PLANTED`` (``all``, the default: every planted case under every policy;
``once``: each once, see :func:`planted_rounds`), ``TCLOUD_COVERAGE`` (where the coverage report
goes, default ``coverage.yml``), ``TCLOUD_TIMING`` (where :func:`spec_timing` writes its cycle
counts, default ``timing.json``).
"""

import itertools
import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from tcloud.firmware import Requant, gemm
from tcloud.isa import ContextStatus, EngineClass, Instr, Policy, ProgramImage, encode_stream, get_config
from tcloud.isa import csr
from tcloud.runtime import Placement, load_image, plan_load
from tcloud.runtime.execute import HbmWindow, read_symbols
from tcloud.isa.host_protocol import HostCommandTimeout
from tcloud.verif import functional_coverage
from tcloud.verif.cocotb_bench import GoldenDevice, HbmBus, HbmMonitor, HbmResponder, HostDriver, Scoreboard
from tcloud.verif.cocotb_protocol import HbmProtocolChecker
from tcloud.verif.hbm_spec import timing_programs
from tcloud.verif.planted import WATCHDOG_BUDGET, fault_cases, run_golden, token_program
from tcloud.verif.random_programs import random_program

CONFIG = get_config(os.environ.get("TCLOUD_CONFIG", "tiny"))
CASES = int(os.environ.get("TCLOUD_CASES", "6"))
SEED = int(os.environ.get("TCLOUD_SEED", "1"))
PLANTED = os.environ.get("TCLOUD_PLANTED", "all")
RESET_CYCLES = 2  # rst is registered: high at one edge, reset values at the next


class Bench:
    """The clock, the reset and the testbench components around the pNPU ``dut``.

    Parameters
    ----------
    dut
    rng : numpy.random.Generator
    responder : dict
        Keyword arguments of :class:`HbmResponder` (latency, pause probability).
    """

    def __init__(self, dut, rng, **responder):
        self.dut = dut
        self.bus = HbmBus(dut, "hbm", CONFIG)
        self.host, self.scoreboard = HostDriver(dut), Scoreboard()
        self.hbm = HbmResponder(self.bus, CONFIG, rng, **responder)
        self.checker = HbmProtocolChecker(self.bus)
        self.monitor = HbmMonitor(self.bus, [self.scoreboard.hbm_request, functional_coverage.sample_hbm])
        self.components = (self.host, self.hbm, self.monitor, self.checker, self.scoreboard)

    async def start(self):
        cocotb.start_soon(Clock(self.dut.clk, 10, unit="ns").start())
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, RESET_CYCLES)
        self.dut.rst.value = 0
        for component in self.components:
            component.start()
        await RisingEdge(self.dut.clk)
        self.policy = Policy(await self.host.read(csr.GLOBAL["POLICY"]))
        return self

    def finish(self):
        """Stop the components and raise on protocol violations or scoreboard failures (one
        ``AssertionError`` naming both)."""
        for component in self.components:
            component.stop()
        errors = []
        for check in (self.checker.check, self.scoreboard.check):
            try:
                check()
            except AssertionError as error:
                errors.append(str(error))
        if errors:
            raise AssertionError("; ".join(errors))

    async def set_policy(self, policy):
        await self.host.set_policy(policy)  # raises if the pNPU refuses it, as the runtime does
        self.policy = policy

    async def run_tenants(self, tenants, goldens, timeout=2_000_000, commands=(), during=None):
        """Load every ``(image, inputs, placement)``, issue the host ``commands``, start the tenants
        together, await ``during()`` (if given: what the host does while they run), wait until the
        pNPU is idle, and return ``[(outputs, context)]`` per tenant; the scoreboard expects the
        writes of ``goldens`` (a :class:`GoldenDevice` per tenant, already run) and the scrubs."""
        host, scoreboard = self.host, self.scoreboard
        plans = [plan_load(CONFIG, image, inputs, placement) for image, inputs, placement in tenants]
        scoreboard.new_case()
        for plan, golden in zip(plans, goldens):
            scoreboard.expect_scrub(plan.window.base, plan.window.size)
            scoreboard.expect_writes(golden.machine.hbm_writes)
        for plan in plans:
            for command in plan.setup:
                assert await host.command(command) == 0, command
            for address, data in plan.writes:
                self.hbm.memory[address:address + len(data)] = np.frombuffer(data, np.uint8)
        for command in commands:
            assert await host.command(command) == 0, command
        for plan in plans:
            assert await host.command(plan.start) == 0
        if during is not None:
            await during()
        await host.wait_idle(timeout)
        results = []
        for plan, (image, _, placement) in zip(plans, tenants):
            outputs = read_symbols(lambda address, size: self.hbm.memory[address:address + size].tobytes(),
                                   plan.window, image.outputs)
            results.append((outputs, await host.context(placement.context)))
        return results

    def score(self, name, image, placement, golden, outputs, context):
        """Compare one tenant with its golden run (memory window, outputs or fault, counters) and
        sample its coverage."""
        expected = golden.context(placement.context)
        window = HbmWindow(placement.hbm_base, image.hbm_bytes)
        if expected.fault:
            self.scoreboard.compare_fault(name, expected.fault, expected.fault_pc, context)
        else:
            self.scoreboard.compare(name, read_symbols(golden.read_hbm, window, image.outputs), expected.counters,
                                    outputs, context)
        self.scoreboard.compare_memory(name, window.base, golden.read_hbm(window.base, window.size),
                                       self.hbm.memory[window.base:window.base + window.size].tobytes())
        functional_coverage.sample_case(image, self.policy, context)


def golden_run(image, inputs, placement=Placement(), policy=Policy.HARVEST):
    golden = GoldenDevice(CONFIG)
    golden.set_policy(policy)
    load_image(golden, image, inputs, placement)
    golden.run()
    return golden


def gemm_cases(rng):
    rows, cols = CONFIG.me_rows, CONFIG.me_cols
    shapes = [(1, 1, 1), (rows + 1, 2 * rows + 3, cols - 1), (3, 6 * rows + 1, 2), (cols, rows, cols)]
    while len(shapes) < CASES:
        shapes.append(tuple(int(x) for x in rng.integers(1, 3 * rows, 3)))
    for m, k, n in shapes[:max(CASES, 4)]:
        bias = bool(rng.integers(0, 2))
        requant = Requant.from_scale(float(rng.uniform(1e-4, 1e-2)), int(rng.integers(-20, 20))) \
            if rng.integers(0, 2) else None
        image = gemm(CONFIG, m, k, n, bias=bias, requant=requant)
        inputs = {"A": rng.integers(-128, 128, (m, k), dtype=np.int8),
                  "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}
        if bias:
            inputs["bias"] = rng.integers(-20000, 20000, n, dtype=np.int32)
        yield f"gemm {m}x{k}x{n} bias={bias} requant={requant is not None}", image, inputs


async def single_tenant(dut, cases):
    bench = await Bench(dut, np.random.default_rng(SEED)).start()
    for name, image, inputs in cases(np.random.default_rng(SEED)):
        golden = golden_run(image, inputs)
        (outputs, context), = await bench.run_tenants([(image, inputs, Placement())], [golden])
        bench.score(name, image, Placement(), golden, outputs, context)
        dut._log.info("%s: %s", name, context["status"].name)
    bench.finish()


@cocotb.test()
async def constrained_random_gemm(dut):
    """Firmware GEMMs: 1x1x1, non-multiples of the array, K >> array, random shapes; random HBM timing."""
    await single_tenant(dut, gemm_cases)


@cocotb.test()
async def random_programs(dut):
    """Constrained-random DMA/ME/VE programs under random HBM latency and backpressure."""
    def cases(rng):
        for i in range(CASES):
            seed = int(rng.integers(0, 1 << 30))
            image, inputs = random_program(CONFIG, seed, utops=8)
            yield f"random program {seed}", image, inputs
    await single_tenant(dut, cases)


def attacker(dma):
    """A program that faults: a DMA outside its HBM window, or a write past its scratchpad window."""
    if dma:
        body = [Instr("dma.load", sram=0, hbm=0x10000, rows=1, row_bytes=64)]
        cls = EngineClass.DMA
    else:
        body = [Instr("ve.fill", dst=0x3F0, n=8, value=-1)]
        cls = EngineClass.VE
    code = encode_stream([Instr("utop", cls=int(cls), len=1), *body, Instr("halt")])
    return ProgramImage.for_config(CONFIG, code, entry=0, hbm_bytes=0x1000, sram_bytes=0x400, symbols=[])


@cocotb.test()
async def multi_tenant(dut):
    """Every context at once under each policy in turn (random GEMMs and random programs, and in each
    round one attacker, alternately faulting on HBM and on scratchpad bounds): per-context memory,
    outputs, counters and fault codes against the golden model alone."""
    rng = np.random.default_rng(SEED)
    bench = await Bench(dut, rng).start()
    sram_share = CONFIG.sram_bytes // CONFIG.contexts
    policies = [Policy(int(p)) for p in rng.permutation(len(Policy))]
    for round_ in range(max(CASES, len(Policy))):
        await bench.set_policy(policies[round_ % len(policies)])
        tenants, names = [], []
        for c in range(CONFIG.contexts):
            if c == round_ % CONFIG.contexts:
                image, inputs = attacker(dma=round_ % 2 == 0), {}
                names.append("attacker")
            elif rng.integers(0, 2):
                m, k, n = (int(v) for v in rng.integers(1, 2 * CONFIG.me_rows, 3))
                image = gemm(CONFIG, m, k, n)
                inputs = {"A": rng.integers(-128, 128, (m, k), dtype=np.int8),
                          "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}
                names.append(f"gemm {m}x{k}x{n}")
            else:
                seed = int(rng.integers(0, 1 << 30))
                image, inputs = random_program(CONFIG, seed, utops=6)
                names.append(f"random program {seed}")
            assert image.sram_bytes <= sram_share
            tenants.append((image, inputs, Placement(context=c, hbm_base=c << 20, sram_base=c * sram_share)))
        goldens = [golden_run(*tenant, policy=bench.policy) for tenant in tenants]
        results = await bench.run_tenants(tenants, goldens)
        for name, (image, _, placement), golden, (outputs, context) in zip(names, tenants, goldens, results):
            label = f"round {round_} ({bench.policy.name.lower()}) context {placement.context}: {name}"
            bench.score(label, image, placement, golden, outputs, context)
        dut._log.info("round %d under %s: %s", round_, bench.policy.name, ", ".join(names))
    bench.finish()


async def kill_at(host, context, pc, timeout=200_000):
    """``ctx.kill`` ``context`` once its next top-level instruction is at ``pc`` (where it waits for a
    long uTOp); give up if it stops first (the scoreboard reports how)."""
    for _ in range(timeout):
        if await host.read(csr.context_csr(context, "PC")) == pc:
            assert await host.command(Instr("ctx.kill", ctx=context)) == 0
            return
        if ContextStatus(await host.read(csr.context_csr(context, "STATUS"))) != ContextStatus.RUNNING:
            return
    raise TimeoutError(f"context {context} did not reach pc {pc:#x} within {timeout} polls")


async def run_planted(bench, cases, first_context, label):
    """Run planted ``cases`` together, the first in ``first_context`` and the next ones in the contexts
    after it; kill the kill case's context and give the watchdog case its budget; score them all."""
    share = CONFIG.sram_bytes // CONFIG.contexts
    contexts = [(first_context + i) % CONFIG.contexts for i in range(len(cases))]
    placements = [Placement(context=c, hbm_base=c << 20, sram_base=c * share, **case.masks)
                  for c, case in zip(contexts, cases)]
    tenants = [(case.image, {}, placement) for case, placement in zip(cases, placements)]
    goldens = [run_golden(case, GoldenDevice(CONFIG), placement, bench.policy) for case, placement in zip(cases, placements)]
    budgets = [c for c, case in zip(contexts, cases) if case.host == "watchdog"]
    kills = [(c, case.stop_at) for c, case in zip(contexts, cases) if case.host == "kill"]

    async def during():
        for context, pc in kills:
            await kill_at(bench.host, context, pc)
    results = await bench.run_tenants(tenants, goldens, commands=[Instr("ctx.budget", ctx=c, cycles=WATCHDOG_BUDGET)
                                                                  for c in budgets], during=during)
    for c in budgets:  # the budget outlives the run; the next tenant of the context has none
        assert await bench.host.command(Instr("ctx.budget", ctx=c, cycles=0)) == 0
    for case, (image, _, placement), golden, (outputs, context) in zip(cases, tenants, goldens, results):
        bench.score(f"{label}, context {placement.context}: {case.name}", image, placement, golden, outputs, context)
        bench.dut._log.info("%s, context %d: %s -> %s %s at %#x", label, placement.context, case.name,
                            context["status"].name, context["fault"].name, context["fault_pc"])


def planted_rounds():
    """``(policy, cases, first context, label)`` of every round of :func:`planted_faults`: with
    ``TCLOUD_PLANTED=all`` every planted case under every policy (the kill and watchdog cases' long
    uTOps of another pair of engine classes under each); with ``once`` every case once, each round
    under the next policy under which the golden model raises every planted fault of the round."""
    classes, policies, n = [EngineClass.DMA, EngineClass.ME, EngineClass.VE], list(Policy), CONFIG.contexts
    quick = [case for case in fault_cases(CONFIG) if not case.host]
    chunks = [quick[r:r + n] for r in range(0, len(quick), n)]

    def long_round(i):
        return [next(case for case in fault_cases(CONFIG, classes[(i + j) % len(classes)]) if case.host == host)
                for j, host in enumerate(("kill", "watchdog"))]

    def raises(case, policy):
        return run_golden(case, GoldenDevice(CONFIG), Placement(**case.masks), policy).context(0).fault == case.fault

    rounds = []
    if PLANTED == "all":
        for i, policy in enumerate(policies):
            rounds += [(policy, chunk, (i + r) % n) for r, chunk in enumerate(chunks)]
            rounds.append((policy, long_round(i), i % n))
    else:
        for r, chunk in enumerate(chunks):
            turn = policies[r % len(policies):] + policies[:r % len(policies)]
            rounds.append((next(p for p in turn if all(raises(case, p) for case in chunk)), chunk, r % n))
        rounds.append((policies[len(chunks) % len(policies)], long_round(0), 0))
    return [(policy, cases, first, f"{policy.name.lower()} round {r}")
            for r, (policy, cases, first) in enumerate(rounds)]


@cocotb.test()
async def planted_faults(dut):
    """Every fault code the pNPU raises, planted (:func:`tcloud.verif.planted.fault_cases`), as many
    tenants at a time as there are contexts, under the policies of :func:`planted_rounds`; last in
    each policy, together, ``ctx.kill`` of a context whose next uTOp waits for a long uTOp and the
    watchdog of another behind a fence. Fault code and fault PC (or outputs and counters) and memory
    against the golden model. The HBM answers sooner and pauses less than in the random tests: the
    planted programs mostly fetch instructions (the overflow's 256 uTOps most of all)."""
    bench = await Bench(dut, np.random.default_rng(SEED), latency=(2, 6), pause_probability=0.1).start()
    for policy, cases, first, label in planted_rounds():
        if policy != bench.policy:
            await bench.set_policy(policy)
        await run_planted(bench, cases, first, label)
    bench.finish()


BACKPRESSURE = [False, True] + [False] + [True] * 3 + [False] + [True] * 8 + [False] + [True] * 20
"""The planted HBM pauses (``True``: ``req.ready`` low): runs of 1, 3, 8 and 20 cycles in turn, one ready
cycle between them, so back-to-back requests stall for every level of
:data:`~tcloud.verif.functional_coverage.STALLS`."""


@cocotb.test()
async def token_patterns_under_backpressure(dut):
    """A uTOp of every engine class with every token pattern
    (:func:`tcloud.verif.planted.token_program`), its fetches, DMA loads and DMA stores under an HBM
    that pauses by :data:`BACKPRESSURE`: every backpressure level for every request kind (under the
    static policy)."""
    bench = await Bench(dut, np.random.default_rng(SEED), pauses=itertools.cycle(BACKPRESSURE)).start()
    await bench.set_policy(Policy.STATIC)
    image, inputs = token_program(CONFIG, functional_coverage.WAIT_SLOTS)
    golden = golden_run(image, inputs, policy=bench.policy)
    (outputs, context), = await bench.run_tenants([(image, inputs, Placement())], [golden])
    bench.score("token patterns", image, Placement(), golden, outputs, context)
    bench.finish()


@cocotb.test()
async def wrong_write_is_caught_at_the_transaction(dut):
    """The scoreboard flags an HBM write the golden model does not make when it crosses the bus: the
    pNPU stores a GEMM of inputs that differ from the golden model's in one element."""
    rng = np.random.default_rng(SEED)
    bench = await Bench(dut, rng).start()
    k, n = CONFIG.me_rows, CONFIG.me_cols
    image = gemm(CONFIG, k, k, n)
    inputs = {"A": rng.integers(-128, 128, (k, k), dtype=np.int8), "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}
    golden = golden_run(image, inputs)
    inputs["A"] = inputs["A"] ^ np.int8(1)
    await bench.run_tenants([(image, inputs, Placement())], [golden])
    for component in bench.components:
        component.stop()
    bench.checker.check()
    first = bench.scoreboard.failures[0] if bench.scoreboard.failures else ""
    assert first.startswith("cycle ") and "HBM write of" in first, bench.scoreboard.failures


@cocotb.test()
async def host_command_timeout(dut):
    """A host command that cannot complete (a scrub while the HBM never takes a request) raises."""
    bench = await Bench(dut, np.random.default_rng(SEED), pause_probability=1.0).start()
    await bench.host.command(Instr("ctx.hbm", ctx=0, base=0, size=CONFIG.hbm_port_bytes))
    timeout = 10 * CONFIG.hbm_latency
    try:
        await bench.host.command(Instr("ctx.scrub", ctx=0), timeout=timeout)
    except HostCommandTimeout as error:
        assert "ctx.scrub" in str(error) and str(timeout) in str(error)
    else:
        raise AssertionError("a scrub that cannot complete returned instead of raising")
    for component in bench.components:
        component.stop()


@cocotb.test()
async def spec_timing(dut):
    """The responder with the configured latency and no pauses on :func:`timing_programs`: writes each
    program's ``RUN_CYCLES`` to ``TCLOUD_TIMING`` (JSON) for comparison with the other HBM models."""
    bench = await Bench(dut, np.random.default_rng(SEED), latency=(CONFIG.hbm_latency,) * 2,
                        pause_probability=0).start()
    cycles = []
    for image, inputs in timing_programs(CONFIG):
        golden = golden_run(image, inputs)
        (outputs, context), = await bench.run_tenants([(image, inputs, Placement())], [golden])
        bench.score("timing program", image, Placement(), golden, outputs, context)
        cycles.append(context["run_cycles"])
    bench.finish()
    with open(os.environ.get("TCLOUD_TIMING", "timing.json"), "w") as file:
        json.dump(cycles, file)


@cocotb.test()
async def coverage_report(dut):
    """Write the functional coverage of the tests before (the whole run) and log its uncovered bins."""
    path = os.environ.get("TCLOUD_COVERAGE", "coverage.yml")
    functional_coverage.write_report(path, dut._log.info)
    assert os.path.exists(path)
