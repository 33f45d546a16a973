"""The shipped RL policy against the baselines at the cluster benchmark's settings, over seeds.

A policy *sustains* a load on a seed when at least 99 % of the requests meet their SLO; its figure
for a trace is the median over seeds of the highest throughput it sustains (as in
``benchmarks/cluster_policies.py``). Runs go through :func:`tcloud.cluster.cli.run_simulation`, the
code ``tcloud cluster simulate`` and the benchmark use.

Every load runs (as in the benchmark). Baseline rows can also be taken from the benchmark's JSON
(``--baselines``, same settings) instead of re-running them.

Also reported: what bounds any policy here, the cluster's throughput when every vNPU runs the best
shape at the largest batch whose service time is within the SLO with all engines busy, over
static's capacity (the load unit), so the target ratios can be judged against what the service-time
table allows; and the learning curve of the shipped policy's training run (``--curve``).

``rl-floor`` is the RL decode rule with the all-zero action (no network): what the learned policy
gains over it is the network's contribution (``rl_over_floor``).

Usage: ``python -m benchmarks.cluster_rl [--policies rl rl-floor static ...] [--baselines JSON] [--jobs 2]``.
"""

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

from benchmarks.common import RESULTS, commit, try_plot, write

from benchmarks.cluster_policies import LOADS, SEEDS, STATIC, TRACES, make, trace_options  # the benchmark's settings


def capacity_bound(config="tpu_like", table=None):
    """Per model and overall: throughput per pNPU at the best (shape, batch) with service time
    within the SLO, over static's (reference shape, batch with 2 × latency within the SLO)."""
    from tcloud.cluster.policies import Static
    from tcloud.cluster.service import DEFAULT_BACKEND, ServiceTable, default_path
    from tcloud.cluster.simulate import make_context

    table = ServiceTable.load(table or default_path(config, DEFAULT_BACKEND))
    context = make_context(table.models, table, 1000, 1.0)
    static = Static()
    ref = static.reset(context).replicas[0][0]
    models, need_static, need_best = {}, 0.0, 0.0
    for model, curves, slo, rate, b in zip(table.models, context.curves, context.slos, context.rates, static.batch):
        mine = context.per_pnpu[ref] * b / curves[ref][b]
        best = max((context.per_pnpu[s.label] * k / curves[s.label][k], s.label, k) for s in context.shapes
                   for k in range(1, context.max_batch + 1) if curves[s.label][k] <= slo)
        models[model.name] = {"static": {"shape": ref, "batch": int(b), "per_pnpu": float(mine)},
                              "best": {"shape": best[1], "batch": int(best[2]), "per_pnpu": float(best[0])},
                              "ratio": float(best[0] / mine)}
        need_static += rate / mine
        need_best += rate / best[0]
    return {"models": models, "ratio": float(need_static / need_best), "max_batch": int(context.max_batch)}


def _runs(job):
    """Run every load of one (policy, trace, seed)."""
    from tcloud.cluster.cli import run_simulation
    from tcloud.cluster.service import DEFAULT_BACKEND, ServiceTable, default_path

    policy, trace, seed, loads, args = job
    table = ServiceTable.load(args["table"] or default_path(args["config"], DEFAULT_BACKEND))
    rows = []
    for load in loads:
        started = time.perf_counter()
        kind, options = trace_options(trace, args["warmup"] + args["duration"])
        made = make(policy, trace, seed, SimpleNamespace(**args), table)
        results, sim, _ = run_simulation(args["nodes"], args["pnpus_per_node"], made, kind, load, args["duration"],
                                         seed, table=table, models=table.models, warmup=args["warmup"],
                                         trace_options=options)
        o = results["overall"]
        rows.append({"policy": policy, "trace": trace, "load": load, "seed": seed,
                     **{k: o[k] for k in ("offered", "throughput", "goodput", "slo_attainment", "p99", "utilization",
                                          "cost_per_1000", "dropped")},
                     "wall_seconds": time.perf_counter() - started,
                     "models": {k: {f: v[f] for f in ("throughput", "slo_attainment", "p99", "slo")}
                                for k, v in results["models"].items()},
                     "mean_replicas": [sum(e["replicas"][m] for e in sim.timeline) / len(sim.timeline)
                                       for m in range(len(table.models))],
                     "mean_batch": [sum(e["batch"][m] for e in sim.timeline) / len(sim.timeline)
                                    for m in range(len(table.models))]})
        print(f"{policy:<8} {trace:<8} load {load:4.2f} seed {seed}: {o['throughput']:>10,.0f} req/s, attainment "
              f"{o['slo_attainment']:.2%} ({rows[-1]['wall_seconds']:.0f} s wall)", flush=True)
    return rows


