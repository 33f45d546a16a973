"""Compiled models on the pNPU: compile time, and cycles and array efficiency per layer on Verilator.

Models: the digits CNN and MLP (committed, int8 QDQ) and the convolution layers of a ResNet-50
stage-1 bottleneck block and of its stem (each layer a one-operator model built with the zoo's
``conv_bn`` and quantized by onnxruntime; the block as a whole needs ``Add``, which the compiler
does not lower yet). Every run's outputs are checked against the golden model. Target: every
conv/GEMM layer with at least 64 output channels reaches 70 % array efficiency (MACs over
``me_count × rows × cols`` per cycle). Writes ``compile_models.json`` and ``compile_models.png``.
``python -m benchmarks.compile_models [--config small] [--repeats 3]``.
"""

import argparse
import logging
import statistics
import time

import numpy as np

from tcloud.isa import get_config
from tcloud.runtime import compile
from tcloud.runtime.compiler.profile import profile
from tcloud.runtime.compiler.quantize import quantize, random_samples
from tcloud.runtime.compiler.zoo import digits
from tcloud.runtime.compiler.zoo.builders import Graph, conv_bn

from .common import RESULTS, conditions, try_plot, write

TARGET = 0.70
WIDE = 64
"""Layers with at least this many output channels are held to :data:`TARGET`."""

RESNET_LAYERS = (  # name, input channels, output channels, kernel, stride, input size
    ("stem_conv7x7", 3, 64, 7, 2, 224),
    ("block_reduce_1x1", 256, 64, 1, 1, 56),
    ("block_conv3x3", 64, 64, 3, 1, 56),
    ("block_expand_1x1", 64, 256, 1, 1, 56),
)

WHERE_THE_REST_GOES = (
    "A convolution is a GEMM whose A rows (output pixels) the DMA gathers from the NHWC activation, one "
    "2-D transfer per run of output pixels and kernel row, so each output pixel re-reads KH x KW input "
    "pixels from HBM (im2col traffic, K x m bytes per pass over N blocks); when that traffic divided by "
    "the HBM's bytes per cycle exceeds the MACs divided by the array's MACs per cycle the layer is "
    "HBM-bound. Each GEMM block pays the accumulator write-back, the epilogue (bias, ReLU, requantization "
    "on a VE) and the store; layers are separated by a fence, so the pipeline drains between layers. "
    "Layers with few output channels (digits) leave most of the array's columns idle.")


def conv_model(name, cin, cout, kernel, stride, size, seed=0):
    g = Graph(name, seed)
    y = conv_bn(g, "input", cin, cout, kernel, stride)
    out = (size + 2 * (kernel // 2) - kernel) // stride + 1
    return g.model([("input", ["N", cin, size, size])], [(y, ["N", cout, out, out])], name)


def models(config):
    """``(name, int8 model, batch, inputs)`` of every measured model."""
    rng = np.random.default_rng(0)
    out = []
    for name, batch in (("digits_cnn_qdq", 64), ("digits_mlp_qdq", 360)):
        x, _ = digits.held_out(name)
        out.append((name, digits.load(name), batch, {"input": x[:batch]}))
    for name, cin, cout, kernel, stride, size in RESNET_LAYERS:
        model = conv_model(name, cin, cout, kernel, stride, size)
        quantized = quantize(model, "qdq", random_samples(model, count=4))
        out.append((f"resnet50_{name}", quantized, 1,
                    {"input": rng.standard_normal((1, cin, size, size)).astype(np.float32)}))
    return out


def measure(config, repeats):
    cfg = get_config(config)
    results = []
    for name, model, batch, inputs in models(cfg):
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            compiled = compile(model, cfg, batch=batch)
            seconds.append(time.perf_counter() - start)
        expected = compiled.run(inputs)
        layers, total = profile(compiled, inputs, backend="verilator")
        actual = compiled.run(inputs, backend="verilator")
        assert all(np.array_equal(actual[k], expected[k]) for k in expected), f"{name}: Verilator != golden model"
        rows = []
        for layer, planned in zip(layers, compiled.layers):
            channels = planned["output_shape"][1]
            rows.append({**layer.to_dict(), "output_channels": channels, "gemm": planned["gemm"],
                         "held_to_target": planned["gemm"] is not None and channels >= WIDE,
                         "meets_target": layer.array_efficiency >= TARGET})
        results.append({"model": name, "batch": batch, "compile_seconds_median": round(statistics.median(seconds), 3),
                        "compile_seconds": [round(s, 3) for s in seconds], "cycles": total["cycles"],
                        "utilization": total["utilization"], "layers": rows})
        print(f"{name}: compiled in {statistics.median(seconds):.2f} s, {total['cycles']:,} cycles")
        for row in rows:
            flag = "" if not row["held_to_target"] else (" (target met)" if row["meets_target"] else " (BELOW target)")
            print(f"  {row['name']:<28} {row['op']:<18} {row['cycles']:>10,} cycles  array "
                  f"{row['array_efficiency']:6.1%}{flag}")
    return results


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, values, colours = [], [], []
    for result in results:
        for row in result["layers"]:
            if row["gemm"] is None:
                continue
            names.append(f"{result['model']}: {row['name']}")
            values.append(row["array_efficiency"])
            colours.append("tab:blue" if row["held_to_target"] else "tab:gray")
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(names) + 1.5))
    ax.barh(names, values, color=colours)
    ax.axvline(TARGET, color="tab:red", linestyle="--", label=f"target {TARGET:.0%} (layers with >= {WIDE} "
                                                                f"output channels, blue)")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("array efficiency (MACs / peak)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--repeats", type=int, default=3, help="compilations per model (median reported)")
    args = parser.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's hints
    cfg = get_config(args.config)
    results = measure(cfg, args.repeats)
    held = [row for result in results for row in result["layers"] if row["held_to_target"]]
    report = {**conditions(cfg, {"hbm_latency": cfg.hbm_latency, "hbm_jitter": 0, "hbm_accept_probability": 1.0,
                                 "hbm_bytes_per_cycle": cfg.hbm_bytes_per_cycle}),
              "target_array_efficiency": TARGET, "target_applies_to_output_channels_at_least": WIDE,
              "layers_held_to_target": len(held), "layers_meeting_target": sum(r["meets_target"] for r in held),
              "models": results, "where_the_rest_goes": WHERE_THE_REST_GOES}
    write("compile_models", report)
    try_plot(plot, results, RESULTS / "compile_models.png")


if __name__ == "__main__":
    main()
