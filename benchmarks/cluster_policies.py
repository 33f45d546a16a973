"""Cluster serving policies side by side: the highest throughput each sustains at >= 99 % SLO attainment.

For each policy, trace, offered load (a fraction of the cluster's capacity, see
:func:`tcloud.cluster.simulate.make_context`) and seed, ``tcloud cluster simulate`` on ``--nodes`` ×
``--pnpus-per-node`` pNPUs of ``--config`` serving that configuration's default models
(:func:`tcloud.cluster.workload.default_models`: the six full-size zoo models on ``tpu_like``). A
policy *sustains* a load on a seed when at least 99 % of the requests meet their SLO; its figure
for a trace is the median over seeds of the highest throughput it sustains. Also measured: the
simulator's agreement with the per-request SimPy simulation at small scale.

Traces (:func:`trace_options`): Poisson; MMPP (bursts of 4 × the base rate, 2 s in 10 s on
average); diurnal (``1 + 0.5 sin(2π t / period)``, each model phase-shifted by a sixth of a
period, one day compressed into the warm-up plus the measured window, 25 s by default); and
``azure``, the shipped Azure Functions sample (:data:`~tcloud.cluster.workload.AZURE_SAMPLE`, the
six busiest functions, each trace minute lasting :data:`AZURE_SECONDS_PER_MINUTE` simulated
seconds, from its first minute).

``static-peak`` is static provisioned for each model's peak instead of its mean rate: replicas in
proportion to the mean rate × the trace's peak-to-mean ratio of that model over 1-s windows of
the run (known in advance, as an operator knows a function's history). The better of ``static``
and ``static-peak`` is the static reference of ``relative``; ``clipper-peak`` and ``triton-peak``
are provisioned the same way and count among the baselines. ``rl-peak`` and ``rl-floor-peak`` are
the RL policy and its rule given the same ratios: the engines beyond the floors are shared by the
peak rates instead of the mean ones (the network was trained with mean rates and still reads them). ``allocation_bound`` records, from
the traces alone, what a clairvoyant reallocation could sustain over the better static split.

``--policies rl --merge`` re-runs only the RL policy and keeps the other rows of the existing JSON
(same setup; per policy and trace), so a retrained policy is benchmarked in minutes.

A replica added during a run serves once its image has crossed the pNPU's host link at
``--load-bandwidth`` GB/s (default :data:`~tcloud.cluster.simulate.DEFAULT_LOAD_BANDWIDTH`; ``inf``:
reallocation is free and instant). ``cluster_rules`` in the setup says what the simulator charged
(:data:`~tcloud.cluster.simulate.CLUSTER_RULES`); ``--merge`` refuses a file made under other rules.
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, commit, try_plot, write
from tcloud.cluster.simulate import CLUSTER_RULES, DEFAULT_LOAD_BANDWIDTH

POLICIES = ("static", "static-peak", "clipper", "clipper-peak", "triton", "triton-peak", "nexus", "rl", "rl-floor",
            "rl-peak", "rl-floor-peak")
"""``rl-floor``: the RL policy's decode rule with the all-zero action, so the network's contribution shows."""
STATIC = ("static", "static-peak")
PEAK = ("static-peak", "clipper-peak", "triton-peak", "rl-peak", "rl-floor-peak")
"""Static, Clipper, Triton and the RL policy with each model's replicas provisioned for its peak
(:func:`make`; the RL policy shares the engines beyond its floors by the peak rates)."""
BASELINES = ("clipper", "clipper-peak", "triton", "triton-peak", "nexus")
TRACES = ("poisson", "mmpp", "diurnal", "azure")
LOADS = {"poisson": (0.8, 0.9, 0.95, 1.0, 1.05), "mmpp": (0.3, 0.4, 0.5, 0.6, 0.7),
         "diurnal": (0.55, 0.6, 0.65, 0.7, 0.75, 0.8), "azure": (0.2, 0.25, 0.3, 0.35, 0.4, 0.45)}
"""Offered loads per trace (fractions of capacity), around where the policies stop meeting 99 %:
MMPP's bursts of 2.5 × the mean rate for 2 s in 10 s overload a cluster provisioned for the mean;
diurnal peaks at 1.5 × each model's mean; the Azure sample's models peak at 1.9–4.3 × theirs."""
AZURE_SECONDS_PER_MINUTE = 2.0
"""Simulated seconds per minute of the Azure trace (two control intervals: a policy deciding
once per second can react within a minute; at one second per minute no policy could)."""
SEEDS = (0, 1, 2)
ROW_FIELDS = ("offered", "throughput", "goodput", "slo_attainment", "p50", "p99", "utilization", "cost_per_1000",
              "dropped", "batches")


def trace_options(trace, total):
    """``(kind, make_trace options)`` of a benchmark trace name for ``total`` simulated seconds."""
    from tcloud.cluster.workload import AZURE_SAMPLE

    if trace == "diurnal":
        return trace, {"amplitude": 0.5, "period": total}
    if trace == "azure":
        return str(AZURE_SAMPLE), {"seconds_per_minute": AZURE_SECONDS_PER_MINUTE}
    return trace, {}


def peak_to_mean(trace, models, total, seed, window=1.0):
    """Per model: the benchmark trace's :meth:`~tcloud.cluster.workload.Trace.peak_to_mean`."""
    from tcloud.cluster.workload import make_trace

    kind, options = trace_options(trace, total)
    return make_trace(kind, models, total, seed, **options).peak_to_mean(window)


