"""``tcloud cluster simulate|table|train``: the cluster layer's command line.

``tcloud cluster ARGS`` calls :func:`main` with ``ARGS``; the commands raise
:class:`~tcloud.isa.errors.TcloudError` for bad input, which ``tcloud`` prints without a traceback.
"""

import json
import math
import time
from pathlib import Path

from tcloud.isa.errors import TcloudError
from tcloud.runtime.files import output_dir, output_file, read_bytes, read_text, write_figure, write_file
from tcloud.runtime.progress import Progress

from .workload import TRACES, ClusterError


def build_parser():
    """The parser of ``tcloud cluster``."""
    import argparse

    from tcloud.runtime.cli import seed_int

    from .policies import POLICIES
    from .service import DEFAULT_BACKEND
    from .simulate import DEFAULT_LOAD_BANDWIDTH

    cluster = argparse.ArgumentParser(prog="tcloud cluster",
                                      description="Serve many models on many pNPUs (simulated in virtual time).")
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    sim = csub.add_parser("simulate", help="simulate a policy on a trace and report throughput, SLO attainment, "
                          "latency, utilization and cost")
    sim.add_argument("--nodes", type=_positive_int, default=250)
    sim.add_argument("--pnpus-per-node", type=_positive_int, default=4)
    sim.add_argument("--policy", choices=sorted({*POLICIES, "rl", "rl-floor"}), default="static")
    sim.add_argument("--trace", default="poisson", metavar="{" + ",".join(TRACES) + ",PATH}",
                     help="arrival trace, or an Azure Functions 2019 per-minute invocation-count CSV")
    sim.add_argument("--load", type=float, default=0.8, help="offered load as a fraction of capacity (default 0.8)")
    sim.add_argument("--duration", type=float, default=60.0, help="simulated seconds (default 60)")
    sim.add_argument("--interval", type=float, default=1.0, help="seconds between policy decisions (default 1)")
    sim.add_argument("--warmup", type=float, default=0.0,
                     help="simulated seconds before the measured ones (adaptive policies settle; default 0)")
    sim.add_argument("--seed", type=seed_int, default=0)
    sim.add_argument("--provision", choices=PROVISIONS,
                     help="what static, clipper, triton, rl and rl-floor split the pNPUs by: each model's mean rate "
                          "(the default), or its peak over 1-s windows of this run's trace, known in advance")
    sim.add_argument("--load-bandwidth", type=_gigabytes_per_second, default=DEFAULT_LOAD_BANDWIDTH, metavar="GB/S",
                     help="host link into a pNPU's HBM: a replica added during the run serves once its image "
                          f"has crossed it (default {DEFAULT_LOAD_BANDWIDTH / 1e9:g}; inf: reallocation is instant)")
    sim.add_argument("--config", default="small", help="pNPU configuration of the service-time table")
    sim.add_argument("--backend", default=DEFAULT_BACKEND, help="timed backend of the service-time table")
    sim.add_argument("--table", metavar="FILE", help="service-time table (default: the shipped one)")
    sim.add_argument("--json", metavar="OUT", help="write the results as JSON")
    sim.add_argument("--plot", metavar="DIR", help="write plots (allocation and throughput over time)")
    sim.set_defaults(func=cmd_simulate)
    tab = csub.add_parser("table", help="measure the service-time table (Ray tasks) and write it")
    tab.add_argument("--config", default="small")
    tab.add_argument("--backend", default=DEFAULT_BACKEND)
    tab.add_argument("--batches", type=_positive_int, nargs="+", default=None)
    tab.add_argument("--cpus", type=_positive_int, default=None, help="Ray CPUs (default: all)")
    tab.add_argument("--out", metavar="FILE", help="where to write it (default: the shipped table's path)")
    tab.add_argument("--alone", action="store_true",
                     help="measure each vNPU alone on its pNPU (default: next to busy vNPUs of the same model)")
    tab.set_defaults(func=cmd_table)
    tra = csub.add_parser("train", help="train the RL policy (skrl PPO on JAX, rollouts on Ray workers)")
    tra.add_argument("--dir", default="build/cluster-rl", help="checkpoints and weights (default build/cluster-rl)")
    tra.add_argument("--timesteps", type=_positive_int, default=40960,
                     help="steps per environment (default 40960)")
    tra.add_argument("--envs", type=_positive_int, default=2, help="Ray workers (default 2)")
    tra.add_argument("--envs-per-worker", type=_positive_int, default=1,
                     help="environments each Ray worker steps per driver step (default 1)")
    tra.add_argument("--rollouts", type=_positive_int, default=128, help="steps per worker between PPO updates")
    tra.add_argument("--checkpoint-every", type=_positive_int, default=512,
                     help="steps per worker between checkpoints, a multiple of --rollouts (default 512)")
    tra.add_argument("--nodes", type=_positive_int, nargs="+", default=[4],
                     help="nodes of the training cluster; several: each episode draws one (default 4, x 4 pNPUs)")
    tra.add_argument("--pnpus-per-node", type=_positive_int, default=4)
    tra.add_argument("--interval", type=float, default=0.005, help="simulated seconds per step (default 0.005)")
    tra.add_argument("--episode-steps", type=_positive_int, default=32)
    tra.add_argument("--loads", type=float, nargs=2, default=(0.3, 1.1), metavar=("LOW", "HIGH"),
                     help="each episode's load is drawn from this range (default 0.3 1.1)")
    tra.add_argument("--cost-weight", type=float, default=0.1,
                     help="reward = fraction within SLO - worst-weight x the worst model's shortfall - this x the "
                          "share of the cluster's price held (default 0.1)")
    tra.add_argument("--worst-weight", type=float, default=1.0,
                     help="weight of the worst model's shortfall, 1 - its fraction within SLO (default 1)")
    tra.add_argument("--no-slow-features", action="store_true",
                     help="train a network that does not see the slow rate estimate (an ablation: its two features "
                          "read as if no burst were remembered; the floors still use it)")
    tra.add_argument("--config", default="small", help="pNPU configuration of the service-time table")
    tra.add_argument("--table", metavar="FILE", help="service-time table (default: the shipped one)")
    tra.add_argument("--seed", type=seed_int, default=0)
    tra.add_argument("--fresh", action="store_true", help="start afresh: an earlier run's progress, checkpoints "
                     "and snapshots in --dir move to --dir/before-<date-time>-<suffix>/")
    tra.add_argument("--curve", metavar="OUT.json", help="write the learning curve (JSON and a PNG beside it)")
    tra.add_argument("--curve-episodes", type=_positive_int, default=6,
                     help="episodes each snapshot and baseline is scored on for the curve (default 6)")
    ship = tra.add_mutually_exclusive_group()
    ship.add_argument("--ship", action="store_true", help="copy the trained weights over the shipped policy")
    ship.add_argument("--ship-snapshot", type=_positive_int, metavar="STEPS",
                     help="copy the snapshot after STEPS environment steps over the shipped policy instead (one "
                          "chosen by a held-out evaluation, benchmarks/cluster_rl_select.py)")
    tra.set_defaults(func=cmd_train)
    return cluster


