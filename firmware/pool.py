"""Max pooling of int8 NHWC activations on the vector engines.

For a block of output rows of one image, one DMA uTOp copies the input rows the block's windows
cover (with their border: a padded max pool expects the source's border to hold -128, which never
wins a max) into the scratchpad; one VE uTOp per output row starts from the window's first tap
(``ve.copy``) and folds in the others (``ve.max``), each instruction covering the whole output row:
``ve.shape`` steps the destination by one pixel and the tap by ``stride`` pixels. One DMA uTOp
stores the block. Buffers are double-buffered, so loads, maxima and stores of consecutive blocks
overlap.
"""

from tcloud.isa import EngineClass, Instr
from tcloud.isa.table import field_max

from .program import DeferredStores, FirmwareError

_MAX_DMA_ROWS = field_max("dma.load", "rows")


def maxpool_footprint(source, kernel, stride, out_width, rows):
    """Scratchpad bytes of :func:`emit_maxpool` with blocks of ``rows`` output rows."""
    in_rows = (rows - 1) * stride[0] + kernel[0]
    in_width = (out_width - 1) * stride[1] + kernel[1]
    return 2 * (in_rows * in_width + rows * out_width) * source.channels


def emit_maxpool(prog, source, dest, kernel, stride, pads, sram_bytes):
    """Append ``dest = maxpool(source)`` to ``prog``.

    Parameters
    ----------
    prog : ProgramBuilder
    source, dest : NHWC
        int8 activations with the same padded channel count; ``source``'s border covers ``pads``.
    kernel, stride : tuple of int
    pads : tuple of int
        ``(top, left, bottom, right)``.
    sram_bytes : int
        Scratchpad budget (from address 0).

    Returns
    -------
    int
        The scratchpad bytes used.

    Raises
    ------
    FirmwareError
        If even one output row's buffers exceed the budget, or the border is too small.
    """
    if any(p > b for p, b in zip(pads, source.border)):
        raise FirmwareError(f"max-pool padding {pads} exceeds the source's border {source.border}")
    cp, oh, ow = source.channels, dest.height, dest.width
    (kh, kw), (sy, sx) = kernel, stride
    rows = window_block_rows(kernel, stride, oh, lambda r: maxpool_footprint(source, kernel, stride, ow, r),
                             sram_bytes)
    footprint = maxpool_footprint(source, kernel, stride, ow, rows)
    if footprint > sram_bytes:
        raise FirmwareError(f"a max pool over {ow} output pixels of {cp} channels needs {footprint} bytes of "
                            f"scratchpad, the budget is {sram_bytes}")
    in_width = (ow - 1) * sx + kw
    in_bytes, out_bytes = ((rows - 1) * sy + kh) * in_width * cp, rows * ow * cp
    slots = [(slot * (in_bytes + out_bytes), slot * (in_bytes + out_bytes) + in_bytes) for slot in (0, 1)]

    def block_body(slot, first_row, block_rows):
        in_buf, out_buf = slot
        tap = lambda y, x: in_buf + (y * in_width + x) * cp  # noqa: E731
        body = []
        for r in range(block_rows):
            out = out_buf + r * ow * cp
            body += [Instr("ve.shape", rows=ow, dst_stride=cp, src1_stride=sx * cp, src2_stride=0),
                     Instr("ve.copy", dst=out, src=tap(r * sy, 0), n=cp, src_i8=1, dst_i8=1),
                     Instr("ve.shape", rows=ow, dst_stride=cp, src1_stride=cp, src2_stride=sx * cp)]
            body += [Instr("ve.max", dst=out, src1=out, src2=tap(r * sy + ky, kx), n=cp, src1_i8=1, src2_i8=1,
                           dst_i8=1) for ky in range(kh) for kx in range(kw) if (ky, kx) != (0, 0)]
        return body

    emit_window_blocks(prog, source, dest, kernel, stride, pads, rows, slots, block_body)
    return footprint


def window_block_rows(kernel, stride, out_rows, footprint, sram_bytes, max_rows=None):
    """Output rows per block of a windowed kernel: halved from ``min(out_rows, max_rows)`` until the
    block's ``footprint(rows)`` fits ``sram_bytes`` and one ``dma.load`` moves the input rows it covers
    (at least 1; the caller checks that one row fits)."""
    rows = out_rows if max_rows is None else max(1, min(out_rows, max_rows))
    while rows > 1 and (footprint(rows) > sram_bytes or (rows - 1) * stride[0] + kernel[0] > _MAX_DMA_ROWS):
        rows = (rows + 1) // 2
    return rows


def emit_window_blocks(prog, source, dest, kernel, stride, pads, rows, slots, block_body, setup=()):
    """Append a windowed kernel over blocks of ``rows`` output rows of each image.

    For each block, one DMA uTOp copies the input rows its windows cover (from the top-left corner
    of the first window, border included) into ``slot[0]`` of the block's slot, ``in_width =
    (dest.width - 1) · stride + kernel`` pixels per row; one VE uTOp runs ``block_body(slot,
    first_row, block_rows)`` (``first_row``: the block's first output row), which leaves the
    block's output pixels in ``slot[1]``; one DMA uTOp stores them. The two slots alternate, so
    consecutive blocks overlap.

    Parameters
    ----------
    prog : ProgramBuilder
    source, dest : NHWC
        Same padded channel count; ``source``'s border covers ``pads``.
    kernel, stride : tuple of int
    pads : tuple of int
        ``(top, left, bottom, right)``.
    rows : int
        Output rows per block (see :func:`window_block_rows`).
    slots : sequence of two tuples
        Scratchpad buffers of each slot: ``(input, output, ...)``.
    block_body : callable
        ``(slot, first_row, block_rows) -> list of Instr``: the VE instructions of one block.
    setup : sequence of UtopRef
        uTOps every VE uTOp waits for (e.g. the load of constants).
    """
    cp, oh, ow = source.channels, dest.height, dest.width
    (kh, kw), (sy, sx) = kernel, stride
    in_width = (ow - 1) * sx + kw
    ves, stores = [], DeferredStores(prog)
    blocks = [(b, oy0) for b in range(source.batch) for oy0 in range(0, oh, rows)]
    for index, (b, oy0) in enumerate(blocks):
        block_rows = min(rows, oh - oy0)
        slot = slots[index % 2]
        load = prog.utop(EngineClass.DMA, [Instr(
            "dma.load", sram=slot[0], hbm=source.pixel(b, oy0 * sy - pads[0], -pads[1]),
            rows=(block_rows - 1) * sy + kh, row_bytes=in_width * cp, hbm_stride=source.padded_width * cp,
            sram_stride=in_width * cp)], [ves[index - 2]] if index >= 2 else [])
        ves.append(prog.utop(EngineClass.VE, block_body(slot, oy0, block_rows),
                             list(setup) + [load, stores.reuse(index)]))
        stores.add(dest.store(slot[1], cp, (b * oh + oy0) * ow, block_rows * ow, 0, cp), [ves[-1]])
    stores.flush()
