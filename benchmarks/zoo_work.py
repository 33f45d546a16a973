"""The zoo's full networks compiled: compile time and per-layer ME/VE work, checked against onnxruntime.

ResNet-50 and MobileNetV2 at 224 × 224 (batch 1) and the DLRM-style MLP tower (batch 32), built by
:mod:`tcloud.runtime.compiler.zoo.builders` with seeded random weights, quantized by onnxruntime
(QDQ, int8, calibrated on random samples) and compiled for ``small``. For every layer: the operator,
its output shape, the GEMM it became (if any), MACs on the matrix engines, elements the vector
engines touch and uTOps per engine class — the work the allocator and the performance model start
from. Each compiled network runs once on the functional backend (the golden model) and must equal
onnxruntime bit for bit. Writes ``zoo_work.json`` and ``zoo_work.png``.
``python -m benchmarks.zoo_work [--config small] [--repeats 3]``.
"""

import argparse
import logging
import statistics
import time
from collections import defaultdict

import numpy as np
import onnxruntime as ort

from tcloud.isa import get_config
from tcloud.runtime import compile
from tcloud.runtime.compiler.quantize import quantize, random_samples
from tcloud.runtime.compiler.zoo import builders

from .common import RESULTS, conditions, try_plot, write

NETWORKS = (("resnet50", builders.resnet50, 1), ("mobilenetv2", builders.mobilenetv2, 1),
            ("dlrm_mlp", builders.dlrm_mlp, 32))


def onnxruntime_int8(model, feeds):
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdqisint8allowed", "1")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def measure(name, build, batch, cfg, repeats):
    model = build()
    quantized = quantize(model, "qdq", random_samples(model, count=2))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        compiled = compile(quantized, cfg, batch=batch)
        seconds.append(time.perf_counter() - start)
    value = model.graph.input[0]
    shape = [d.dim_value or batch for d in value.type.tensor_type.shape.dim]
    feeds = {value.name: np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    start = time.perf_counter()
    got = next(iter(compiled.run(feeds).values()))
    run_seconds = time.perf_counter() - start
    exact = bool(np.array_equal(got, onnxruntime_int8(quantized, feeds)))
    by_op = defaultdict(lambda: {"layers": 0, "macs": 0, "ve_elements": 0})
    for layer in compiled.layers:
        entry = by_op[layer["op"]]
        entry["layers"] += 1
        entry["macs"] += layer["macs"]
        entry["ve_elements"] += layer["ve_elements"]
    macs = sum(layer["macs"] for layer in compiled.layers)
    ve = sum(layer["ve_elements"] for layer in compiled.layers)
    print(f"{name}: {len(compiled.layers)} layers, compiled in {statistics.median(seconds):.1f} s, "
          f"{macs / 1e9:.2f} G MACs, {ve / 1e6:.1f} M VE elements, functional run {run_seconds:.1f} s, "
          f"equals onnxruntime: {exact}")
    return {"model": name, "batch": batch, "layers_count": len(compiled.layers),
            "compile_seconds_median": round(statistics.median(seconds), 2), "compile_seconds": [round(s, 2) for s in
                                                                                                seconds],
            "functional_run_seconds": round(run_seconds, 2), "equals_onnxruntime": exact,
            "image_bytes": len(compiled.image.to_bytes()), "macs": macs, "ve_elements": ve,
            "macs_per_ve_element": round(macs / ve, 2) if ve else None, "by_op": dict(by_op),
            "layers": compiled.layers}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 3.2 * len(results)))
    for ax, result in zip(np.atleast_1d(axes), results):
        layers = result["layers"]
        index = np.arange(len(layers))
        ax.bar(index, [layer["macs"] for layer in layers], color="tab:blue", label="ME MACs")
        ax.bar(index, [layer["ve_elements"] for layer in layers], color="tab:orange", alpha=0.8,
               label="VE elements")
        ax.set_yscale("log")
        ax.set_title(f"{result['model']} (batch {result['batch']}): work per layer, in program order", fontsize=9)
        ax.set_xlabel("layer")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--repeats", type=int, default=3, help="compilations per network (median reported)")
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's hints
    cfg = get_config(args.config)
    results = [measure(name, build, batch, cfg, args.repeats) for name, build, batch in NETWORKS]
    if not all(result["equals_onnxruntime"] for result in results):
        raise SystemExit("a compiled network differs from onnxruntime")
    report = {**conditions(cfg, None), "networks": results}
    write("zoo_work", report)
    try_plot(plot, results, RESULTS / "zoo_work.png")


if __name__ == "__main__":
    main()