def snapshot_steps(directory, timesteps, checkpoint_every, envs, resume=True):
    """The environment steps of the snapshots a training run in ``directory`` will have written.

    Parameters
    ----------
    directory : Path
        The training directory (``snapshots/rl_policy_<steps>.npz``, ``progress.json``).
    timesteps, checkpoint_every : int
        Steps per environment to train to, and between two snapshots (as :func:`.rl_train.train`).
    envs : int
        Environments in all.
    resume : bool
        Whether training continues from ``progress.json`` and its snapshots (else from 0: a fresh
        run moves the old snapshots aside, :func:`.rl_train.train`).

    Returns
    -------
    list of int
        Sorted: the snapshots already there (when resuming) and those the segments up to
        ``timesteps`` write.
    """
    there = {int(p.stem.rsplit("_", 1)[-1]) for p in (Path(directory) / "snapshots").glob("rl_policy_*.npz")
             if resume and p.stem.rsplit("_", 1)[-1].isdigit()}
    done = 0
    if resume and (Path(directory) / "progress.json").exists():
        try:
            done = max(0, int(json.loads(read_text(Path(directory) / "progress.json")).get("done", 0)))
        except (TcloudError, ValueError, TypeError, AttributeError, OverflowError):
            done = 0  # training itself names a bad file
    while done < timesteps:
        done += min(checkpoint_every, timesteps - done)
        there.add(done * envs)
    return sorted(there)


