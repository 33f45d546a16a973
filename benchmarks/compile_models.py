"""Compiled models on the pNPU: compile time, and cycles and array efficiency per layer on Verilator.

Models: the digits CNN and MLP (committed, int8 QDQ) and the convolution layers of a ResNet-50
stage-1 bottleneck block and of its stem (each layer a one-operator model built with the zoo's
``conv_bn`` and quantized by onnxruntime; the block as a whole needs ``Add``, which the compiler
does not lower yet). Every run's outputs are checked against the golden model. Target: every
conv/GEMM layer with at least 64 output channels reaches 70 % array efficiency (MACs over
``me_count × rows × cols`` per cycle). A layer's cycles are its own: the host's context setup
(``ctx.scrub`` clears the model's whole HBM window before it starts) is reported apart
(``setup_cycles``). Busy fractions are over the layer's cycles.
Writes ``compile_models.json`` and ``compile_models.png``.
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
    "The ResNet layers are matrix-engine-bound: the MEs are busy 98-99 % of each layer's cycles. An ME uTOp "
    "streams its mb rows once per 8-deep k tile, plus once to load its accumulators (they hold the bias the DMA "
    "put there) and once to write them back, plus about 8 cycles per k tile and an HBM round trip to fetch its "
    "first instruction. The expand 1x1 (K = 64: 8 k tiles) thus pays 10 row passes for 8 and cannot pass about "
    "75 %; its requantization (ve.requantf, 5 VE steps per 8 outputs) keeps both VEs 93 % busy too. The stem's "
    "3 input channels are padded to 4 (a DMA word), so a quarter of its K = 7x7x4 multiplies zeros: at most "
    "about 66 %. The front end fetches each uTOp header from HBM before it issues the uTOp (one uTOp per HBM "
    "round trip) and each DMA instruction costs about 2.6 HBM latencies before its beats; the schedule and the "
    "planner hide both in the ResNet layers. Thin convolutions (digits: 1-8 channels) gather their im2col rows "
    "in many small transfers and are DMA-bound (DMA busy 92-99 %) with most array columns idle; the digits "
    "MLP's layers (360 rows) are short enough that filling and draining the pipeline dominates.")


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
        setup = total["setup_cycles"]
        rows = []
        for layer, planned in zip(layers, compiled.layers):
            channels = planned["output_shape"][1]
            rows.append({**layer.to_dict(), "output_channels": channels, "gemm": planned["gemm"],
                         "held_to_target": planned["gemm"] is not None and channels >= WIDE,
                         "meets_target": layer.array_efficiency >= TARGET})
        results.append({"model": name, "batch": batch, "compile_seconds_median": round(statistics.median(seconds), 3),
                        "compile_seconds": [round(s, 3) for s in seconds], "cycles": total["cycles"],
                        "setup_cycles": setup, "utilization": total["utilization"], "layers": rows})
        print(f"{name}: compiled in {statistics.median(seconds):.2f} s, {total['cycles']:,} cycles "
              f"after {setup:,} configuring and scrubbing the context")
        for row in rows:
            flag = "" if not row["held_to_target"] else (" (target met)" if row["meets_target"] else " (BELOW target)")
            busy = ", ".join(f"{cls.upper()} {value:.0%}" for cls, value in row["utilization"].items())
            print(f"  {row['name']:<28} {row['op']:<18} {row['cycles']:>10,} cycles  array "
                  f"{row['array_efficiency']:6.1%} (busy {busy}){flag}")
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
