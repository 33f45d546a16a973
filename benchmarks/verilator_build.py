"""Time to build the Verilator model from a cold cache and from a warm one.

Writes ``benchmarks/results/verilator_build.json``. ``python -m benchmarks.verilator_build
[--configs tiny small]``.
"""

import os
import tempfile
import time

from tcloud.runtime.backends import verilator as verilator_device

from .common import per_config_args, write


def measure(config):
    with tempfile.TemporaryDirectory(prefix="tcloud-cold-") as cache:
        os.environ["TCLOUD_CACHE"] = cache
        verilator_device._BUILT.clear()
        start = time.perf_counter()
        _, built = verilator_device.build_model(config)
        cold = time.perf_counter() - start
        assert built
        verilator_device._BUILT.clear()
        start = time.perf_counter()
        _, built = verilator_device.build_model(config)
        warm = time.perf_counter() - start
        assert not built
    os.environ.pop("TCLOUD_CACHE", None)
    return {"config": config, "cold_seconds": round(cold, 1), "warm_seconds": round(warm, 2)}


def main(argv=None):
    args = per_config_args(__doc__, argv)
    results = [measure(config) for config in args.configs]
    for r in results:
        print(f"{r['config']:6} cold {r['cold_seconds']} s, warm {r['warm_seconds']} s")
    write("verilator_build", {"results": results}, args.out)


if __name__ == "__main__":
    main()
