"""Cluster simulator speed: wall time of ten simulated minutes of traffic that saturates 1000 pNPUs.

Counts first (the issue's rule): the batches a saturated cluster completes per simulated second
with the full-size ``tpu_like`` models (:data:`tcloud.cluster.workload.TPU_MODELS`); then times
``--duration`` simulated seconds (default 600) of the static policy at ``--load`` (default 1.0, the
cluster's capacity, where every replica is busy) ``--runs`` times (different seeds) and reports the
median wall time against the 2-minute target. Single process; the machine and the load on it are
recorded.
"""

import argparse
import os
import statistics
import time

from benchmarks.common import commit, write

TARGET_WALL_SECONDS = 120.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tpu_like")
    parser.add_argument("--nodes", type=int, default=250)
    parser.add_argument("--pnpus-per-node", type=int, default=4)
    parser.add_argument("--policy", default="static")
    parser.add_argument("--trace", default="poisson")
    parser.add_argument("--load", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=600.0, help="simulated seconds per run (default 600)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    from tcloud.cluster.cli import run_simulation
    from tcloud.cluster.service import load_table

    table = load_table(config=args.config, build=False)
    runs = []
    for seed in range(args.runs):
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        results, _, wall = run_simulation(args.nodes, args.pnpus_per_node, args.policy, args.trace, args.load,
                                          args.duration, seed, config=args.config, table=table)
        o = results["overall"]
        runs.append({"seed": seed, "wall_seconds": wall, "setup_seconds": time.perf_counter() - started - wall,
                     "batches": o["batches"], "batches_per_simulated_second": o["batches"] / args.duration,
                     "requests_per_simulated_second": o["throughput"], "utilization": o["utilization"],
                     "slo_attainment": o["slo_attainment"], "load_average_before": load_before})
        print(f"seed {seed}: {args.duration:.0f} simulated s in {wall:.1f} s wall; "
              f"{o['batches'] / args.duration:,.0f} batches and {o['throughput']:,.0f} requests per simulated "
              f"second; utilization {o['utilization']:.1%}", flush=True)
    wall = statistics.median(r["wall_seconds"] for r in runs)
    report = {"setup": {"config": args.config, "backend": table.backend, "nodes": args.nodes,
                        "pnpus_per_node": args.pnpus_per_node, "policy": args.policy, "trace": args.trace,
                        "load": args.load, "duration": args.duration, "models": [m.name for m in table.models],
                        **commit()},
              "median_wall_seconds": wall, "target_wall_seconds": TARGET_WALL_SECONDS * args.duration / 600.0,
              "meets_target": wall <= TARGET_WALL_SECONDS * args.duration / 600.0,
              "median_batches_per_simulated_second": statistics.median(r["batches_per_simulated_second"]
                                                                       for r in runs),
              "median_requests_per_simulated_second": statistics.median(r["requests_per_simulated_second"]
                                                                        for r in runs),
              "runs": runs}
    write("cluster_speed", report, args.out)


if __name__ == "__main__":
    main()
