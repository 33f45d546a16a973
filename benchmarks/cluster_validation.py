"""The batch simulator against the per-request SimPy simulation, alone: the ``validation`` rows of
``benchmarks.cluster_policies`` (one-shape and mixed-shape cases) in seconds, without its sweep.

Prints one line per model and case; ``--out`` also writes the rows as JSON (the sweep's JSON
records the same rows under ``validation`` when it is regenerated).
"""

import argparse
import json
import sys

from benchmarks.cluster_policies import validation


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tpu_like")
    parser.add_argument("--duration", type=float, default=2.0, help="simulated seconds (whole control intervals)")
    parser.add_argument("--out", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = validation(args.config, args.duration)
    for r in rows:
        print(f"{r['policy']:<7} {r['trace']:<8} load {r['load']:<4} {r['model']:<12} {'+'.join(sorted(set(r['shapes'])))}:"
              f" throughput {r['batch_throughput']:.1f} / {r['request_throughput']:.1f} ({100 * r['throughput_error']:.3f} %),"
              f" p99 {r['batch_p99'] * 1e3:.4f} / {r['request_p99'] * 1e3:.4f} ms ({100 * r['p99_error']:.3f} %),"
              f" dropped {r['batch_dropped']} / {r['request_dropped']}, in flight at the end {r['request_in_flight']},"
              f" binned differently {r['histogram_difference']:g}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