def sustained(rows, policy, trace, seeds):
    """Median over ``seeds`` of the highest throughput sustained (0 when none), and per seed."""
    per_seed = []
    for seed in seeds:
        ok = [r["throughput"] for r in rows if (r["policy"], r["trace"], r["seed"]) == (policy, trace, seed)
              and r["slo_attainment"] >= 0.99]
        per_seed.append(max(ok, default=0.0))
    return {"throughput": statistics.median(per_seed), "per_seed": per_seed}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tpu_like")
    parser.add_argument("--table", help="service-time table (default: the shipped one of --config)")
    parser.add_argument("--nodes", type=int, default=250)
    parser.add_argument("--pnpus-per-node", type=int, default=4)
    parser.add_argument("--policies", nargs="+", default=["rl", "rl-floor"])
    parser.add_argument("--traces", nargs="+", default=list(TRACES))
    parser.add_argument("--loads", type=float, nargs="+", help="default: the benchmark's loads of each trace")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel processes")
    parser.add_argument("--baselines", help="the benchmark's JSON whose rows (same settings) stand for the "
                                            "policies not run here")
    parser.add_argument("--curve", help="learning-curve JSON of the shipped policy's training run")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    settings = {"config": args.config, "table": args.table, "nodes": args.nodes,
                "pnpus_per_node": args.pnpus_per_node, "duration": args.duration, "warmup": args.warmup}
    bound = capacity_bound(args.config, args.table)
    jobs = [(p, t, s, args.loads or LOADS.get(t, LOADS["poisson"]), settings)
            for p in args.policies for t in args.traces for s in args.seeds]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = [r for part in pool.map(_runs, jobs) for r in part]
    policies = list(args.policies)
    if args.baselines:
        theirs = json.loads(Path(args.baselines).read_text())
        for row in theirs.get("runs", []):
            if row.get("policy") not in args.policies and "trace" in row and "seed" in row:
                rows.append({**row, "from": args.baselines})
        policies += sorted({r["policy"] for r in rows} - set(policies))
    figures = {p: {t: sustained(rows, p, t, args.seeds) for t in args.traces} for p in policies}
    loads = {t: args.loads or LOADS.get(t, LOADS["poisson"]) for t in args.traces}
    report = {"setup": {**settings, **commit(), "traces": args.traces, "loads": loads,
                        "seeds": args.seeds, "baselines_from": args.baselines},
              "sustained": figures, "capacity_bound": bound}
    if "rl" in figures:
        ratios = {}
        for trace in args.traces:
            rl = figures["rl"][trace]["throughput"]
            statics = [figures[p][trace]["throughput"] for p in STATIC if p in figures]
            static = max(statics) if statics else None  # the better static, as cluster_policies judges it
            floor = figures.get("rl-floor", {}).get(trace, {}).get("throughput")
            others = {p: figures[p][trace]["throughput"] for p in figures if p not in ("rl", "rl-floor", *STATIC)}
            best = max(others, key=others.get) if others else None
            ratios[trace] = {"rl_over_static": rl / static if static else None, "best_baseline": best,
                             "rl_over_best_baseline": rl / others[best] if best and others[best] else None,
                             "rl_over_floor": rl / floor if floor else None}
        report["ratios"] = ratios
    if args.curve:
        report["learning_curve"] = json.loads(Path(args.curve).read_text())
    report["runs"] = rows
    write("cluster_rl", report, args.out)
    print(json.dumps({"sustained": {p: {t: v["throughput"] for t, v in f.items()} for p, f in figures.items()},
                      "ratios": report.get("ratios"), "bound": report["capacity_bound"]["ratio"]}, indent=1))
    out = Path(args.out).with_suffix(".png") if args.out else RESULTS / "cluster_rl.png"
    try_plot(plot, rows, policies, args.traces, out)


def plot(rows, policies, traces, path):
    """Attainment against load per policy (median over seeds of the loads run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(traces), figsize=(6 * len(traces), 4), squeeze=False)
    for ax, trace in zip(axes[0], traces):
        for policy in policies:
            mine = [r for r in rows if (r["policy"], r["trace"]) == (policy, trace)]
            loads = sorted({r["load"] for r in mine})
            att = [statistics.median(r["slo_attainment"] for r in mine if r["load"] == load) for load in loads]
            ax.plot(loads, [100 * a for a in att], marker="o", label=policy)
        ax.axhline(99, color="grey", linestyle=":")
        ax.set_title(f"{trace}: SLO attainment (median of seeds)")
        ax.set_xlabel("offered load (fraction of capacity)")
        ax.set_ylabel("SLO attainment (%)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
