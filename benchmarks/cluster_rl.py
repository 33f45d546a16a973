"""The shipped RL policy against the baselines at the cluster benchmark's settings, over several seeds.

For each seed, :func:`benchmarks.cluster_policies.sweep` (the same runs as ``cluster_policies``) of
every policy at every load, and :func:`benchmarks.cluster_policies.sustained` per policy: the highest
throughput among the loads it serves with >= 99 % SLO attainment. Reported: each policy's median
over the seeds, RL's ratio to static and to the best baseline, and what bounds any policy here: the
cluster's throughput when every vNPU runs the best shape at the largest batch whose service time is
within the SLO, all engines busy, over static's capacity (the load unit), so the target ratios can
be judged against what the service-time table allows. Also the learning curve of the shipped
policy's training run (``--curve``), if given.

Usage: ``python -m benchmarks.cluster_rl [--seeds 0 1 2] [--loads ...] [--jobs 2]``.
"""

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor

from benchmarks.common import RESULTS, try_plot, write

POLICIES = ("static", "clipper", "triton", "nexus", "rl")


def capacity_bound(config="small", table=None):
    """Per model and overall: throughput per pNPU at the best (shape, batch) with service time
    within the SLO, over static's (reference shape, batch with 2 × latency within the SLO)."""
    from tcloud.cluster.policies import Static
    from tcloud.cluster.service import DEFAULT_BACKEND, ServiceTable, default_path
    from tcloud.cluster.simulate import best_batch, make_context

    table = ServiceTable.load(table or default_path(config, DEFAULT_BACKEND))
    context = make_context(table.models, table, 1000, 1.0)
    static = Static()
    plan = static.reset(context)
    ref = plan.replicas[0][0]
    models, need_static, need_best = {}, 0.0, 0.0
    for model, curves, slo, rate, b in zip(table.models, context.curves, context.slos, context.rates, static.batch):
        mine = context.per_pnpu[ref] * b / curves[ref][b]
        best = max((context.per_pnpu[s.label] * k / curves[s.label][k], s.label, k) for s in context.shapes
                   for k in range(1, context.max_batch + 1) if curves[s.label][k] <= slo)
        models[model.name] = {"static": {"shape": ref, "batch": b, "per_pnpu": mine},
                              "best": {"shape": best[1], "batch": best[2], "per_pnpu": best[0],
                                       "batch_within_half_slo": best_batch(curves[best[1]], slo)},
                              "ratio": best[0] / mine}
        need_static += rate / mine
        need_best += rate / best[0]
    return {"models": models, "ratio": need_static / need_best, "max_batch": context.max_batch}


def _one_seed(args):
    from benchmarks.cluster_policies import sweep, sustained

    policies, loads, nodes, pnpus, duration, trace, seed, warmup = args
    rows = sweep(policies, loads, nodes, pnpus, duration, trace, seed, warmup)
    return seed, rows, sustained(rows, policies)


def main(argv=None):
    from benchmarks.cluster_policies import LOADS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=250)
    parser.add_argument("--pnpus-per-node", type=int, default=4)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES))
    parser.add_argument("--loads", type=float, nargs="+", default=list(LOADS))
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--trace", default="poisson")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="seeds run in parallel processes")
    parser.add_argument("--curve", help="learning-curve JSON of the shipped policy's training run")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    from tcloud.cluster.service import load_table

    table = load_table(build=False)
    jobs = [(args.policies, args.loads, args.nodes, args.pnpus_per_node, args.duration, args.trace, s, args.warmup)
            for s in args.seeds]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        done = sorted(pool.map(_one_seed, jobs))
    per_seed = {seed: best for seed, _, best in done}
    median = {p: statistics.median(per_seed[s][p]["throughput"] for s in args.seeds) for p in args.policies}
    baselines = [p for p in args.policies if p not in ("rl", "static")]
    best_baseline = max(baselines, key=lambda p: median[p]) if baselines else None
    report = {"setup": {"nodes": args.nodes, "pnpus_per_node": args.pnpus_per_node, "trace": args.trace,
                        "duration": args.duration, "warmup": args.warmup, "loads": args.loads, "seeds": args.seeds,
                        "config": table.config, "backend": table.backend,
                        "models": [m.name for m in table.models]},
              "median_sustained_throughput": median,
              "sustained_per_seed": {str(s): v for s, v in per_seed.items()},
              "capacity_bound": capacity_bound(table.config)}
    if "rl" in median and "static" in median:
        report["rl_over_static"] = median["rl"] / median["static"] if median["static"] else None
    if "rl" in median and best_baseline:
        report["best_baseline"] = best_baseline
        report["rl_over_best_baseline"] = median["rl"] / median[best_baseline] if median[best_baseline] else None
    if args.curve:
        report["learning_curve"] = json.loads(open(args.curve).read())
    report["runs"] = {str(seed): rows for seed, rows, _ in done}
    write("cluster_rl", report, args.out)
    out = args.out.replace(".json", ".png") if args.out else RESULTS / "cluster_rl.png"
    try_plot(plot, done, args.policies, out)


def plot(done, policies, path):
    """Goodput and SLO attainment against load, median over the seeds, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for policy in policies:
        loads = sorted({r["load"] for _, rows, _ in done for r in rows if r["policy"] == policy})
        good = [statistics.median(r["goodput"] for _, rows, _ in done for r in rows
                                  if r["policy"] == policy and r["load"] == load) for load in loads]
        att = [statistics.median(r["slo_attainment"] for _, rows, _ in done for r in rows
                                 if r["policy"] == policy and r["load"] == load) for load in loads]
        top.plot(loads, [g / 1e6 for g in good], marker="o", label=policy)
        bottom.plot(loads, [100 * a for a in att], marker="o", label=policy)
    bottom.axhline(99, color="grey", linestyle=":")
    top.set_ylabel("goodput (M requests/s within SLO)")
    bottom.set_ylabel("SLO attainment (%)")
    bottom.set_xlabel("offered load (fraction of capacity)")
    top.legend()
    top.set_title(f"RL against the baselines (median of {len(done)} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