def allocation_bound(trace, table, warmup, duration, seed, window=1.0):
    """What reallocation can win on a trace at most, from the trace alone (no queueing, no
    Poisson noise, free and instant reallocation): in units of capacity (load 1.0), the highest
    load at which

    * ``oracle``: a clairvoyant policy that re-splits the engines every ``window`` seconds keeps
      every model's mean demand over the window within its replicas: ``1 / max_t Σ_m w_m x_m(t)``,
      ``w_m`` the model's share of the engines at its mean rate (static's shape and batch),
      ``x_m(t)`` its rate multiplier averaged over the window;
    * ``static``: the split by mean rates does: ``1 / max_m max_t x_m(t)``;
    * ``static_peak``: the split by peak rates does: ``1 / Σ_m w_m max_t x_m(t)``;

    over the measured window (after ``warmup``). ``gain`` is ``oracle`` over the better static."""
    from tcloud.cluster.policies import Static
    from tcloud.cluster.simulate import make_context
    from tcloud.cluster.workload import RATE_STEP, make_trace

    context = make_context(table.models, table, 4, 1.0)
    plan = Static().reset(context)
    per_replica = np.array([b / c[plan.replicas[m][0]][b] for m, (b, c) in
                            enumerate(zip((plan.batch[m] for m in range(len(context.models))), context.curves))])
    shares = context.rates / per_replica
    shares /= shares.sum()
    kind, options = trace_options(trace, warmup + duration)
    rows = make_trace(kind, table.models, warmup + duration, seed, **options).multipliers
    k = max(1, round(window / RATE_STEP))
    start = round(warmup / RATE_STEP)
    measured = rows[:, start:start + (rows.shape[1] - start) // k * k]
    x = measured.reshape(rows.shape[0], -1, k).mean(axis=2)
    oracle = 1 / float((shares[:, None] * x).sum(axis=0).max())
    static = 1 / float(x.max())
    peak = 1 / float(shares @ x.max(axis=1))
    return {"oracle": oracle, "static": static, "static_peak": peak, "gain": oracle / max(static, peak),
            "engine_shares": shares.round(4).tolist()}


def make(policy, trace, seed, args, table):
    """The policy object: ``static-peak``, ``clipper-peak`` and ``triton-peak`` are those policies
    with replicas split by the run's peak-to-mean ratios (:func:`peak_to_mean`); the others by name."""
    from tcloud.cluster.policies import make_policy

    if policy in PEAK:
        made = make_policy(policy.removesuffix("-peak"))
        made.provision = peak_to_mean(trace, table.models, args.warmup + args.duration, seed)
        made.name = policy
        return made
    return make_policy(policy)


def mixed_pnpus(sim):
    """Fraction of the pNPUs in use at the end of a run that hold replicas of two or more models (the
    service-time table charges same-model neighbours only, see ``cluster_colocation``)."""
    models_on = {}
    for m, group in enumerate(sim.groups):
        for replica in group.replicas:
            models_on.setdefault(replica.pnpu, set()).add(m)
    return sum(len(models) > 1 for models in models_on.values()) / max(len(models_on), 1)


def unnull(row):
    """A run read back from the JSON: latencies written as null (infinitely late) are infinite again."""
    for values in (row, *row["models"].values()):
        for field in ("p50", "p99"):
            if field in values and values[field] is None:
                values[field] = float("inf")
    return row


def run(policy, trace, load, seed, args, table):
    from tcloud.cluster.cli import run_simulation

    kind, options = trace_options(trace, args.warmup + args.duration)
    results, sim, wall = run_simulation(args.nodes, args.pnpus_per_node, make(policy, trace, seed, args, table), kind,
                                      load, args.duration, seed, config=args.config, table=table,
                                      warmup=args.warmup, trace_options=options, load_bandwidth=args.load_bandwidth)
    o = results["overall"]
    row = {"policy": policy, "trace": trace, "load": load, "seed": seed, **{f: o[f] for f in ROW_FIELDS},
           "replicas_added": o["replicas_added"], "replica_seconds_loading": o["replica_seconds_loading"],
           "mixed_pnpus": mixed_pnpus(sim), "wall_seconds": wall, "load_average": os.getloadavg()[0],
           "models": {k: {f: v[f] for f in ("throughput", "goodput", "slo_attainment", "p99", "slo")}
                      for k, v in results["models"].items()}}
    print(f"{policy:<11} {trace:<8} load {load:4.2f} seed {seed}: {o['throughput']:>10,.0f} req/s, attainment "
          f"{o['slo_attainment']:.2%}, p99 {o['p99'] * 1e3:8.2f} ms, {wall:5.1f} s wall", flush=True)
    return row


def sustained(rows, policies, traces, seeds):
    """Per policy and trace: the median over seeds of the highest throughput served with >= 99 %
    attainment (0 when no load is), and the loads that gave it."""
    out = {}
    for policy in policies:
        for trace in traces:
            best = []
            for seed in seeds:
                ok = [r for r in rows if (r["policy"], r["trace"], r["seed"]) == (policy, trace, seed)
                      and r["slo_attainment"] >= 0.99]
                top = max(ok, key=lambda r: r["throughput"], default=None)
                best.append((top["throughput"], top["load"]) if top else (0.0, None))
            if any(r["policy"] == policy and r["trace"] == trace for r in rows):
                out.setdefault(policy, {})[trace] = {
                    "throughput": statistics.median(b[0] for b in best), "loads": [b[1] for b in best],
                    "per_seed": [b[0] for b in best]}
    return out


def medians(rows):
    """Per (policy, trace, load): the medians over seeds of throughput, attainment and p99."""
    keys = sorted({(r["policy"], r["trace"], r["load"]) for r in rows})
    out = []
    for policy, trace, load in keys:
        mine = [r for r in rows if (r["policy"], r["trace"], r["load"]) == (policy, trace, load)]
        out.append({"policy": policy, "trace": trace, "load": load, "seeds": len(mine),
                    **{f: statistics.median(r[f] for r in mine)
                       for f in ("offered", "throughput", "goodput", "slo_attainment", "p99", "utilization")}})
    return out


def validation(config, duration=2.0):
    """The batch simulator against the per-request one (4 pNPUs, model mixes of ``config``): two
    with replicas of one shape, and Nexus's plans with a residual replica of another shape among
    them (mixed shapes; Nexus keeps its first plan, as :func:`~tcloud.cluster.reference.compare`
    needs). Each row names the replicas' ``shapes``; ``histogram_difference`` 0 means both
    simulators put every request in the same latency bin."""
    from tcloud.cluster.placement import Cluster
    from tcloud.cluster.policies import make_policy
    from tcloud.cluster.reference import compare
    from tcloud.cluster.service import load_table
    from tcloud.cluster.simulate import Simulator, make_context
    from tcloud.cluster.workload import Arrivals, default_models, make_trace

    table = load_table(config=config, build=False)
    models = default_models(config)
    out = []
    # static at 0.7: at 0.9 four pNPUs hold seven ResNet-50 replicas whose backlog the batch
    # simulator sheds at the run's last instant and the per-request one does not (SimPy stops
    # before events at the end time), which makes p99 infinite in one and finite in the other
    for picked, policy, trace, load in (((0, 4), "static", "poisson", 0.7), ((1, 3, 5), "triton", "mmpp", 0.6),
                                        ((0, 4), "nexus", "poisson", 0.5), ((0, 4), "nexus", "mmpp", 0.7)):
        chosen = [models[i] for i in picked]
        context = make_context(chosen, table, 4, load)
        shape = make_trace(trace, chosen, duration, 2)
        options = {"epoch": 10**6} if policy == "nexus" else {}
        sim = Simulator(context, Cluster(1, 4, config), make_policy(policy, **options),
                        Arrivals(shape, context.rates, 2))
        shapes = [[r.shape.label for r in g.replicas] for g in sim.groups]
        for row, labels in zip(compare(sim, duration, Arrivals(shape, context.rates, 2).until(duration)), shapes):
            out.append({"policy": policy, "trace": trace, "load": load, "shapes": labels, **row})
    return out


def plot(summary, policies, traces, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(traces), figsize=(5 * len(traces), 7), sharex="col", squeeze=False)
    palette = plt.get_cmap("tab20").colors  # 20 colours: the default cycle repeats after 10
    styles = {p: (marker, dash, palette[(2 * i) % 20 + (2 * i) // 20]) for i, (p, marker, dash) in
              enumerate(zip(policies, "oh<s>^DvPXd", ("-", "-", "--", "--", ":", ":", "-.", "-", "--", "-", "--")))}
    for column, trace in enumerate(traces):
        top, bottom = axes[0][column], axes[1][column]
        for policy in policies:
            mine = [r for r in summary if r["policy"] == policy and r["trace"] == trace]
            if not mine:
                continue
            loads = [r["load"] for r in mine]
            marker, dash, color = styles[policy]  # one colour per policy in every panel
            top.plot(loads, [r["goodput"] / 1e3 for r in mine], marker=marker, linestyle=dash, color=color,
                     label=policy)
            bottom.plot(loads, [100 * r["slo_attainment"] for r in mine], marker=marker, linestyle=dash, color=color,
                        label=policy)
        bottom.axhline(99, color="grey", linestyle=":")
        top.set_title(f"{trace} arrivals (median of seeds)")
        top.set_ylabel("goodput (k requests/s within SLO)")
        bottom.set_ylabel("SLO attainment (%)")
        bottom.set_xlabel("offered load (fraction of capacity)")
        bottom.set_ylim(max(0, bottom.get_ylim()[0]), 100.5)
        top.legend(fontsize="small")
    fig.suptitle("250 x 4 tpu_like pNPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tpu_like")
    parser.add_argument("--nodes", type=int, default=250)
    parser.add_argument("--pnpus-per-node", type=int, default=4)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES))
    parser.add_argument("--traces", nargs="+", default=list(TRACES))
    parser.add_argument("--loads", type=float, nargs="+", help="the same loads for every trace (default: per trace)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--duration", type=float, default=20.0, help="measured simulated seconds per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="simulated seconds before the measured ones")
    parser.add_argument("--load-bandwidth", type=float, default=DEFAULT_LOAD_BANDWIDTH / 1e9, metavar="GB/S",
                        help="host link a replica added during a run loads its image over (inf: instant)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of other policies from the existing JSON (same setup)")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if not args.load_bandwidth > 0:
        parser.error(f"--load-bandwidth must be a positive number of GB/s or inf, got {args.load_bandwidth}")
    args.load_bandwidth *= 1e9
    from tcloud.cluster.service import load_table

    table = load_table(config=args.config, build=False)
    setup = {"config": table.config, "backend": table.backend, "timing_only": table.timing_only,
             "nodes": args.nodes, "pnpus_per_node": args.pnpus_per_node, "duration": args.duration,
             "warmup": args.warmup, "interval": 1.0, "models": [m.name for m in table.models],
             "slos_ms": None, "table_neighbours": table.neighbours, "load_bandwidth": args.load_bandwidth,
             "cluster_rules": CLUSTER_RULES}
    path = Path(args.out) if args.out else RESULTS / "cluster_policies.json"
    kept, policies, traces, seeds = [], list(args.policies), list(args.traces), list(args.seeds)
    if args.merge and path.exists():
        old = json.loads(path.read_text())
        old["setup"].setdefault("cluster_rules", 1)  # made before the rules were recorded
        if old["setup"].get("load_bandwidth") is None:  # made before loading was charged, or inf (JSON null)
            old["setup"]["load_bandwidth"] = float("inf")
        differ = [f"{k}: the file has {old['setup'].get(k)!r}, this run {setup[k]!r}"
                  for k in ("config", "nodes", "pnpus_per_node", "duration", "warmup", "table_neighbours",
                            "load_bandwidth", "cluster_rules") if old["setup"].get(k) != setup[k]]
        if differ:
            raise SystemExit(f"{path}: --merge needs the same setup; " + "; ".join(differ))
        if old["setup"]["seeds"] != seeds:
            raise SystemExit(f"{path}: --merge needs the same seeds, the file has {old['setup']['seeds']}")
        kept = [unnull(r) for r in old["runs"] if not (r["policy"] in args.policies and r["trace"] in args.traces)]
        setup["kept_runs_from"] = old["setup"].get("kept_runs_from") or {
            k: old["setup"].get(k) for k in ("commit", "uncommitted_changes")}
        policies = [p for p in POLICIES if p in {*old["setup"]["policies"], *policies}] + [
            p for p in policies if p not in POLICIES]
        traces = [t for t in TRACES if t in {*old["setup"]["traces"], *traces}]
    runs = [(p, t) for p in args.policies for t in args.traces]
    started = time.perf_counter()
    made_at = commit()
    rows = [{**run(p, t, load, seed, args, table), **made_at} for p, t in runs
            for load in (args.loads or LOADS.get(t, LOADS["poisson"])) for seed in seeds]
    rows = kept + rows
    from tcloud.cluster.simulate import make_context

    context = make_context(table.models, table, args.nodes * args.pnpus_per_node, 1.0)
    setup.update(policies=policies, traces=traces, seeds=seeds, loads=sorted({r["load"] for r in rows}),
                 trace_options={t: trace_options(t, args.warmup + args.duration)[1] for t in traces},
                 slos_ms={m.name: float(s) * 1e3 for m, s in zip(table.models, context.slos)},
                 capacity_requests_per_second=float(context.rates.sum()), **commit())
    best = sustained(rows, policies, traces, seeds)
    relative = {}
    for trace in traces:
        static = max((best[p][trace]["throughput"] for p in STATIC if trace in best.get(p, {})),
                     default=float("nan")) or float("nan")
        baselines = [best[p][trace]["throughput"] for p in BASELINES if trace in best.get(p, {})]
        relative[trace] = {p: {"vs_static": best[p][trace]["throughput"] / static,
                               "vs_best_baseline": best[p][trace]["throughput"] / max(baselines)
                               if baselines and max(baselines) > 0 else float("nan")}
                           for p in best if trace in best[p]}
    summary = medians(rows)
    bounds = {t: [allocation_bound(t, table, args.warmup, args.duration, seed) for seed in seeds] for t in traces}
    report = {"setup": setup, "sustained": best, "relative": relative, "allocation_bound": bounds,
              "medians": summary,
              "validation": validation(args.config), "sweep_wall_seconds": time.perf_counter() - started,
              "runs": rows}
    write("cluster_policies", report, args.out)
    try_plot(plot, summary, policies, traces, path.with_suffix(".png"))


if __name__ == "__main__":
    main()
