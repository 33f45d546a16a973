"""Table lookup over an int8 tensor on the vector engines (a quantized unary operator).

The 256-byte table is copied into the scratchpad once; then, block by block, a DMA uTOp brings rows
of the tensor in, a VE uTOp loads the table into the engine (``ve.lutload``; a table lives only for
its uTOp) and maps the block in place (``ve.lut``), and a DMA uTOp stores it, optionally into
columns further right (a Concat's input). Without a table the blocks are only copied. Buffers are
double-buffered (rows that would fit one block make two, so two VEs can share them).
"""

from tcloud.isa import EngineClass, Instr
from tcloud.isa.table import LUT_BYTES, field_max

from .program import DeferredStores, FirmwareError

_MAX_ROWS = min(field_max("ve.shape", "rows"), field_max("dma.load", "rows"))


def emit_lookup(prog, source, dest, rows, cols, table, sram_bytes, column=0):
    """Append ``dest[:, column:column + cols] = table[source]`` (elementwise, int8) to ``prog``.

    Parameters
    ----------
    prog : ProgramBuilder
    source, dest : layouts with ``load`` / ``store`` (``DenseMatrix``, ``NHWC``)
        ``rows`` rows of ``cols`` int8 values.
    rows, cols : int
    table : DenseMatrix or None
        The 256 output bytes, indexed by the input byte; ``None``: a plain copy (DMA only).
    sram_bytes : int
    column : int
        First column of ``dest`` written (a multiple of ``WORD_BYTES``).

    Returns
    -------
    int
        The scratchpad bytes used.
    """
    stride = -(-cols // 4) * 4
    lut_bytes = 0 if table is None else LUT_BYTES
    block = min(-(-rows // 2), _MAX_ROWS, max(1, (sram_bytes - lut_bytes) // (2 * stride)))
    used = lut_bytes + 2 * block * stride
    if used > sram_bytes:
        raise FirmwareError(f"a table lookup over rows of {cols} bytes needs {used} bytes of scratchpad, the "
                            f"budget is {sram_bytes}")
    buffers = [lut_bytes, lut_bytes + block * stride]
    setup = None if table is None else prog.utop(EngineClass.DMA, table.load(0, 0, 0, 1, 0, LUT_BYTES))
    stores = DeferredStores(prog)
    for index, r0 in enumerate(range(0, rows, block)):
        count, buf = min(block, rows - r0), buffers[index % 2]
        ready = prog.utop(EngineClass.DMA, source.load(buf, stride, r0, count, 0, cols), [stores.reuse(index)])
        if table is not None:
            ready = prog.utop(EngineClass.VE, [
                Instr("ve.lutload", src=0),
                Instr("ve.shape", rows=count, dst_stride=stride, src1_stride=stride, src2_stride=0),
                Instr("ve.lut", dst=buf, src=buf, n=cols)], [setup, ready])
        stores.add(dest.store(buf, stride, r0, count, column, cols), [ready])
    stores.flush()
    return used
