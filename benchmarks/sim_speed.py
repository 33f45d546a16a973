"""Simulated cycles per second of the same GEMM program on the Amaranth and Verilator backends.

Both backends run in this process with identical, deterministic HBM timing (the preset's), so the
ratio is measured on the same machine at the same moment; the cycle counts must agree exactly. Also
records the size of the generated Verilog (what Verilator compiles). Writes
``benchmarks/results/sim_speed.json``. ``python -m benchmarks.sim_speed [--configs tiny small]``.
"""

import os
import time

import numpy as np

from tcloud.firmware import gemm
from tcloud.isa import get_config
from tcloud.rtl.pnpu import PNPU
from tcloud.rtl.verilog import to_verilog
from tcloud.runtime import FunctionalDevice, run_image
from tcloud.runtime.backends.amaranth import AmaranthDevice
from tcloud.runtime.backends.verilator import VerilatorDevice

from .common import conditions, per_config_args, write

SHAPES = {"tiny": (12, 16, 12), "small": (16, 32, 24)}
VERILATOR_SHAPES = {"tiny": (64, 64, 64), "small": (256, 256, 256)}
LONG_RUN_REPEATS = 3
"""The longer Verilator run is repeated on one model; the best and the median speed are reported
(the machines are shared, and a slower repeat measures the neighbours, not the model). Each run is
also timed in this process's CPU time, which a loaded machine inflates far less than wall time
(the model runs single-threaded in this process), and the load average is recorded."""


def timed_run(device, image, inputs):
    """Outputs, cycles, wall seconds and CPU seconds of one run."""
    start_cycles, start, start_cpu = device.cycles, time.perf_counter(), time.process_time()
    outputs, _ = run_image(device, image, inputs)
    return outputs, device.cycles - start_cycles, time.perf_counter() - start, time.process_time() - start_cpu


def program(config, shape, seed=0):
    rng = np.random.default_rng(seed)
    m, k, n = shape
    inputs = {"A": rng.integers(-128, 128, (m, k), dtype=np.int8), "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}
    image = gemm(config, m, k, n)
    expected, _ = run_image(FunctionalDevice(config), image, inputs)
    return image, inputs, expected


def measure(config):
    cfg = get_config(config)
    recorded = conditions(cfg, {"hbm_latency": cfg.hbm_latency, "hbm_jitter": 0, "hbm_accept_probability": 1.0,
                                "hbm_bytes_per_cycle": cfg.hbm_bytes_per_cycle})
    image, inputs, expected = program(config, SHAPES[config])
    start = time.perf_counter()
    amaranth = AmaranthDevice(config)
    amaranth_setup = time.perf_counter() - start
    verilator = VerilatorDevice(config)
    out_a, cycles_a, seconds_a, _ = timed_run(amaranth, image, inputs)
    out_v, cycles_v, seconds_v, _ = timed_run(verilator, image, inputs)
    amaranth.close()
    assert np.array_equal(out_a["C"], expected["C"]) and np.array_equal(out_v["C"], expected["C"])
    assert cycles_a == cycles_v, (cycles_a, cycles_v)
    big_image, big_inputs, big_expected = program(config, VERILATOR_SHAPES[config])
    speeds, cpu_speeds, loads = [], [], []
    for _ in range(LONG_RUN_REPEATS):
        out_big, cycles_big, seconds_big, cpu_big = timed_run(verilator, big_image, big_inputs)
        assert np.array_equal(out_big["C"], big_expected["C"])
        speeds.append(cycles_big / seconds_big)
        cpu_speeds.append(cycles_big / cpu_big)
        loads.append(os.getloadavg()[0])
    verilator.close()
    return {
        "config": config, "conditions": recorded, "verilog_bytes": len(to_verilog(PNPU(cfg), "pnpu")),
        "same_program": {"gemm": SHAPES[config], "cycles": cycles_a,
                         "amaranth_cycles_per_second": round(cycles_a / seconds_a),
                         "verilator_cycles_per_second": round(cycles_v / seconds_v),
                         "verilator_over_amaranth": round((cycles_v / seconds_v) / (cycles_a / seconds_a), 1),
                         "amaranth_setup_seconds": round(amaranth_setup, 2)},
        "verilator_long_run": {"gemm": VERILATOR_SHAPES[config], "cycles": cycles_big,
                               "repeats": LONG_RUN_REPEATS,
                               "cycles_per_second": round(max(speeds)),
                               "median_cycles_per_second": round(float(np.median(speeds))),
                               "median_cycles_per_cpu_second": round(float(np.median(cpu_speeds))),
                               "load_average_1min": [round(load, 2) for load in loads]},
    }


def main(argv=None):
    args = per_config_args(__doc__, argv)
    results = [measure(config) for config in args.configs]
    for r in results:
        same, long = r["same_program"], r["verilator_long_run"]
        print(f"{r['config']:6} same GEMM {same['gemm']}: {same['cycles']} cycles; amaranth "
              f"{same['amaranth_cycles_per_second']} c/s, verilator {same['verilator_cycles_per_second']} c/s "
              f"({same['verilator_over_amaranth']}x); verilator on {long['gemm']}: best {long['cycles_per_second']} c/s, "
              f"median {long['median_cycles_per_second']} c/s ({long['median_cycles_per_cpu_second']} per CPU second, "
              f"load {long['load_average_1min']})")
    write("sim_speed", {"targets": {"verilator_over_amaranth": 100,
                                    "small_verilator_median_cycles_per_second_floor": 250_000},
                        "results": results}, args.out)


if __name__ == "__main__":
    main()
