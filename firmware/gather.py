"""Embedding lookups: rows of an HBM table selected by int32 indices (``dma.gather``).

DLRM, NCF and BERT look up their sparse features and tokens this way. The table stays in HBM; block
by block, a DMA uTOp loads a block of indices into the scratchpad and gathers the rows they select
behind them, and a second DMA uTOp stores the rows to the output. Buffers are double-buffered. The
hardware checks every index against the tenant's HBM window; an index past the table but inside the
window reads whatever follows the table, so the caller keeps indices below the table's row count
(as ONNX Gather requires).
"""

from dataclasses import dataclass

import numpy as np

from tcloud.isa import EngineClass, Instr, ProgramImage, Symbol, get_config
from tcloud.isa.table import WORD_BYTES, field_max

from .gemm import DenseMatrix
from .program import DeferredStores, FirmwareError, ProgramBuilder

_MAX_ROWS = field_max("dma.gather", "rows")
_ALIGN = 64


def _up(value, multiple):
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class EmbeddingTable:
    """A dense table in HBM: row ``i`` is the ``row_bytes`` bytes at ``hbm + i * row_bytes``.

    Attributes
    ----------
    hbm : int
        HBM offset of row 0.
    rows : int
        Rows of the table.
    row_bytes : int
        Bytes per row, a multiple of ``WORD_BYTES``.
    """

    hbm: int
    rows: int
    row_bytes: int

    def __post_init__(self):
        if self.rows < 1 or self.row_bytes < WORD_BYTES or self.row_bytes % WORD_BYTES:
            raise FirmwareError(f"an embedding table needs rows >= 1 and row_bytes a positive multiple of "
                                f"{WORD_BYTES}, got rows={self.rows!r}, row_bytes={self.row_bytes!r}")

    def gather(self, sram, sram_stride, idx, count):
        """DMA instructions copying the rows selected by the ``count`` int32 indices at scratchpad ``idx``
        to scratchpad ``sram``, ``sram_stride`` bytes apart."""
        return [Instr("dma.gather", sram=sram + r0 * sram_stride, hbm=self.hbm, idx=idx + WORD_BYTES * r0,
                      rows=min(_MAX_ROWS, count - r0), row_bytes=self.row_bytes, sram_stride=sram_stride)
                for r0 in range(0, count, _MAX_ROWS)]


def gather_reference(table, indices):
    """NumPy reference of an embedding lookup: row ``r`` of the result is ``table[indices[r]]``.

    Raises
    ------
    IndexError
        If an index is negative or not below the table's row count.
    """
    table, indices = np.asarray(table), np.asarray(indices, dtype=np.int64)
    if ((indices < 0) | (indices >= len(table))).any():
        raise IndexError(f"gather indices outside a table of {len(table)} rows: {indices.tolist()}")
    return table[indices]


def emit_gather(prog, table, indices, dest, count, sram_bytes, deps=()):
    """Append ``dest[r] = table[indices[r]]`` for ``r < count`` to ``prog``.

    Parameters
    ----------
    prog : ProgramBuilder
    table : EmbeddingTable
    indices : int
        HBM offset of the ``count`` int32 indices.
    dest : DenseMatrix or a layout with the same ``store``
        ``count`` rows of ``table.row_bytes`` bytes.
    count : int
    sram_bytes : int
        Scratchpad budget, from address 0.
    deps : sequence of UtopRef
        uTOps that must complete before the first index or row is read.

    Returns
    -------
    list of UtopRef
        The stores of the output blocks.
    """
    per_row = table.row_bytes + WORD_BYTES
    block = min(count, _MAX_ROWS, sram_bytes // (2 * per_row))
    if block < 1:
        raise FirmwareError(f"gathering rows of {table.row_bytes} bytes needs {2 * per_row} bytes of scratchpad, "
                            f"the budget is {sram_bytes}")
    buffers = [0, block * per_row]
    stores = DeferredStores(prog)
    for index, r0 in enumerate(range(0, count, block)):
        rows, idx = min(block, count - r0), buffers[index % 2]
        rows_at = idx + block * WORD_BYTES
        body = [Instr("dma.load", sram=idx, hbm=indices + WORD_BYTES * r0, rows=1, row_bytes=WORD_BYTES * rows)]
        body += table.gather(rows_at, table.row_bytes, idx, rows)
        ready = prog.utop(EngineClass.DMA, body, list(deps) + [stores.reuse(index)])
        stores.add(dest.store(rows_at, table.row_bytes, r0, rows, 0, table.row_bytes), [ready])
    return stores.flush()


def embedding_lookup(config, table_rows, row_bytes, count, *, sram_bytes=None):
    """Lower an embedding lookup ``Y = T[I]`` to a program image.

    Parameters
    ----------
    config : ArchConfig or str
    table_rows, row_bytes : int
        Shape of the int8 table ``T`` (``row_bytes`` a multiple of ``WORD_BYTES``).
    count : int
        Indices in ``I``.
    sram_bytes : int, optional
        Scratchpad budget (default: the whole scratchpad).

    Returns
    -------
    ProgramImage
        Inputs ``T`` (i8, table_rows × row_bytes) and ``I`` (i32, count); output ``Y`` (i8, count ×
        row_bytes).
    """
    cfg = get_config(config)
    if count < 1:
        raise FirmwareError(f"embedding_lookup: count must be positive, got {count!r}")
    table = EmbeddingTable(0, table_rows, row_bytes)
    off_i = _up(table_rows * row_bytes, _ALIGN)
    off_y = off_i + _up(WORD_BYTES * count, _ALIGN)
    code_at = off_y + _up(count * row_bytes, _ALIGN)
    budget = sram_bytes or cfg.sram_bytes
    prog = ProgramBuilder()
    emit_gather(prog, table, off_i, DenseMatrix(off_y, row_bytes), count, budget)
    code = prog.build(cfg)
    symbols = [Symbol("T", "input", "i8", (table_rows, row_bytes), 0, row_bytes),
               Symbol("I", "input", "i32", (count,), off_i, WORD_BYTES * count),
               Symbol("Y", "output", "i8", (count, row_bytes), off_y, row_bytes)]
    return ProgramImage.for_config(cfg, code, entry=code_at, hbm_bytes=_up(code_at + len(code), _ALIGN),
                                   sram_bytes=budget, symbols=symbols)
