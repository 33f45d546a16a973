"""HBM bandwidth of one DMA engine on the Verilator model, over HBM latencies.

One DMA uTOp loads (or stores) a contiguous tensor. ``streaming`` is the marginal bandwidth: the
difference in bytes between a large and a small transfer over the difference in cycles, so fixed
costs (the uTOp's dispatch and instruction fetches, the first round trip) cancel; ``end_to_end`` is
the large transfer's bytes over its whole run. Both are compared with the configured bandwidth
(``ArchConfig.hbm_bytes_per_cycle``). The HBM model is deterministic (no jitter, no backpressure
beyond the bandwidth), so the cycle counts of repeated runs are equal; the medians are over 3 runs
anyway and the wall time varies. Writes ``benchmarks/results/hbm_bandwidth.json`` and a PNG.
``python -m benchmarks.hbm_bandwidth [--config small] [--latencies 25 50 ...]``.
"""

import argparse
import statistics

import numpy as np

from tcloud.firmware import ProgramBuilder
from tcloud.isa import EngineClass, Instr, ProgramImage, Symbol, get_config
from tcloud.runtime import FunctionalDevice, run_image
from tcloud.runtime.execute import load_image, read_outputs
from tcloud.runtime.backends.verilator import VerilatorDevice

from .common import RESULTS, conditions, try_plot, write

ROW_BYTES = 4096
TARGET = 0.9


def transfer_image(config, direction, rows):
    """An image whose one DMA uTOp moves ``rows`` × :data:`ROW_BYTES` bytes in ``direction``."""
    size = rows * ROW_BYTES
    op = "dma.load" if direction == "load" else "dma.store"
    prog = ProgramBuilder()
    prog.utop(EngineClass.DMA, [Instr(op, sram=0, hbm=0, rows=rows, row_bytes=ROW_BYTES,
                                      sram_stride=ROW_BYTES, hbm_stride=ROW_BYTES)])
    code = prog.build(config)
    kind = "input" if direction == "load" else "output"
    symbols = [Symbol("T", kind, "i8", (rows, ROW_BYTES), 0, ROW_BYTES)]
    return ProgramImage.for_config(config, code, entry=size, hbm_bytes=size + len(code), sram_bytes=size,
                                   symbols=symbols)


def run_cycles(config, direction, rows, latency):
    """Cycles from ``ctx.start`` to ``halt`` of one transfer on Verilator (a store's data checked
    against the golden model)."""
    image = transfer_image(config, direction, rows)
    data = np.random.default_rng(rows).integers(-128, 128, (rows, ROW_BYTES), dtype=np.int8)
    inputs = {"T": data} if direction == "load" else {}
    device = VerilatorDevice(config, hbm_latency=latency)
    image = load_image(device, image, inputs)
    assert device.run()
    cycles = device.context(0).timing["run_cycles"]
    if direction == "store":
        expected, _ = run_image(FunctionalDevice(config), image, inputs)
        assert np.array_equal(read_outputs(device, image)["T"], expected["T"])
    return cycles


def measure(config, direction, latency, small_rows, large_rows, runs):
    moved = (large_rows - small_rows) * ROW_BYTES
    samples = [(run_cycles(config, direction, small_rows, latency), run_cycles(config, direction, large_rows, latency))
               for _ in range(runs)]
    small = statistics.median(s for s, _ in samples)
    large = statistics.median(l for _, l in samples)
    streaming = moved / (large - small)
    end_to_end = large_rows * ROW_BYTES / large
    peak = config.hbm_bytes_per_cycle
    return {"direction": direction, "hbm_latency": latency, "cycles_small": small, "cycles_large": large,
            "streaming_bytes_per_cycle": round(streaming, 3), "streaming_fraction": round(streaming / peak, 4),
            "end_to_end_bytes_per_cycle": round(end_to_end, 3), "end_to_end_fraction": round(end_to_end / peak, 4)}


def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for direction, marker, size in (("load", "o", 10), ("store", "s", 5)):  # sizes keep coinciding points visible
        points = [r for r in report["results"] if r["direction"] == direction]
        style = {"marker": marker, "markersize": size, "markerfacecolor": "none" if direction == "load" else None}
        ax.plot([r["hbm_latency"] for r in points], [r["streaming_bytes_per_cycle"] for r in points],
                label=f"{direction}, streaming", **style)
        ax.plot([r["hbm_latency"] for r in points], [r["end_to_end_bytes_per_cycle"] for r in points],
                linestyle=":", label=f"{direction}, end to end ({report['large_bytes'] // 1024} KiB)", **style)
    ax.axhline(report["configured_bytes_per_cycle"], color="grey", linestyle="--", label="configured bandwidth")
    ax.axvline(report["preset_hbm_latency"], color="grey", linestyle=":", label="preset latency")
    ax.set_xlabel("HBM latency (cycles)")
    ax.set_ylabel("bytes per cycle")
    ax.set_title(f"One DMA engine, {report['config']} (dma_outstanding {report['dma_outstanding']})")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--latencies", type=int, nargs="+", default=[25, 50, 100, 120, 200, 300, 400])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    cfg = get_config(args.config)
    large_rows = cfg.sram_bytes // 2 // ROW_BYTES
    small_rows = large_rows // 4
    recorded = conditions(cfg, {"hbm_latency": args.latencies, "hbm_jitter": 0, "hbm_accept_probability": 1.0,
                                "hbm_bytes_per_cycle": cfg.hbm_bytes_per_cycle})
    results = []
    for latency in args.latencies:
        for direction in ("load", "store"):
            results.append(measure(cfg, direction, latency, small_rows, large_rows, args.runs))
            r = results[-1]
            print(f"latency {latency:4d} {direction:5s}: streaming {r['streaming_bytes_per_cycle']:6.2f} B/cycle "
                  f"({r['streaming_fraction']:.1%}), end to end {r['end_to_end_fraction']:.1%}")
    at_preset = [r for r in results if r["hbm_latency"] == cfg.hbm_latency]
    report = {**recorded, "configured_bytes_per_cycle": cfg.hbm_bytes_per_cycle, "preset_hbm_latency": cfg.hbm_latency,
              "dma_outstanding": cfg.dma_outstanding, "large_bytes": large_rows * ROW_BYTES,
              "small_bytes": small_rows * ROW_BYTES, "runs": args.runs, "target_streaming_fraction": TARGET,
              "target_met_at_preset_latency": bool(at_preset) and all(r["streaming_fraction"] >= TARGET
                                                                       for r in at_preset),
              "results": results}
    path = write("hbm_bandwidth", report, args.out)
    try_plot(plot, report, path.with_suffix(".png") if args.out else RESULTS / "hbm_bandwidth.png")


if __name__ == "__main__":
    main()
