"""Pairs of tenants on one ``small`` pNPU in Verilator under the four scheduling policies.

Tenants: ``me`` (ME-heavy int8 GEMM), ``ve`` (VE-heavy residual add+ReLU chain). Pairs: me+me,
ve+ve and the mixed me+ve. Each tenant owns half the engines (2 MEs, 1 VE). Closed loop: every
tenant runs its job back to back; the measurement window ends when the first tenant has finished
``--runs`` jobs, so both tenants are busy for the whole window. Measured from the RTL counters:

* per-tenant latency (cycles from ``ctx.start`` to ``halt``, mean over its runs in the window) and
  slowdown against the same tenant running alone on its owned engines (static policy, empty pNPU);
* throughput: jobs finished in the window, weighted by each job's solo latency, per cycle:
  ``sum_i jobs_i * alone_i / window`` (2.0 = two tenants each at full solo speed);
* ME and VE utilization: engine-cycles of the jobs finished in the window / (engines x window).

Targets (issue): on the mixed pair, ``harvest`` >= 1.2x the utilization and >= 1.3x the throughput
of ``static``, and no tenant slowed by more than 10 % against its owned engines alone.
Writes ``benchmarks/results/multitenant_rtl.json`` and ``multitenant_rtl.png``.
``python -m benchmarks.multitenant_rtl [--runs N] [--quick]``
"""

import argparse
import time

import numpy as np

from tcloud.firmware import elementwise, gemm
from tcloud.runtime.hypervisor import Hypervisor, VNPUSpec
from tcloud.runtime.tenants import random_inputs

from .common import RESULTS, write

POLICIES = ("static", "harvest", "temporal", "operator")
HALF = VNPUSpec(mes=2, ves=1, sram_kib=120, hbm_mib=2)


def workloads(quick):
    if quick:
        return {"me": gemm("small", 64, 96, 64), "ve": elementwise("small", 24, 64, passes=4, block_elements=256)}
    return {"me": gemm("small", 128, 256, 128), "ve": elementwise("small", 48, 128, passes=4, block_elements=512)}


def run_pair(images, kinds, policy, runs, seed=0):
    """Run tenants of ``kinds`` in a closed loop; return the window's latencies, jobs and engine use."""
    rng = np.random.default_rng(seed)
    with Hypervisor("small", "verilator", policy, poll_cycles=256) as hv:
        vnpus = [hv.create_vnpu(HALF, name=f"{kind}{i}") for i, kind in enumerate(kinds)]
        for vnpu, kind in zip(vnpus, kinds):
            vnpu.load(images[kind])
        start = hv.pnpus[0].device.cycles
        extra = 4 * runs  # enough queued jobs to keep every tenant busy until the window closes
        futures = [[vnpu.submit(random_inputs(images[kind], rng)) for _ in range(runs + extra)]
                   for vnpu, kind in zip(vnpus, kinds)]
        while not any(pending[runs - 1].done() for pending in futures):
            time.sleep(0.005)
        with hv._lock:
            end = min(vnpu.runs[runs - 1].finish_cycle for vnpu in vnpus if len(vnpu.runs) >= runs)
            records = [[r for r in vnpu.runs if r.finish_cycle <= end] for vnpu in vnpus]
    window = end - start
    tenants = [{"name": v.name, "kind": kind, "jobs": len(rec), "latencies": [r.latency_cycles for r in rec]}
               for v, kind, rec in zip(vnpus, kinds, records)]
    used = {cls: sum(r.engine_cycles[cls] for rec in records for r in rec) for cls in ("me", "ve", "dma")}
    count = {"me": 4, "ve": 2, "dma": 2}
    util = {cls: round(used[cls] / (count[cls] * window), 4) for cls in used}
    return {"window_cycles": window, "utilization": util, "tenants": tenants}


