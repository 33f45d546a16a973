"""Co-location on ``tpu_like``: how much a busy neighbour vNPU slows each full-size model.

The cluster's service-time table measures every vNPU smaller than a pNPU next to busy vNPUs of the
same shape and model (:func:`tcloud.cluster.service.measure`), because the cluster packs a model's
replicas together. This benchmark measures what that choice leaves out: each model on an ``m2v1``
vNPU at static's batch (the largest with 2 × latency ≤ SLO, from the shipped table), alone on its
pNPU and next to an ``m2v1`` neighbour running each of the models back to back for the whole
measured run (:data:`~tcloud.cluster.service.NEIGHBOUR_RUNS` × the ratio of their cycles alone), all
on ``perf`` without data.
The result is the slowdown matrix (measured model × neighbour model), JSON and a heat map.
"""

import argparse
import math
import time

import numpy as np

from benchmarks.common import RESULTS, conditions, try_plot, write

SHAPE = "m2v1"


def measure(config):
    from tcloud.cluster.service import NEIGHBOUR_RUNS, compile_for, load_table, run_next_to
    from tcloud.cluster.simulate import best_batch, make_context
    from tcloud.isa import get_config

    table = load_table(config=config, build=False)
    context = make_context(table.models, table, 1, 1.0)
    shape = table.shape(SHAPE)
    batches = [max(best_batch(c[SHAPE], slo), 1) for c, slo in zip(context.curves, context.slos)]
    started = time.perf_counter()
    compiled = [compile_for(m, config, b, shape) for m, b in zip(table.models, batches)]
    compile_seconds = time.perf_counter() - started

    def cycles(measured, neighbour, runs=NEIGHBOUR_RUNS):
        return run_next_to(measured, neighbour, config, shape, backend="perf", timing_only=True, runs=runs)[0]

    alone = [cycles(c, None) for c in compiled]
    slowdown = [[round(cycles(c, n, NEIGHBOUR_RUNS * math.ceil(a / b)) / a, 4) for n, b in zip(compiled, alone)]
                for c, a in zip(compiled, alone)]
    names = [m.name for m in table.models]
    for name, row in zip(names, slowdown):
        print(f"{name:12s} " + " ".join(f"{value:5.2f}" for value in row))
    return {"setup": {"shape": SHAPE, "table_neighbours": table.neighbours, "backend": "perf (timing only)",
                      "compile_seconds": round(compile_seconds, 1),
                      **conditions(get_config(config), {"hbm_latency": get_config(config).hbm_latency})},
            "models": names, "batches": batches, "alone_cycles": alone,
            "slowdown": slowdown,
            "same_model_slowdown": {n: slowdown[i][i] for i, n in enumerate(names)},
            "worst_slowdown": {n: max(slowdown[i]) for i, n in enumerate(names)},
            "worst_neighbour": {n: names[int(np.argmax(slowdown[i]))] for i, n in enumerate(names)}}


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, values = report["models"], np.array(report["slowdown"])
    fig, ax = plt.subplots(figsize=(6.5, 5))
    image = ax.imshow(values, cmap="Reds", vmin=1.0)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), [f"{n} (b={b})" for n, b in zip(names, report["batches"])])
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xlabel(f"neighbour on the other {report['setup']['shape']} vNPU")
    ax.set_ylabel("measured model (static's batch)")
    ax.set_title("latency next to a busy neighbour / alone (tpu_like, perf)")
    fig.colorbar(image, ax=ax, label="slowdown")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tpu_like")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    report = measure(args.config)
    path = write("cluster_colocation", report, args.out)
    try_plot(plot, report, path.with_suffix(".png") if args.out else RESULTS / "cluster_colocation.png")


if __name__ == "__main__":
    main()
