"""A BERT encoder layer and a DLRM on the pNPU: cycles and ME/VE busy time per layer, on Verilator.

Models (:mod:`tcloud.runtime.compiler.zoo.transformers`, seeded random weights, quantized by
onnxruntime in QDQ format): one BERT-base encoder layer (hidden 768, 12 heads, feed-forward 3072)
over a sequence of 128 tokens, batch 1, with its embeddings; and the zoo's DLRM (4 tables, batch 64).
Each is compiled for ``small``, checked against the golden model, and profiled on the Verilator RTL
(preset HBM timing). Reported per layer: cycles, array efficiency, ME/VE/DMA busy fractions; per
model: the ME:VE busy-time ratio, an input of the allocator (how many MEs per VE a tenant of this
model can use). Writes ``transformer_layers.json`` and ``transformer_layers.png``.
``python -m benchmarks.transformer_layers [--seq 128] [--config small]``.
"""

import argparse
import statistics
import time

import numpy as np

from tcloud.isa import get_config
from tcloud.runtime import compile
from tcloud.runtime.compiler.profile import profile
from tcloud.runtime.compiler.quantize import quantize, random_samples
from tcloud.runtime.compiler.zoo import transformers

from .common import RESULTS, conditions, try_plot, write


def models(seq):
    """``(name, float model, batch)`` of every measured model."""
    bert_layer = transformers.BertShape(layers=1, hidden=768, heads=12, ffn=3072, vocab=30522, max_positions=seq)
    return [("bert_base_layer", transformers.bert_encoder(bert_layer, seq=seq), 1),
            ("dlrm", transformers.dlrm(), 64)]


def measure(name, model, batch, cfg):
    quantized = quantize(model, "qdq", random_samples(model, count=4))
    seconds = []
    for _ in range(3):  # compile time: the median of 3; the cycles are deterministic (HBM without jitter)
        start = time.perf_counter()
        compiled = compile(quantized, cfg, batch=batch)
        seconds.append(time.perf_counter() - start)
    inputs = compiled.random_inputs(seed=1)
    expected = compiled.run(inputs)
    layers, total = profile(compiled, inputs, backend="verilator")
    actual = compiled.run(inputs, backend="verilator")
    if not all(np.array_equal(actual[k], expected[k]) for k in expected):
        raise SystemExit(f"{name}: Verilator differs from the golden model")
    busy = {cls: sum(layer.utilization[cls] * layer.cycles for layer in layers) for cls in ("me", "ve", "dma")}
    ratio = busy["me"] / busy["ve"] if busy["ve"] else None
    print(f"{name}: {len(layers)} layers, {total['cycles']:,} cycles; ME:VE busy time {ratio:.2f}")
    for layer in layers:
        u = layer.utilization
        print(f"  {layer.name[:30]:<30} {layer.op[:18]:<18} {layer.cycles:>10,}  array {layer.array_efficiency:6.1%}  "
              f"ME {u['me']:4.0%} VE {u['ve']:4.0%} DMA {u['dma']:4.0%}")
    return {"model": name, "batch": batch, "compile_seconds_median": round(statistics.median(seconds), 2),
            "compile_seconds": [round(s, 2) for s in seconds], "cycles": total["cycles"],
            "setup_cycles": total["setup_cycles"], "utilization": total["utilization"],
            "busy_cycles": {cls: round(value) for cls, value in busy.items()},
            "me_to_ve_busy_ratio": round(ratio, 3) if ratio else None,
            "layers": [{**layer.to_dict(), "planned": planned} for layer, planned in zip(layers, compiled.layers)]}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(10, 3.5 * len(results)))
    for ax, result in zip(np.atleast_1d(axes), results):
        layers = result["layers"]
        index = np.arange(len(layers))
        me = [layer["utilization"]["me"] * layer["cycles"] for layer in layers]
        ve = [layer["utilization"]["ve"] * layer["cycles"] for layer in layers]
        ax.bar(index - 0.2, me, width=0.4, label="ME busy cycles", color="tab:blue")
        ax.bar(index + 0.2, ve, width=0.4, label="VE busy cycles", color="tab:orange")
        ax.set_title(f"{result['model']} (batch {result['batch']}): {result['cycles']:,} cycles, "
                     f"ME:VE busy {result['me_to_ve_busy_ratio']}", fontsize=9)
        ax.set_xlabel("layer (program order)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--seq", type=int, default=128, help="BERT sequence length (default: %(default)s)")
    args = parser.parse_args(argv)
    cfg = get_config(args.config)
    results = [measure(name, model, batch, cfg) for name, model, batch in models(args.seq)]
    report = {**conditions(cfg, {"hbm_latency": cfg.hbm_latency, "hbm_jitter": 0, "hbm_accept_probability": 1.0,
                                 "hbm_bytes_per_cycle": cfg.hbm_bytes_per_cycle}), "seq": args.seq, "models": results}
    write("transformer_layers", report)
    try_plot(plot, results, RESULTS / "transformer_layers.png")


if __name__ == "__main__":
    main()