def measure(runs, quick):
    images = workloads(quick)
    alone = {kind: float(np.mean(run_pair(images, [kind], "static", runs)["tenants"][0]["latencies"]))
             for kind in images}
    print("alone on owned engines (2 MEs, 1 VE): " + ", ".join(f"{k} {v:.0f} cycles" for k, v in alone.items()))
    pairs = {"me+me": ("me", "me"), "ve+ve": ("ve", "ve"), "mixed": ("me", "ve")}
    results = {}
    for pair, kinds in pairs.items():
        results[pair] = {}
        for policy in POLICIES:
            r = run_pair(images, kinds, policy, runs)
            for t in r["tenants"]:  # a tenant with no job finished inside the window has no latency
                t["mean_latency"] = float(np.mean(t["latencies"])) if t["latencies"] else None
                t["slowdown_vs_alone"] = round(t["mean_latency"] / alone[t["kind"]], 3) if t["latencies"] else None
            r["stp"] = round(sum(t["jobs"] * alone[t["kind"]] for t in r["tenants"]) / r["window_cycles"], 3)
            r["jobs_per_mcycle"] = round(sum(t["jobs"] for t in r["tenants"]) / r["window_cycles"] * 1e6, 2)
            results[pair][policy] = r
            print(f"{pair:6} {policy:9} window {r['window_cycles']:8d}  STP {r['stp']:.2f}  "
                  f"ME {r['utilization']['me']:.1%}  VE {r['utilization']['ve']:.1%}  slowdowns "
                  + ", ".join(f"{t['name']} {t['slowdown_vs_alone']}x" for t in r["tenants"]))
    return images, alone, results


def worst_slowdown(result):
    return max((t["slowdown_vs_alone"] for t in result["tenants"] if t["slowdown_vs_alone"] is not None), default=0)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    pairs = list(results)
    width = 0.2
    for i, policy in enumerate(POLICIES):
        xs = [p + (i - 1.5) * width for p in range(len(pairs))]
        axes[0].bar(xs, [results[p][policy]["stp"] for p in pairs], width, label=policy)
        axes[1].bar(xs, [results[p][policy]["utilization"]["me"] for p in pairs], width, label=policy)
        axes[2].bar(xs, [worst_slowdown(results[p][policy]) for p in pairs],
                    width, label=policy)
    for ax, title in zip(axes, ("system throughput (STP)", "ME utilization", "worst tenant slowdown vs alone")):
        ax.set_xticks(range(len(pairs)), pairs)
        ax.set_title(title)
    axes[2].axhline(1.1, color="grey", linestyle="--", linewidth=1)
    axes[0].legend(fontsize=8)
    fig.suptitle("Two tenants on one 'small' pNPU (Verilator RTL), each owning 2 MEs + 1 VE")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="jobs per tenant")
    parser.add_argument("--quick", action="store_true", help="smaller jobs (CI smoke run)")
    parser.add_argument("--out")
    parser.add_argument("--plot", default=str(RESULTS / "multitenant_rtl.png"))
    args = parser.parse_args(argv)
    images, alone, results = measure(args.runs, args.quick)
    mixed = results["mixed"]
    summary = {
        "mixed_harvest_over_static_stp": round(mixed["harvest"]["stp"] / mixed["static"]["stp"], 3),
        "mixed_harvest_over_static_me_utilization": round(mixed["harvest"]["utilization"]["me"]
                                                          / mixed["static"]["utilization"]["me"], 3),
        "mixed_harvest_over_static_engine_utilization": round(
            (mixed["harvest"]["utilization"]["me"] * 4 + mixed["harvest"]["utilization"]["ve"] * 2)
            / (mixed["static"]["utilization"]["me"] * 4 + mixed["static"]["utilization"]["ve"] * 2), 3),
        "mixed_harvest_over_static_jobs_per_mcycle": round(mixed["harvest"]["jobs_per_mcycle"]
                                                           / mixed["static"]["jobs_per_mcycle"], 3),
        "harvest_worst_slowdown_vs_alone": max(worst_slowdown(pair["harvest"]) for pair in results.values()),
    }
    for key, value in summary.items():
        print(f"{key}: {value}")
    write("multitenant_rtl", {
        "targets": {"mixed_harvest_over_static_utilization": 1.2, "mixed_harvest_over_static_throughput": 1.3,
                    "max_slowdown_vs_alone": 1.1},
        "workloads": {"me": "gemm 128x256x128" if not args.quick else "gemm 64x96x64",
                      "ve": "elementwise 48x128 passes=4" if not args.quick else "elementwise 24x64 passes=4"},
        "runs_per_tenant": args.runs, "vnpu": HALF.__dict__, "alone_latency_cycles": alone,
        "summary": summary, "results": results}, args.out)
    try:
        plot(results, args.plot)
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'); skipped the plot")
    return summary


if __name__ == "__main__":
    main()
