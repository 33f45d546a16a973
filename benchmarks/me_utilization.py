"""Matrix-engine utilization of a large GEMM on the Verilator model, and where the cycles go.

``busy`` is the fraction of cycles an ME is executing a uTOp (fetching, reading operands, streaming,
writing back); ``array`` is the fraction of its peak MAC rate it achieves
(MACs / (cycles × me_count × rows × cols)). Writes ``benchmarks/results/me_utilization.json``.
``python -m benchmarks.me_utilization [--m 512 --k 512 --n 512 --config small]``.
"""

import argparse
import time

import numpy as np

from tcloud.firmware import gemm, plan_gemm
from tcloud.firmware.gemm import me_utop_cost
from tcloud.isa import get_config
from tcloud.isa.cost import HARVEST_COST_DEFAULT
from tcloud.runtime import FunctionalDevice, load_image, read_outputs, run_image
from tcloud.runtime.api import run_timing
from tcloud.runtime.backends.verilator import VerilatorDevice

from .common import conditions, write



WHERE_THE_REST_GOES = (
    "Each ME uTOp streams one A row per cycle through the array for mb rows per k tile, reading it from "
    "the banked scratchpad, where it may wait for a bank another port holds (the DMA's loads and stores, "
    "the other MEs' rows and weight loads, the write-back of accumulators); between k tiles a few cycles "
    "go to instruction turnaround (the next loadw's weights were loaded into the idle bank during the "
    "previous matmul). Once per uTOp the local accumulators are written back (mb rows) and, for later K "
    "chunks, loaded first (mb reads), and the uTOp's header and first instruction cross the HBM "
    "latency. The default plan keeps every ME uTOp within HARVEST_COST's reset value (so the harvest "
    "policy may share it): shorter uTOps pay the write-back, load and fetch latency more often; "
    "'unlimited_utops' is the same GEMM planned without that limit.")

HISTORY = (
    "Array fraction, unlimited uTOps. At an 8-cycle HBM with a register-file scratchpad (13 read "
    "ports per bank): v1 (one row per round trip) 4.4%; streaming ME with local accumulators 63.3%; "
    "background collector and prefetch 70.1%; two scratchpad write ports 73.2%; stores emitted a block "
    "late 87.2%; weight loader and autonomous prefetch 89.8%; direct pop from the prefetch buffer 90.5%; "
    "91.7% at d93067f. Realistic memory system, 120-cycle HBM: 1R1W banks behind a crossbar and a "
    "2-instruction prefetcher 50.0%; read sharing 50.0%; fetch_depth-deep prefetch 69.2% (72.0% at an "
    "8-cycle HBM: bank conflicts, not latency); skewed banks 88.9%; prefetch from the first body "
    "instruction (one round trip per uTOp start, not two) 90.8%.")


def hbm_timing(cfg, latency=None):
    """The HBM model a run uses (the preset's latency unless ``latency``), stated so reports record it."""
    return {"hbm_latency": cfg.hbm_latency if latency is None else latency, "hbm_jitter": 0,
            "hbm_accept_probability": 1.0, "hbm_bytes_per_cycle": cfg.hbm_bytes_per_cycle}


def measure(cfg, m, k, n, max_utop_cost, latency=None):
    """Run one GEMM planned with ``max_utop_cost`` on Verilator; check it; return its figures."""
    rng = np.random.default_rng(0)
    inputs = {"A": rng.integers(-128, 128, (m, k), dtype=np.int8), "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}
    plan = plan_gemm(cfg, m, k, n, max_utop_cost=max_utop_cost)
    image = gemm(cfg, m, k, n, plan=plan)
    device = VerilatorDevice(cfg, hbm_latency=hbm_timing(cfg, latency)["hbm_latency"])
    image = load_image(device, image, inputs)
    before, start = device.stats(), time.perf_counter()
    assert device.run()
    seconds = time.perf_counter() - start
    timing = run_timing(before, device.stats())
    result = read_outputs(device, image)["C"]
    expected, _ = run_image(FunctionalDevice(cfg), image, inputs)
    assert np.array_equal(result, expected["C"])
    cycles = timing["cycles"]
    peak = cycles * cfg.me_count * cfg.me_rows * cfg.me_cols
    return {"max_utop_cost": max_utop_cost, "plan": {"mb": plan.mb, "nb": plan.nb, "kb": plan.kb},
            "me_utop_cost": me_utop_cost(cfg, plan.mb, plan.kb),
            "cycles": cycles, "wall_seconds": round(seconds, 2),
            "me_busy_fraction": timing["utilization"]["me"],
            "me_array_fraction": round(m * k * n / peak, 4),
            "dma_busy_fraction": timing["utilization"]["dma"],
            "utops": device.context(0).counters["utops"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    for dim in ("m", "k", "n"):
        parser.add_argument(f"--{dim}", type=int, default=512)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    cfg = get_config(args.config)
    m, k, n = args.m, args.k, args.n
    recorded = conditions(cfg, hbm_timing(cfg))  # before measuring: the sources may change meanwhile
    harvestable = measure(cfg, m, k, n, HARVEST_COST_DEFAULT)
    unlimited = measure(cfg, m, k, n, None)
    report = {
        **recorded, "gemm": [m, k, n],
        "ideal_cycles": m * k * n // (cfg.me_count * cfg.me_rows * cfg.me_cols),
        **harvestable,
        "unlimited_utops": unlimited,
        "harvestability_cost": round(harvestable["cycles"] / unlimited["cycles"], 3),
        "target_me_busy_fraction": 0.9,
        "where_the_rest_goes": WHERE_THE_REST_GOES,
        "history": HISTORY,
    }
    write("me_utilization", report, args.out)
    for label, r in (("harvestable uTOps", harvestable), ("unlimited uTOps", unlimited)):
        print(f"{cfg.name} GEMM {m}x{k}x{n}, {label} (cost {r['me_utop_cost']}): {r['cycles']} cycles "
              f"(ideal {report['ideal_cycles']}), ME busy {r['me_busy_fraction']:.1%}, "
              f"array {r['me_array_fraction']:.1%}")


if __name__ == "__main__":
    main()
