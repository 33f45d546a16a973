"""Transpose of an int8 matrix ``[N, F] → [F, N]`` on a vector engine.

Every address and stride of the ISA is a multiple of a word (``WORD_BYTES``), so no instruction
steps from one int8 element to the next in a column. The kernel therefore widens the matrix to one
int32 word per element (``ve.copy``), where a column *is* word-strided: one ``ve.copy`` per output
row gathers a source column (``ve.shape`` steps the source by a row and the destination by a word),
and a last ``ve.copy`` narrows the result back to int8 (exact: the values are int8). One DMA uTOp
loads the matrix, one VE uTOp transposes it, one DMA uTOp stores it.
"""

from tcloud.isa import EngineClass, Instr
from tcloud.isa.table import WORD_BYTES, field_max

from .program import FirmwareError

_MAX_BODY = field_max("utop", "len")
_MAX_ROWS = min(field_max("ve.shape", "rows"), field_max("dma.load", "rows"))


def _up(value):
    return -(-value // WORD_BYTES) * WORD_BYTES


def transpose_footprint(rows, width, columns):
    """Scratchpad bytes of :func:`emit_transpose` for ``rows`` source rows of ``width`` bytes and
    ``columns`` output rows."""
    return 5 * rows * width + 5 * columns * _up(rows)


def emit_transpose(prog, source, dest, rows, width, columns, sram_bytes):
    """Append ``dest[f][r] = source[r][columns[f]]`` to ``prog``.

    Parameters
    ----------
    prog : ProgramBuilder
    source, dest : DenseMatrix
        int8 ``[rows, width]`` (``width`` a multiple of ``WORD_BYTES``) and ``[len(columns), ≥ rows]``.
    rows, width : int
    columns : sequence of int
        The source column of each output row (a feature map: padding columns are skipped).
    sram_bytes : int

    Returns
    -------
    int
        The scratchpad bytes used.

    Raises
    ------
    FirmwareError
        If the matrix does not fit the budget, one uTOp or the vector engine's rows.
    """
    count = len(columns)
    footprint = transpose_footprint(rows, width, count)
    if footprint > sram_bytes or count + 5 > _MAX_BODY or max(rows, count) > _MAX_ROWS:
        raise FirmwareError(f"a transpose of a {rows} × {width} int8 matrix into {count} rows needs {footprint} "
                            f"bytes of scratchpad (budget {sram_bytes}), {count + 5} VE instructions (at most "
                            f"{_MAX_BODY}) and at most {_MAX_ROWS} rows each way")
    out_width = _up(rows)
    narrow, words = 0, rows * width
    gathered = words + 4 * rows * width
    result = gathered + 4 * count * out_width
    load = prog.utop(EngineClass.DMA, source.load(narrow, width, 0, rows, 0, width))
    body = [Instr("ve.shape", rows=rows, dst_stride=4 * width, src1_stride=width, src2_stride=0),
            Instr("ve.copy", dst=words, src=narrow, n=width, src_i8=1),
            Instr("ve.shape", rows=rows, dst_stride=4, src1_stride=4 * width, src2_stride=0)]
    body += [Instr("ve.copy", dst=gathered + 4 * f * out_width, src=words + 4 * column, n=1)
             for f, column in enumerate(columns)]
    body += [Instr("ve.shape", rows=count, dst_stride=out_width, src1_stride=4 * out_width, src2_stride=0),
             Instr("ve.copy", dst=result, src=gathered, n=rows, dst_i8=1)]
    ve = prog.utop(EngineClass.VE, body, [load])
    prog.utop(EngineClass.DMA, dest.store(result, out_width, 0, count, 0, rows), [ve])
    return footprint
