"""Helpers shared by the benchmarks: machine description and JSON output."""

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
