"""Helpers shared by the benchmarks: machine description and JSON output."""

import argparse
import json
import math
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

COMMITTED = Path(__file__).parent / "results"
RESULTS = Path(os.environ.get("TCLOUD_BENCH_RESULTS") or COMMITTED)
"""Where results go: ``$TCLOUD_BENCH_RESULTS`` (``make bench`` sets a fresh directory) or the
committed ``benchmarks/results``."""


def machine():
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__}


def commit():
    """The git commit of the code measured and whether the tracked files outside the results differ
    from it (``None`` for both outside a git checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                     ":(top,exclude)benchmarks/results"],  # results are outputs, not inputs
                                    cwd=Path(__file__).parent, capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        head, dirty = None, None
    return {"commit": head, "uncommitted_changes": dirty}


def conditions(config, hbm_timing):
    """What a measurement depends on besides the code: the commit, the config and the HBM timing."""
    from tcloud.rtl import SOURCE_DIGEST
    return {**commit(), "rtl_source_digest": SOURCE_DIGEST, "config": config.name,
            "config_fingerprint": config.fingerprint().hex(), "hbm_timing": hbm_timing}


NULLS = ("null stands for a number that was not finite, which standard JSON cannot hold: in the cluster "
         "results a latency percentile (p50, p99) that falls among dropped requests (they count as infinitely "
         "late) or of no requests at all, or a ratio to a zero throughput")
"""The meaning of ``null`` numbers, written as ``nulls`` in a report that has any."""


def _finite(value, replaced):
    """``value`` with every non-finite float (infinity, NaN) replaced by ``None``, counted in ``replaced``."""
    if isinstance(value, dict):
        return {k: _finite(v, replaced) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, replaced) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        replaced.append(value)
        return None
    return value


def write(name, report, out=None):
    """Write ``report`` (a dict) as ``<RESULTS>/<name>.json`` (or ``out``) and return the path.

    Standard JSON: infinities and NaNs (which Python's ``json`` would write as the non-standard
    ``Infinity`` and ``NaN``) become ``null``, and the report then says so under ``nulls``
    (:data:`NULLS`)."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    replaced = []
    data = _finite({"benchmark": name, **machine(), **report}, replaced)
    if replaced:
        data["nulls"] = NULLS
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")
    return path


def per_config_args(doc, argv=None):
    """Parse ``--configs`` (presets to measure, default tiny and small) and ``--out`` for a benchmark
    whose module docstring is ``doc``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "small"])
    parser.add_argument("--out")
    return parser.parse_args(argv)


def try_plot(plot, *args):
    """Call ``plot(*args)``, or say how to get matplotlib when it is missing."""
    try:
        plot(*args)
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'); skipped the plot")