def _gigabytes_per_second(text):
    """``--load-bandwidth``: GB/s (10⁹ bytes per second), positive, or ``inf``; returns bytes per second."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of GB/s or inf, got {text!r}")
    return value * 1e9


def _positive_int(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


PROVISIONS = ("mean", "peak")


def run_simulation(nodes, pnpus_per_node, policy, trace, load, duration, seed=0, interval=1.0, config="small",
                   backend=None, table=None, models=None, progress=None, warmup=0.0, trace_options=None,
                   load_bandwidth=None, provision=None):
    """Build everything and simulate; return ``(results, simulator, wall seconds)``.

    Parameters mirror ``tcloud cluster simulate``; ``policy`` is a name or a
    :class:`~.policies.Policy`; ``table`` a :class:`~.service.ServiceTable`, a path or ``None``;
    ``trace_options`` keyword arguments of :func:`~.workload.make_trace` (e.g. ``amplitude``,
    ``seconds_per_minute``); ``load_bandwidth`` bytes per second (default
    :data:`~.simulate.DEFAULT_LOAD_BANDWIDTH`); ``provision`` ``"peak"`` sets the policy's
    ``provision`` to the trace's :meth:`~.workload.Trace.peak_to_mean` ratios, ``"mean"`` clears
    it, ``None`` leaves the policy's own.
    """
    from .placement import Cluster
    from .policies import make_policy
    from .service import DEFAULT_BACKEND, ServiceTable, load_table
    from .simulate import (CLUSTER_RULES, DEFAULT_LOAD_BANDWIDTH, MAX_DECISIONS, MAX_SECONDS, Simulator,
                           make_context)
    from .workload import Arrivals, default_models, make_trace

    for name, value in (("duration", duration), ("interval", interval)):
        if not (math.isfinite(value) and value > 0):
            raise ClusterError(f"--{name} must be a positive finite number, got {value!r}")
    if not (math.isfinite(warmup) and warmup >= 0):
        raise ClusterError(f"--warmup must be a finite number of seconds >= 0, got {warmup!r}")
    if warmup + duration > MAX_SECONDS:
        raise ClusterError(f"--warmup + --duration must be at most {MAX_SECONDS:g} simulated seconds (a day), got "
                           f"{warmup + duration:g}")
    if (warmup + duration) / interval > MAX_DECISIONS:
        raise ClusterError(f"(--warmup + --duration) / --interval must be at most {MAX_DECISIONS:,} policy decisions, "
                           f"got {(warmup + duration) / interval:.3g}; give a longer --interval")
    if not isinstance(table, ServiceTable):
        table = load_table(models, config, backend or DEFAULT_BACKEND, path=table, build=False)
    models = tuple(models or table.models or default_models(table.config))
    cluster = Cluster(nodes, pnpus_per_node, table.config)
    load_bandwidth = DEFAULT_LOAD_BANDWIDTH if load_bandwidth is None else load_bandwidth
    context = make_context(models, table, nodes * pnpus_per_node, load, interval, load_bandwidth=load_bandwidth)
    if isinstance(policy, str):
        policy = make_policy(policy)
    if provision not in (None, *PROVISIONS):
        raise ClusterError(f"--provision must be one of {', '.join(PROVISIONS)}, got {provision!r}")
    if provision is not None and not hasattr(policy, "provision"):
        raise ClusterError(f"--provision applies to policies that split the pNPUs by provisioned rates (static, "
                           f"clipper, triton, rl, rl-floor); {policy.name} plans from measured rates")
    shape = make_trace(trace, models, warmup + duration, seed, **(trace_options or {}))
    if provision is not None:
        policy.provision = shape.peak_to_mean() if provision == "peak" else None
    arrivals = Arrivals(shape, context.rates, seed)
    started = time.perf_counter()
    sim = Simulator(context, cluster, policy, arrivals)
    results = sim.run(duration, progress, warmup)
    wall = time.perf_counter() - started
    results["setup"] = {"nodes": nodes, "pnpus_per_node": pnpus_per_node, "policy": policy.name,
                        "trace": str(trace), "load": load, "duration": duration, "seed": seed,
                        "provision": "mean" if getattr(policy, "provision", None) is None else
                        [float(v) for v in policy.provision],
                        "interval": interval, "warmup": warmup, "config": table.config, "backend": table.backend,
                        "load_bandwidth": load_bandwidth, "cluster_rules": CLUSTER_RULES,
                        "offered_rate": float(context.rates.sum()),
                        "wall_seconds": wall}
    return results, sim, wall


def cmd_simulate(args):
    out = output_file(args.json, "results") if args.json else None
    plots = output_dir(args.plot, "plot directory") if args.plot else None
    with Progress(f"simulating {args.nodes}x{args.pnpus_per_node} pNPUs, {args.policy}, {args.trace}, load "
                  f"{args.load}", unit="s") as bar:
        results, sim, wall = run_simulation(args.nodes, args.pnpus_per_node, args.policy, args.trace, args.load,
                                            args.duration, args.seed, args.interval, args.config, args.backend,
                                            args.table, progress=bar.update, warmup=args.warmup,
                                            load_bandwidth=args.load_bandwidth, provision=args.provision)
    print(summary(results))
    if out:
        write_file(out, json.dumps(results, indent=1, default=float) + "\n", "results")
        print(f"results: {out}")
    if plots:
        for path in plot_timeline(sim, plots):
            print(f"plot: {path}")


def summary(results):
    """The results as a text table."""
    setup = results["setup"]
    lines = [f"{setup['policy']} on {setup['nodes']}x{setup['pnpus_per_node']} {setup['config']} pNPUs "
             f"({setup['backend']} service times), {setup['trace']} at load {setup['load']}: "
             f"{setup['duration']:g} s simulated in {setup['wall_seconds']:.1f} s",
             f"{'model':<20} {'offered/s':>11} {'thru/s':>11} {'good/s':>11} {'SLO att':>8} {'p50 ms':>8} "
             f"{'p99 ms':>8} {'SLO ms':>7} {'util':>6}"]
    for name, m in [*results["models"].items(), ("overall", results["overall"])]:
        slo = f"{m['slo'] * 1e3:7.3f}" if "slo" in m else f"{'':>7}"
        lines.append(f"{name:<20} {m['offered']:>11,.0f} {m['throughput']:>11,.0f} {m['goodput']:>11,.0f} "
                     f"{m['slo_attainment']:>8.2%} {m['p50'] * 1e3:>8.3f} {m['p99'] * 1e3:>8.3f} {slo} "
                     f"{m['utilization']:>6.1%}")
    o = results["overall"]
    lines.append(f"cost {o['cost']:.4g} ({o['cost_per_1000']:.4g} per 1,000 inferences); "
                 f"{o['refused_placements']} placement(s) refused")
    return "\n".join(lines)


def plot_timeline(sim, directory):
    """Replicas per model and goodput over time (PNG files in ``directory``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [m.name for m in sim.context.models]
    t = np.array([e["time"] for e in sim.timeline])
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    for i, name in enumerate(names):
        axes[0].plot(t, [e["replicas"][i] for e in sim.timeline], label=name)
        axes[1].plot(t, [e["batch"][i] for e in sim.timeline], label=name)
        axes[2].plot(t, [e["good"][i] / max(e["arrival_rate"][i] * sim.context.interval, 1) for e in sim.timeline],
                     label=name)
    axes[0].set_ylabel("replicas (vNPUs)")
    axes[1].set_ylabel("mean batch cap")
    axes[2].set_ylabel("good / arrived")
    axes[2].set_xlabel("simulated seconds")
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_title(f"{sim.policy.name}: allocation over time")
    fig.tight_layout()
    return [write_figure(fig, Path(directory) / f"allocation_{sim.policy.name}.png")]


def cmd_table(args):
    from .service import build_table, default_path

    out = output_file(args.out or default_path(args.config, args.backend), "service-time table")
    with Progress(f"measuring the service-time table on {args.config}/{args.backend}", unit="entry") as bar:
        table = build_table(config=args.config, backend=args.backend, batches=tuple(args.batches or ()) or None,
                            num_cpus=args.cpus, progress=bar.update, neighbours=not args.alone)
    table.save(out)
    print(f"{out}: {len(table.entries)} entries ({len(table.models)} models x {len(table.shapes)} shapes x "
          f"batches {table.batches}) and {len(table.neighbour_slowdown)} neighbour pairs in "
          f"{table.build_seconds:.0f} s")


def cmd_train(args):
    try:
        import skrl  # noqa: F401
    except ImportError:
        raise ClusterError("training needs skrl with JAX: pip install 'tcloud-npu[rl]'") from None
    from .rl import WEIGHTS, ShippedPolicy
    from .rl_train import train

    directory = output_dir(args.dir, "training directory")
    if args.curve:  # checked before the training, not after it
        output_file(args.curve, "learning curve")
        output_file(Path(args.curve).with_suffix(".png"), "learning curve plot")
    if args.ship or args.ship_snapshot:
        output_file(WEIGHTS, "shipped weight file")
    nodes = args.nodes[0] if len(args.nodes) == 1 else tuple(args.nodes)
    env = {"nodes": nodes, "pnpus_per_node": args.pnpus_per_node, "interval": args.interval,
           "steps": args.episode_steps, "config": args.config, "loads": tuple(args.loads),
           "cost_weight": args.cost_weight, "worst_weight": args.worst_weight}
    if args.table:
        env["table"] = args.table
    if args.no_slow_features:  # recorded only when off, so runs made before the option still resume
        env["slow_features"] = False
    envs = args.envs * args.envs_per_worker
    if args.ship_snapshot:  # before training, not after an hour of it
        there = snapshot_steps(directory, args.timesteps, args.checkpoint_every, envs, resume=not args.fresh)
        if args.ship_snapshot not in there:
            raise ClusterError(f"--ship-snapshot {args.ship_snapshot}: no snapshot after {args.ship_snapshot} "
                               f"environment steps in {directory / 'snapshots'} once training reaches --timesteps "
                               f"{args.timesteps} (there will be: {', '.join(map(str, there)) or 'none'})")
    with Progress(f"training the RL policy ({args.envs} Ray workers x {args.envs_per_worker} environments)",
                  unit="step") as bar:
        state = train(directory, args.timesteps, args.envs, args.checkpoint_every, args.seed, resume=not args.fresh,
                      progress=bar.update, rollouts=args.rollouts, per_worker=args.envs_per_worker, **env)
    print(f"{state['done'] * envs} environment steps in {state['seconds']:.0f} s "
          f"({state['done'] * envs / max(state['seconds'], 1e-9):.1f} steps/s); mean reward of the first and "
          f"last segments: {state['rewards'][0]:.3f}, {state['rewards'][-1]:.3f}")
    if args.curve:
        from .rl_train import learning_curve, write_curve

        with Progress("scoring the snapshots and the baselines on the same episodes", unit="policy") as bar:
            evaluation = learning_curve(directory, state, episodes=args.curve_episodes, progress=bar.update)
        for path in write_curve(state, args.curve, evaluation):
            print(f"learning curve: {path}")
    print(f"weights: {state['weights']}")
    if args.ship_snapshot:
        snapshot = directory / "snapshots" / f"rl_policy_{args.ship_snapshot}.npz"
        if not snapshot.exists():
            there = sorted(int(p.stem.rsplit("_", 1)[-1]) for p in snapshot.parent.glob("rl_policy_*.npz")
                           if p.stem.rsplit("_", 1)[-1].isdigit())
            raise ClusterError(f"no snapshot after {args.ship_snapshot} environment steps in {snapshot.parent} "
                               f"(there are: {', '.join(map(str, there)) or 'none'})")
        ShippedPolicy(snapshot)  # a readable weight file for this code, or a ClusterError naming it
        write_file(WEIGHTS, read_bytes(snapshot), "shipped weight file")
        print(f"shipped: {snapshot} -> {WEIGHTS}")
    elif args.ship:
        write_file(WEIGHTS, read_bytes(state["weights"]), "shipped weight file")
        print(f"shipped: {WEIGHTS}")


def main(argv):
    """Run ``tcloud cluster`` with the arguments ``argv`` (after ``cluster``)."""
    args = build_parser().parse_args(argv)
    args.func(args)
