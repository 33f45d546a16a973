"""Choose the RL snapshot to ship by a held-out evaluation against its rule (model selection by validation).

Every candidate (the snapshots of a ``tcloud cluster train`` run, and ``rl-floor``, the decode rule
with the all-zero action) runs the policy benchmark's protocol (``benchmarks/cluster_policies.py``:
250 × 4 ``tpu_like`` pNPUs, 5 s warm-up, 20 s measured, 1-s decisions, the same four traces) on
seeds that the benchmark does not use (3, 4, 5 by default; it uses 0-2), at the loads around where
the rule stops meeting 99 % (:data:`LOADS`). For each trace and seed a candidate *sustains* the
highest load with at least 99 % of its requests within SLO. Candidates are ranked by, in order:

1. the (trace, seed) cells where it sustains less than the rule: fewer is better (the goal is a
   network at least as good as its rule everywhere);
2. the sum of its sustained loads over the cells: more is better;
3. its mean SLO attainment over every run: more is better.

The first in that order is the one to ship (``chosen``); the rule itself is a candidate, so a
network that loses anywhere is not chosen over it unless every snapshot loses somewhere.

Usage: ``python -m benchmarks.cluster_rl_select --snapshots build/cluster-rl3/snapshots [--points 6]``.
"""

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.common import commit, write

from benchmarks.cluster_policies import trace_options  # the benchmark's traces

LOADS = {"poisson": (0.95, 1.0, 1.05), "mmpp": (0.3, 0.4, 0.5), "diurnal": (0.6, 0.65, 0.7, 0.75),
         "azure": (0.2, 0.25, 0.3, 0.35, 0.4)}
"""Loads per trace: the benchmark's, from one step below where the rule stopped meeting 99 % on its
seeds (Poisson 1.0, MMPP 0.3-0.4, diurnal 0.65, Azure 0.2) up to what the clairvoyant bound allows."""
SEEDS = (3, 4, 5)
FLOOR = "rl-floor"


def _runs(job):
    """Every load of one (candidate, trace, seed): rows of load, throughput and attainment."""
    from tcloud.cluster.cli import run_simulation
    from tcloud.cluster.policies import make_policy
    from tcloud.cluster.rl import ShippedPolicy
    from tcloud.cluster.service import load_table

    name, path, trace, seed, settings = job
    table = load_table(config=settings["config"], build=False)
    rows = []
    for load in LOADS[trace]:
        policy = make_policy(FLOOR) if path is None else ShippedPolicy(path)
        kind, options = trace_options(trace, settings["warmup"] + settings["duration"])
        results, _, wall = run_simulation(settings["nodes"], settings["pnpus_per_node"], policy, kind, load,
                                          settings["duration"], seed, table=table, warmup=settings["warmup"],
                                          trace_options=options)
        o = results["overall"]
        rows.append({"candidate": name, "trace": trace, "seed": seed, "load": load, "throughput": o["throughput"],
                     "slo_attainment": o["slo_attainment"], "wall_seconds": wall})
        print(f"{name:<22} {trace:<8} load {load:4.2f} seed {seed}: attainment {o['slo_attainment']:.2%}",
              flush=True)
    return rows


def sustained_loads(rows, name, traces, seeds):
    """``{trace: [highest load with >= 99 % attainment per seed, 0 when none]}`` of candidate ``name``."""
    return {t: [max((r["load"] for r in rows if (r["candidate"], r["trace"], r["seed"]) == (name, t, s)
                     and r["slo_attainment"] >= 0.99), default=0.0) for s in seeds] for t in traces}


def rank(rows, names, traces, seeds):
    """Per candidate: its sustained loads, the cells where it sustains less than the rule, the sum of
    its sustained loads and its mean attainment; and the names best first (module docstring)."""
    floor = sustained_loads(rows, FLOOR, traces, seeds)
    scores = {}
    for name in names:
        mine = sustained_loads(rows, name, traces, seeds)
        scores[name] = {"sustained": mine,
                        "worse_than_rule": sum(a < b - 1e-9 for t in traces for a, b in zip(mine[t], floor[t])),
                        "better_than_rule": sum(a > b + 1e-9 for t in traces for a, b in zip(mine[t], floor[t])),
                        "total_load": round(sum(sum(v) for v in mine.values()), 6),
                        "mean_attainment": statistics.fmean(r["slo_attainment"] for r in rows
                                                            if r["candidate"] == name)}
    order = sorted(names, key=lambda n: (scores[n]["worse_than_rule"], -scores[n]["total_load"],
                                         -scores[n]["mean_attainment"]))
    return scores, order


def spaced(found, points):
    """At most ``points`` of the snapshots ``found`` (sorted by step), evenly spaced, the last
    always included.

    Parameters
    ----------
    found : list
        The snapshots, first to last.
    points : int
        At least 1 (1: the last alone).

    Returns
    -------
    list
        The chosen snapshots, in order.
    """
    if points == 1:
        return found[-1:]
    if len(found) <= points:
        return list(found)
    keep = {round(i * (len(found) - 1) / (points - 1)) for i in range(points)}
    return [f for i, f in enumerate(found) if i in keep]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", required=True, help="directory of rl_policy_<steps>.npz snapshots")
    parser.add_argument("--points", type=int, default=6, help="snapshots evaluated, evenly spaced, the last included (at least 1: the last alone)")
    parser.add_argument("--config", default="tpu_like")
    parser.add_argument("--nodes", type=int, default=250)
    parser.add_argument("--pnpus-per-node", type=int, default=4)
    parser.add_argument("--traces", nargs="+", default=list(LOADS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel processes")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.points < 1:
        parser.error(f"--points must be at least 1 (1: the last snapshot alone), got {args.points}")
    from tcloud.cluster.rl_train import stamp_format

    snapshots = Path(args.snapshots).resolve()
    if snapshots.name == "snapshots":  # a run's own snapshots, made before weight files recorded their format
        stamp_format(snapshots.parent)
    found = sorted((int(p.stem.rsplit("_", 1)[-1]), p) for p in Path(args.snapshots).glob("rl_policy_*.npz"))
    if not found:
        raise SystemExit(f"{args.snapshots}: no rl_policy_<steps>.npz snapshots")
    found = spaced(found, args.points)
    candidates = [(FLOOR, None)] + [(f"rl@{steps}", str(path)) for steps, path in found]
    settings = {"config": args.config, "nodes": args.nodes, "pnpus_per_node": args.pnpus_per_node,
                "duration": args.duration, "warmup": args.warmup}
    jobs = [(name, path, t, s, settings) for name, path in candidates for t in args.traces for s in args.seeds]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = [r for part in pool.map(_runs, jobs) for r in part]
    names = [name for name, _ in candidates]
    scores, order = rank(rows, names, args.traces, args.seeds)
    chosen = order[0]
    report = {"setup": {**settings, **commit(), "traces": args.traces, "loads": {t: LOADS[t] for t in args.traces},
                        "seeds": args.seeds, "snapshots": {n: p for n, p in candidates}},
              "scores": scores, "order": order, "chosen": chosen, "chosen_path": dict(candidates)[chosen],
              "wall_seconds": time.perf_counter() - started, "runs": rows}
    write("cluster_rl_selection", report, args.out)
    for name in order:
        s = scores[name]
        print(f"{name:<22} worse than the rule on {s['worse_than_rule']} cells, better on {s['better_than_rule']}, "
              f"total load {s['total_load']:.2f}, mean attainment {s['mean_attainment']:.4f}  {s['sustained']}")
    print(f"chosen: {chosen} ({dict(candidates)[chosen]})")


if __name__ == "__main__":
    main()
