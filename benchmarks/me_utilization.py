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
from tcloud.isa import get_config
from tcloud.runtime import FunctionalDevice, load_image, read_outputs, run_image
from tcloud.runtime.api import run_timing
from tcloud.runtime.verilator_device import VerilatorDevice

from .common import write


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    for dim in ("m", "k", "n"):
        parser.add_argument(f"--{dim}", type=int, default=512)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    cfg = get_config(args.config)
    m, k, n = args.m, args.k, args.n
    rng = np.random.default_rng(0)
    inputs = {"A": rng.integers(-128, 128, (m, k), dtype=np.int8), "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}
    image = gemm(cfg, m, k, n)
    device = VerilatorDevice(cfg)
    image = load_image(device, image, inputs)
    before, start = device.stats(), time.perf_counter()
    assert device.run()
    seconds = time.perf_counter() - start
    timing = run_timing(before, device.stats())
    result = read_outputs(device, image)["C"]
    expected, _ = run_image(FunctionalDevice(cfg), image, inputs)
    assert np.array_equal(result, expected["C"])
    cycles = timing["cycles"]
    macs = m * k * n
    peak = cycles * cfg.me_count * cfg.me_rows * cfg.me_cols
    counters = device.context(0).counters
    plan = plan_gemm(cfg, m, k, n)
    report = {
        "config": cfg.name, "gemm": [m, k, n], "plan": {"mb": plan.mb, "nb": plan.nb, "kb": plan.kb},
        "cycles": cycles, "wall_seconds": round(seconds, 2),
        "ideal_cycles": macs // (cfg.me_count * cfg.me_rows * cfg.me_cols),
        "me_busy_fraction": timing["utilization"]["me"],
        "me_array_fraction": round(macs / peak, 4),
        "dma_busy_fraction": timing["utilization"]["dma"],
        "utops": counters["utops"],
        "target_me_busy_fraction": 0.9,
        "where_the_rest_goes": (
            "Each ME uTOp streams one A row per cycle through the array for mb rows per k tile; between "
            "k tiles about 8 cycles go to instruction turnaround (decode/execute of the prefetched "
            "loadw, whose weights were already loaded into the idle bank during the previous matmul, "
            "and of the next matmul). Once per uTOp the local accumulators are written back "
            "(mb rows through the scratchpad's shared write ports, contended by the DMA loads) and, for "
            "later K chunks, loaded first (mb reads). The rest is the pipeline fill of the first "
            "chunk and the drain of the last block."),
        "history": "v1 (one row per round trip) 4.4%; streaming ME with local accumulators 63.3%; "
                   "background collector and prefetch 70.1%; two scratchpad write ports 73.2%; stores "
                   "emitted a block late 87.2%; weight loader and autonomous prefetch 89.8%; direct "
                   "pop from the prefetch buffer 90.5% (array fraction)",
    }
    write("me_utilization", report, args.out)
    print(f"{cfg.name} GEMM {m}x{k}x{n}: {cycles} cycles (ideal {report['ideal_cycles']}), ME busy "
          f"{report['me_busy_fraction']:.1%}, array {report['me_array_fraction']:.1%}")


if __name__ == "__main__":
    main()
