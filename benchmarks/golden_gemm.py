"""Golden-model speed: wall time of int8 GEMMs run through firmware + golden model.

Writes ``benchmarks/results/golden_gemm.json``. Run with ``make bench`` or
``python -m benchmarks.golden_gemm [--out FILE]``.
"""

import argparse
import time

import numpy as np

from tcloud.firmware import gemm
from tcloud.isa import decode_stream
from tcloud.runtime import FunctionalDevice, run_image

from .common import write

CASES = [("small", 256, 256, 256), ("small", 512, 512, 512), ("tiny", 64, 64, 64),
         ("tpu_like", 1024, 1024, 1024)]


def measure(config, m, k, n, repeats=3):
    rng = np.random.default_rng(0)
    inputs = {"A": rng.integers(-128, 128, (m, k), dtype=np.int8),
              "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}
    start = time.perf_counter()
    image = gemm(config, m, k, n)
    lower = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs, info = run_image(FunctionalDevice(config), image, inputs)
        runs.append(time.perf_counter() - start)
    start = time.perf_counter()
    expected = inputs["A"].astype(np.int32) @ inputs["B"].astype(np.int32)
    numpy_seconds = time.perf_counter() - start
    assert np.array_equal(outputs["C"], expected)
    best = min(runs)
    return {"config": config, "m": m, "k": k, "n": n, "lower_seconds": round(lower, 4),
            "run_seconds_best": round(best, 4), "run_seconds_all": [round(r, 4) for r in runs],
            "numpy_int32_matmul_seconds": round(numpy_seconds, 4),
            "slowdown_vs_numpy": round(best / max(numpy_seconds, 1e-9), 2),
            "instructions": len(decode_stream(image.code)), "utops": info.counters["utops"],
            "gmacs_per_second": round(m * k * n / best / 1e9, 3)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/golden_gemm.json)")
    args = parser.parse_args(argv)
    results = [measure(*case) for case in CASES]
    write("golden_gemm", {"results": results}, args.out)
    for r in results:
        print(f"{r['config']:9} {r['m']}x{r['k']}x{r['n']}: {r['run_seconds_best']:.3f} s "
              f"({r['instructions']} instructions, {r['gmacs_per_second']} GMAC/s, "
              f"{r['slowdown_vs_numpy']}x NumPy)")


if __name__ == "__main__":
    main()
