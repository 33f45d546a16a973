"""Helpers shared by the benchmarks: machine description and JSON output."""

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def machine():
    return {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__}


def write(name, report, out=None):
    """Write ``report`` (a dict) as ``benchmarks/results/<name>.json`` (or ``out``) and return the path."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, **machine(), **report}, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def per_config_args(doc, argv=None):
    """Parse ``--configs`` (presets to measure, default tiny and small) and ``--out`` for a benchmark
    whose module docstring is ``doc``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "small"])
    parser.add_argument("--out")
    return parser.parse_args(argv)
