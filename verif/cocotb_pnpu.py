"""cocotb tests of the generated pNPU Verilog (run by ``tests/test_cocotb.py`` through the runner).

Environment: ``TCLOUD_CONFIG`` (preset name), ``TCLOUD_CASES`` (number of random cases),
``TCLOUD_SEED``.
"""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from tcloud.firmware import Requant, gemm
from tcloud.isa import EngineClass, Instr, Policy, ProgramImage, encode_stream, get_config
from tcloud.isa import csr
from tcloud.runtime import FunctionalDevice, Placement, load_image, plan_load, run_image
from tcloud.runtime.execute import HbmWindow, read_symbols
from tcloud.verif.cocotb_bench import HbmMonitor, HbmResponder, HostDriver, Scoreboard
from tcloud.verif.random_programs import random_program

CONFIG = get_config(os.environ.get("TCLOUD_CONFIG", "tiny"))
CASES = int(os.environ.get("TCLOUD_CASES", "6"))
SEED = int(os.environ.get("TCLOUD_SEED", "1"))


async def run_case(host, hbm, image, inputs, timeout=2_000_000):
    """Load ``image`` into context 0 through the host interface and HBM, run it, return
    ``(outputs, context)``."""
    (outputs, context), = await run_tenants(host, hbm, [(image, inputs, Placement())], timeout)
    return outputs, context


async def run_tenants(host, hbm, tenants, timeout=2_000_000):
    """Load every ``(image, inputs, placement)``, start them together, wait until the pNPU is idle,
    and return ``[(outputs, context)]`` per tenant."""
    plans = [plan_load(CONFIG, image, inputs, placement) for image, inputs, placement in tenants]
    for plan in plans:
        for command in plan.setup:
            assert await host.command(command) == 0, command
        for address, data in plan.writes:
            hbm.memory[address:address + len(data)] = np.frombuffer(data, np.uint8)
    for plan in plans:
        assert await host.command(plan.start) == 0
    await host.wait_idle(timeout)
    results = []
    for plan, (image, _, placement) in zip(plans, tenants):
        outputs = read_symbols(lambda address, size: hbm.memory[address:address + size].tobytes(), plan.window,
                               image.outputs)
        results.append((outputs, await host.context(placement.context)))
    return results


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


async def start_bench(dut, rng):
    """Start the clock and the testbench components; return ``(host, hbm, monitor, scoreboard)``."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    host, hbm, monitor, scoreboard = HostDriver(dut), HbmResponder(dut, CONFIG, rng), HbmMonitor(dut, CONFIG), Scoreboard()
    for component in (host, hbm, monitor, scoreboard):
        component.start()
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    return host, hbm, monitor, scoreboard


def finish_bench(host, hbm, monitor, scoreboard):
    """Stop the components and raise on protocol errors or scoreboard failures."""
    for component in (hbm, monitor, host, scoreboard):
        component.stop()
    monitor.check_quiescent()
    scoreboard.check()


async def bench(dut, cases):
    rng = np.random.default_rng(SEED)
    host, hbm, monitor, scoreboard = await start_bench(dut, rng)
    for name, image, inputs in cases(rng):
        expected, info = run_image(FunctionalDevice(CONFIG), image, inputs)
        outputs, context = await run_case(host, hbm, image, inputs)
        scoreboard.compare(name, expected, info.counters, outputs, context)
        dut._log.info("%s: %s", name, context["status"].name)
    finish_bench(host, hbm, monitor, scoreboard)


@cocotb.test()
async def constrained_random_gemm(dut):
    """Firmware GEMMs: 1x1x1, non-multiples of the array, K >> array, random shapes; random HBM timing."""
    await bench(dut, gemm_cases)


@cocotb.test()
async def random_programs(dut):
    """Constrained-random DMA/ME/VE programs under random HBM latency and backpressure."""
    def cases(rng):
        for i in range(CASES):
            seed = int(rng.integers(0, 1 << 30))
            image, inputs = random_program(CONFIG, seed, utops=8)
            yield f"random program {seed}", image, inputs
    await bench(dut, cases)


def attacker(rng):
    """A program that faults: a DMA outside its HBM window, or a write past its scratchpad window."""
    if rng.integers(0, 2):
        body = [Instr("dma.load", sram=0, hbm=0x10000, rows=1, row_bytes=64)]
        cls = EngineClass.DMA
    else:
        body = [Instr("ve.fill", dst=0x3F0, n=8, value=-1)]
        cls = EngineClass.VE
    code = encode_stream([Instr("utop", cls=int(cls), len=1), *body, Instr("halt")])
    return ProgramImage.for_config(CONFIG, code, entry=0, hbm_bytes=0x1000, sram_bytes=0x400, symbols=[])


@cocotb.test()
async def multi_tenant(dut):
    """Every context at once under a random policy (random GEMMs, random programs and faulting
    attackers): per-context outputs, counters and fault codes against the golden model alone."""
    rng = np.random.default_rng(SEED)
    host, hbm, monitor, scoreboard = await start_bench(dut, rng)
    sram_share = CONFIG.sram_bytes // CONFIG.contexts
    for round_ in range(CASES):
        policy = Policy(int(rng.integers(0, len(Policy))))
        await host.write(csr.GLOBAL["POLICY"], int(policy))
        tenants, names = [], []
        for c in range(CONFIG.contexts):
            kind = int(rng.integers(0, 3))
            if kind == 0:
                m, k, n = (int(v) for v in rng.integers(1, 2 * CONFIG.me_rows, 3))
                image = gemm(CONFIG, m, k, n)
                inputs = {"A": rng.integers(-128, 128, (m, k), dtype=np.int8),
                          "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}
                names.append(f"gemm {m}x{k}x{n}")
            elif kind == 1:
                seed = int(rng.integers(0, 1 << 30))
                image, inputs = random_program(CONFIG, seed, utops=6)
                names.append(f"random program {seed}")
            else:
                image, inputs = attacker(rng), {}
                names.append("attacker")
            assert image.sram_bytes <= sram_share
            tenants.append((image, inputs, Placement(context=c, hbm_base=c << 20, sram_base=c * sram_share)))
        results = await run_tenants(host, hbm, tenants)
        for name, (image, inputs, placement), (outputs, context) in zip(names, tenants, results):
            golden = FunctionalDevice(CONFIG)
            load_image(golden, image, inputs, placement)
            golden.run()
            expected = golden.context(placement.context)
            label = f"round {round_} ({policy.name.lower()}) context {placement.context}: {name}"
            if expected.fault:
                scoreboard.compare_fault(label, expected.fault, context)
            else:
                expected_outputs = read_symbols(golden.read_hbm, HbmWindow(placement.hbm_base, image.hbm_bytes),
                                                image.outputs)
                scoreboard.compare(label, expected_outputs, expected.counters, outputs, context)
        dut._log.info("round %d under %s: %s", round_, policy.name, ", ".join(names))
    finish_bench(host, hbm, monitor, scoreboard)
