"""Embedding lookups: rows of an int8 table in HBM gathered by int32 ids with ``dma.gather``.

Block by block, one DMA uTOp brings the ids into the scratchpad, a second gathers the rows they
select (``dma.gather``: the hardware checks every id's row against the context's HBM window), and a
third stores the rows to the output; buffers are double-buffered.
"""

from tcloud.isa import EngineClass, Instr
from tcloud.isa.table import WORD_BYTES, field_max

from .program import FirmwareError


def gather_footprint(row_bytes, rows):
    """Scratchpad bytes of :func:`emit_gather` with blocks of ``rows`` ids."""
    return 2 * rows * (WORD_BYTES + row_bytes)


def emit_gather(prog, ids, table, row_bytes, dest, count, sram_bytes):
    """Append ``dest[r] = table row ids[r]`` for ``count`` ids to ``prog``.

    Parameters
    ----------
    prog : ProgramBuilder
    ids : DenseMatrix
        The int32 ids, one per row (stride ``WORD_BYTES``).
    table : int
        HBM address of the table, rows ``row_bytes`` apart.
    row_bytes : int
        A multiple of ``WORD_BYTES``.
    dest : DenseMatrix or a layout with ``store``
        ``count`` rows of ``row_bytes``.
    count : int
    sram_bytes : int

    Returns
    -------
    int
        The scratchpad bytes used.

    Raises
    ------
    FirmwareError
        If one id's buffers exceed the budget.
    """
    most = min(field_max("dma.gather", "rows"), field_max("dma.load", "rows"))
    block = min(count, most, max(1, sram_bytes // (2 * (WORD_BYTES + row_bytes))))
    used = gather_footprint(row_bytes, block)
    if used > sram_bytes:
        raise FirmwareError(f"an embedding lookup of {row_bytes}-byte rows needs {used} bytes of scratchpad, the "
                            f"budget is {sram_bytes}")
    gathers, stores = [], []
    for index, r0 in enumerate(range(0, count, block)):
        rows = min(block, count - r0)
        base = (index % 2) * block * (WORD_BYTES + row_bytes)
        idx, out = base, base + block * WORD_BYTES
        load = prog.utop(EngineClass.DMA, ids.load(idx, WORD_BYTES, r0, rows, 0, WORD_BYTES),
                         [gathers[index - 2]] if index >= 2 else [])
        gathers.append(prog.utop(EngineClass.DMA, [Instr("dma.gather", sram=out, hbm=table, rows=rows,
                                                         row_bytes=row_bytes, idx=idx, sram_stride=row_bytes)],
                                 [load] + ([stores[index - 2]] if index >= 2 else [])))
        stores.append(prog.utop(EngineClass.DMA, dest.store(out, row_bytes, r0, rows, 0, row_bytes), [gathers[-1]]))
    return used
