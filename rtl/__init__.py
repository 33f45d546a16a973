"""Amaranth HDL components of the pNPU (matrix/vector engines, scratchpad, DMA, uTOp sequencer).

The RTL reads every hardware number from :class:`tcloud.isa.ArchConfig` and derives its decoder from
the ISA table. :data:`SOURCE_DIGEST` identifies the RTL and ISA sources as imported by this process
(the Verilator model cache is keyed by it, so a model is never reused for other sources).
"""

import hashlib
from pathlib import Path

import tcloud.isa

from . import arbiter, decode, dma, engine, hbm, matrix_engine, pnpu, scratchpad, systolic, vector_alu  # noqa: F401
from .engine import abort_bound, harvest_cost_for, reclaim_bound
from .pnpu import PNPU

__all__ = ["PNPU", "abort_bound", "reclaim_bound", "harvest_cost_for", "SOURCE_DIGEST"]


def _sources_digest():
    digest = hashlib.sha256()
    for package_dir in (Path(tcloud.isa.__file__).parent, Path(__file__).parent):
        for path in sorted(package_dir.glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


SOURCE_DIGEST = _sources_digest()
