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
from tcloud.isa import get_config
from tcloud.runtime import FunctionalDevice, plan_load, run_image
from tcloud.verif.cocotb_bench import HbmMonitor, HbmResponder, HostDriver, Scoreboard
from tcloud.verif.random_programs import random_program

CONFIG = get_config(os.environ.get("TCLOUD_CONFIG", "tiny"))
CASES = int(os.environ.get("TCLOUD_CASES", "6"))
SEED = int(os.environ.get("TCLOUD_SEED", "1"))


async def run_case(host, hbm, image, inputs, timeout=2_000_000):
    """Load ``image`` into context 0 through the host interface and HBM, run it, return
    ``(outputs, context)``."""
    plan = plan_load(CONFIG, image, inputs)
    for command in plan.setup:
        assert await host.command(command) == 0, command
    for address, data in plan.writes:
        hbm.memory[address:address + len(data)] = np.frombuffer(data, np.uint8)
    assert await host.command(plan.start) == 0
    await host.wait_idle(timeout)
    outputs = {s.name: s.unpack(hbm.memory[s.offset:s.offset + s.nbytes].tobytes()) for s in image.outputs}
    return outputs, await host.context(0)


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


async def bench(dut, cases):
    rng = np.random.default_rng(SEED)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    host, hbm, monitor, scoreboard = HostDriver(dut), HbmResponder(dut, CONFIG, rng), HbmMonitor(dut, CONFIG), Scoreboard()
    for component in (host, hbm, monitor, scoreboard):
        component.start()
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    for name, image, inputs in cases(rng):
        expected, info = run_image(FunctionalDevice(CONFIG), image, inputs)
        outputs, context = await run_case(host, hbm, image, inputs)
        scoreboard.compare(name, expected, info.counters, outputs, context)
        dut._log.info("%s: %s", name, context["status"].name)
    for component in (hbm, monitor, host, scoreboard):
        component.stop()
    monitor.check_quiescent()
    scoreboard.check()


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
