"""Where compiled artefacts (Verilator models, the perf backend's compiled core) are cached."""

import os
from pathlib import Path


def cache_root():
    """``$TCLOUD_CACHE`` or ``$XDG_CACHE_HOME/tcloud`` (``~/.cache/tcloud``)."""
    return Path(os.environ.get("TCLOUD_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "tcloud")
