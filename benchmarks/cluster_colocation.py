"""Co-location on ``tpu_like``: how much a busy neighbour vNPU slows each full-size model.

The cluster's service-time table measures every vNPU smaller than a pNPU next to busy vNPUs of the
same shape and model (:func:`tcloud.cluster.service.measure`), because the cluster packs a model's
replicas together. This benchmark measures what that choice leaves out: each model on an ``m2v1``
vNPU at static's batch (the largest with 2 × latency ≤ SLO, from the shipped table), alone on its
pNPU and next to an ``m2v1`` neighbour running each of the models back to back for the whole
measured run (:data:`~tcloud.cluster.service.NEIGHBOUR_RUNS` × the ratio of their cycles alone), on
the table's backend (``perf`` without data for ``tpu_like``; :func:`tcloud.cluster.service.colocation_cycles`, which also gives the
table's ``neighbour_slowdown``: these figures over the same-model ones, which the simulator charges a
replica next to another model).
The result is the slowdown matrix (measured model × neighbour model), JSON and a heat map.
"""

import argparse
import time

import numpy as np

from benchmarks.common import RESULTS, conditions, try_plot, write

def measure(config):
    from tcloud.cluster.service import colocation_cycles, load_table
    from tcloud.isa import get_config

    table = load_table(config=config, build=False)
    started = time.perf_counter()
    cycles = colocation_cycles(table)
    alone = cycles["alone"]
    slowdown = [[round(c / a, 4) for c in row] for row, a in zip(cycles["next_to"], alone)]
    names = [m.name for m in table.models]
    for name, row in zip(names, slowdown):
        print(f"{name:12s} " + " ".join(f"{value:5.2f}" for value in row))
    return {"setup": {"shape": cycles["shape"], "table_neighbours": table.neighbours,
                      "backend": f"{table.backend}{' (timing only)' if table.timing_only else ''}",
                      "seconds": round(time.perf_counter() - started, 1),
                      **conditions(get_config(config), {"hbm_latency": get_config(config).hbm_latency})},
            "models": names, "batches": cycles["batches"], "alone_cycles": alone,
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
