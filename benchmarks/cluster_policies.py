"""Cluster serving policies side by side: the highest throughput each sustains at >= 99 % SLO attainment.

For each policy and offered load (a fraction of the cluster's capacity, see
:func:`tcloud.cluster.simulate.make_context`), ``tcloud cluster simulate`` on ``--nodes`` ×
``--pnpus-per-node`` pNPUs serving the six default zoo models; a policy *sustains* a load when at
least 99 % of the requests meet their SLO. Also measured: the simulator's speed (simulated seconds,
batches and requests per wall second, from the same runs) and its agreement with the per-request
SimPy simulation at small scale.

Service times come from the shipped table (``small`` configuration, Verilator) until the ``perf``
backend can time ``tpu_like``: the JSON says which.
"""

import argparse
import time

from benchmarks.common import machine, try_plot, write  # noqa: F401  (machine is part of write's report)

POLICIES = ("static", "clipper", "triton", "nexus")
LOADS = (0.5, 0.7, 0.85, 1.0)


def sweep(policies, loads, nodes, pnpus, duration, trace, seed, warmup):
    from tcloud.cluster.cli import run_simulation

    rows = []
    for policy in policies:
        for load in loads:
            started = time.perf_counter()
            results, _, wall = run_simulation(nodes, pnpus, policy, trace, load, duration, seed, warmup=warmup)
            o = results["overall"]
            rows.append({"policy": policy, "load": load, "offered": o["offered"], "throughput": o["throughput"],
                         "goodput": o["goodput"], "slo_attainment": o["slo_attainment"], "p50": o["p50"],
                         "p99": o["p99"], "utilization": o["utilization"], "cost_per_1000": o["cost_per_1000"],
                         "batches": o["batches"], "wall_seconds": wall,
                         "models": {k: {f: v[f] for f in ("throughput", "goodput", "slo_attainment", "p99")}
                                    for k, v in results["models"].items()}})
            print(f"{policy:<8} load {load:4.2f}: {o['throughput']:>12,.0f} req/s, attainment {o['slo_attainment']:.2%}, "
                  f"p99 {o['p99'] * 1e3:.3f} ms, {o['batches'] / duration:,.0f} batches/s simulated in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    return rows


def sustained(rows, policies):
    """Per policy: the highest throughput among the loads it serves with >= 99 % attainment."""
    out = {}
    for policy in policies:
        ok = [r for r in rows if r["policy"] == policy and r["slo_attainment"] >= 0.99]
        best = max(ok, key=lambda r: r["throughput"], default=None)
        out[policy] = {"throughput": best["throughput"] if best else 0.0, "load": best["load"] if best else None}
    return out


def validation(duration=2.0):
    """The batch simulator against the per-request one (4 pNPUs, two model mixes)."""
    from tcloud.cluster.placement import Cluster
    from tcloud.cluster.policies import make_policy
    from tcloud.cluster.reference import compare
    from tcloud.cluster.service import load_table
    from tcloud.cluster.simulate import Simulator, make_context
    from tcloud.cluster.workload import DEFAULT_MODELS, Arrivals, make_trace, model_by_name

    table = load_table(build=False)
    out = []
    for names, policy, trace, load in ((("ncf", "resnet50_block"), "static", "poisson", 0.9),
                                       (("dlrm_mlp", "mobilenetv2_block", "resnet50_block"), "triton", "mmpp", 0.6)):
        models = [model_by_name(DEFAULT_MODELS, n) for n in names]
        context = make_context(models, table, 4, load)
        shape = make_trace(trace, models, duration, 2)
        sim = Simulator(context, Cluster(1, 4), make_policy(policy), Arrivals(shape, context.rates, 2))
        for row in compare(sim, duration, Arrivals(shape, context.rates, 2).until(duration)):
            out.append({"policy": policy, "trace": trace, "load": load, **row})
    return out


def plot(rows, policies, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for policy in policies:
        mine = [r for r in rows if r["policy"] == policy]
        loads = [r["load"] for r in mine]
        top.plot(loads, [r["goodput"] / 1e6 for r in mine], marker="o", label=policy)
        bottom.plot(loads, [100 * r["slo_attainment"] for r in mine], marker="o", label=policy)
    bottom.axhline(99, color="grey", linestyle=":")
    top.set_ylabel("goodput (M requests/s within SLO)")
    bottom.set_ylabel("SLO attainment (%)")
    bottom.set_xlabel("offered load (fraction of capacity)")
    top.legend()
    top.set_title("cluster policies")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=250)
    parser.add_argument("--pnpus-per-node", type=int, default=4)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES))
    parser.add_argument("--loads", type=float, nargs="+", default=list(LOADS))
    parser.add_argument("--duration", type=float, default=2.0, help="measured simulated seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="simulated seconds before the measured ones")
    parser.add_argument("--trace", default="poisson")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    from tcloud.cluster.service import load_table

    table = load_table(build=False)
    rows = sweep(args.policies, args.loads, args.nodes, args.pnpus_per_node, args.duration, args.trace, args.seed,
                 args.warmup)
    best = sustained(rows, args.policies)
    static = best.get("static", {}).get("throughput") or float("nan")
    simulated = args.duration + args.warmup
    speed = {"simulated_seconds_per_wall_second": sum(simulated for _ in rows) / sum(r["wall_seconds"] for r in rows),
             "batches_per_wall_second": sum(r["batches"] * simulated / args.duration for r in rows)
             / sum(r["wall_seconds"] for r in rows),
             "requests_per_wall_second": sum(r["throughput"] * simulated for r in rows)
             / sum(r["wall_seconds"] for r in rows)}
    saturated = [r for r in rows if r["load"] == max(args.loads)]
    speed["ten_minutes_saturated_wall_seconds_estimate"] = 600 * sum(r["wall_seconds"] for r in saturated) / (
        simulated * len(saturated))
    speed["batches_per_simulated_second_saturated"] = sum(r["batches"] for r in saturated) / (args.duration * len(saturated))
    report = {"setup": {"nodes": args.nodes, "pnpus_per_node": args.pnpus_per_node, "trace": args.trace,
                        "duration": args.duration, "warmup": args.warmup, "seed": args.seed, "config": table.config,
                        "backend": table.backend, "models": [m.name for m in table.models]},
              "sustained": best,
              "relative_to_static": {p: v["throughput"] / static for p, v in best.items()},
              "speed": speed, "validation": validation(), "runs": rows}
    write("cluster_policies", report, args.out)
    out = args.out.replace(".json", ".png") if args.out else None
    from benchmarks.common import RESULTS

    try_plot(plot, rows, args.policies, out or RESULTS / "cluster_policies.png")


if __name__ == "__main__":
    main()
