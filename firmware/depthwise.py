"""Depthwise convolution (one filter per channel) of int8 NHWC activations on the vector engines.

A depthwise layer has too little reuse for a systolic array (one input channel per output
channel), so, as on other NPUs, it runs on the vector engines: for a block of output rows of one
image, one DMA uTOp copies the covered input rows (with the border that holds the zero point) into
the scratchpad; one VE uTOp per block computes, for each output row, ``acc = Σ_taps x(tap) · w(tap)``
over whole rows of pixels × channels (``ve.mul`` of the int8 input by the tap's int32 weight row,
``ve.add`` into the int32 accumulators; ``ve.shape`` steps the input by ``stride`` pixels), adds
the folded bias, applies ReLU and requantizes; one DMA uTOp stores the block. Weights and bias are
loaded once. Buffers are double-buffered.
"""

from tcloud.isa import EngineClass, Instr
from tcloud.isa.table import field_max

from .program import DeferredStores, FirmwareError

_MAX_BODY = field_max("utop", "len")
_MAX_DMA_ROWS = field_max("dma.load", "rows")


def _instructions_per_row(taps, relu):
    return 2 + 4 * (taps - 1) + 4 + relu


def depthwise_footprint(channels, kernel, stride, out_width, rows):
    """Scratchpad bytes of :func:`emit_depthwise` with blocks of ``rows`` output rows."""
    in_rows = (rows - 1) * stride[0] + kernel[0]
    in_width = (out_width - 1) * stride[1] + kernel[1]
    per_slot = in_rows * in_width * channels + 2 * out_width * 4 * channels + rows * out_width * channels
    return (kernel[0] * kernel[1] + 2) * 4 * channels + 2 * per_slot


def emit_depthwise(prog, source, dest, weights, bias, kernel, stride, pads, requant, sram_bytes, relu=False):
    """Append ``dest = requant(relu?(depthwise(source, weights) + bias))`` to ``prog``.

    Parameters
    ----------
    prog : ProgramBuilder
    source, dest : NHWC
        int8 activations with the same padded channel count ``C``; ``source``'s border covers
        ``pads`` and holds the input zero point.
    weights : DenseMatrix
        int32 ``[KH·KW, C]``: one row of per-channel weights per tap (row ``ky·KW + kx``).
    bias : DenseMatrix
        int32 ``[C]`` (with the input zero point folded in: ``bias − z_x · Σ_taps w``).
    kernel, stride : tuple of int
    pads : tuple of int
        ``(top, left, bottom, right)``.
    requant : ScaleRow
        One binary32 scale per channel (``ve.requantf``) and the output zero point.
    sram_bytes : int
    relu : bool

    Returns
    -------
    int
        The scratchpad bytes used.

    Raises
    ------
    FirmwareError
        If one output row does not fit the budget or the border is smaller than the padding.
    """
    if any(p > b for p, b in zip(pads, source.border)):
        raise FirmwareError(f"depthwise padding {pads} exceeds the source's border {source.border}")
    cp, oh, ow = source.channels, dest.height, dest.width
    (kh, kw), (sy, sx) = kernel, stride
    taps = kh * kw
    per_row = _instructions_per_row(taps, relu)
    rows = min(oh, _MAX_BODY // per_row)
    while rows > 1 and (depthwise_footprint(cp, kernel, stride, ow, rows) > sram_bytes
                        or (rows - 1) * sy + kh > _MAX_DMA_ROWS):
        rows = (rows + 1) // 2
    footprint = depthwise_footprint(cp, kernel, stride, ow, rows)
    if footprint > sram_bytes:
        raise FirmwareError(f"a depthwise convolution over {ow} output pixels of {cp} channels needs {footprint} "
                            f"bytes of scratchpad, the budget is {sram_bytes}")
    in_width = (ow - 1) * sx + kw
    in_bytes = ((rows - 1) * sy + kh) * in_width * cp
    acc_bytes, out_bytes = ow * 4 * cp, rows * ow * cp
    w_buf, bias_buf = 0, taps * 4 * cp
    scale_buf = bias_buf + 4 * cp
    base = scale_buf + 4 * cp
    slot_bytes = in_bytes + 2 * acc_bytes + out_bytes
    slots = []
    for slot in (0, 1):
        start = base + slot * slot_bytes
        slots.append((start, start + in_bytes, start + in_bytes + acc_bytes, start + in_bytes + 2 * acc_bytes))
    params = prog.utop(EngineClass.DMA, weights.load(w_buf, 4 * cp, 0, taps, 0, cp) + bias.load(bias_buf, 0, 0, 1, 0, cp)
                       + requant.scales.load(scale_buf, 0, 0, 1, 0, cp))
    ves, stores = [], DeferredStores(prog)
    blocks = [(b, oy0) for b in range(source.batch) for oy0 in range(0, oh, rows)]
    for index, (b, oy0) in enumerate(blocks):
        block_rows = min(rows, oh - oy0)
        in_buf, acc, tmp, out_buf = slots[index % 2]
        load = prog.utop(EngineClass.DMA, [Instr(
            "dma.load", sram=in_buf, hbm=source.pixel(b, oy0 * sy - pads[0], -pads[1]),
            rows=(block_rows - 1) * sy + kh, row_bytes=in_width * cp, hbm_stride=source.padded_width * cp,
            sram_stride=in_width * cp)], [ves[index - 2]] if index >= 2 else [])
        gather = Instr("ve.shape", rows=ow, dst_stride=4 * cp, src1_stride=sx * cp, src2_stride=0)
        accumulate = Instr("ve.shape", rows=ow, dst_stride=4 * cp, src1_stride=4 * cp, src2_stride=4 * cp)
        body = []
        for r in range(block_rows):
            def tap(t, row=r):
                ky, kx = divmod(t, kw)
                return in_buf + ((row * sy + ky) * in_width + kx) * cp

            body += [gather, Instr("ve.mul", dst=acc, src1=tap(0), src2=w_buf, n=cp, src1_i8=1)]
            for t in range(1, taps):
                body += [gather, Instr("ve.mul", dst=tmp, src1=tap(t), src2=w_buf + t * 4 * cp, n=cp, src1_i8=1),
                         accumulate, Instr("ve.add", dst=acc, src1=acc, src2=tmp, n=cp)]
            body += [Instr("ve.shape", rows=ow, dst_stride=4 * cp, src1_stride=4 * cp, src2_stride=0),
                     Instr("ve.add", dst=acc, src1=acc, src2=bias_buf, n=cp)]
            if relu:
                body.append(Instr("ve.relu", dst=acc, src=acc, n=cp))
            body += [Instr("ve.shape", rows=ow, dst_stride=cp, src1_stride=4 * cp, src2_stride=0),
                     Instr("ve.requantf", dst=out_buf + r * ow * cp, src1=acc, src2=scale_buf, n=cp,
                           zp=requant.zero_point)]
        ves.append(prog.utop(EngineClass.VE, body, [params, load, stores.reuse(index)]))
        stores.add(dest.store(out_buf, cp, (b * oh + oy0) * ow, block_rows * ow, 0, cp), [ves[-1]])
    stores.flush()
    return footprint
