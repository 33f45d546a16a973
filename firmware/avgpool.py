"""Average pooling of int8/uint8 NHWC activations on the vector engines, in onnxruntime's float arithmetic.

onnxruntime's ``QLinearAveragePool`` (which its graph optimizer also makes of a QDQ AveragePool)
computes in binary32: ``v = fl(x_scale · (q − z_x))`` per input, ``s = fl(fl(v₀ + v₁) + …)`` over
the window's pixels inside the image, row by row, ``a = fl(s / count)``, ``t = fl(a / y_scale)``
and ``y = saturate(nearbyint(fl(t + z_y)))``. Every step is one binary32 operation, so
``ve.fma`` (one rounding, exact integer sources) reproduces it: the dequantization is one
``ve.fma`` of the exact int32 ``q − z_x`` by ``x_scale``; the sum adds the taps with ``R = 1.0``
(the border holds ``z_x``, whose ``+0.0`` leaves a sum unchanged); the last step adds the
zero-point row and rounds to int8/uint8. A division ``fl(a / b)`` is the quotient ``q = fl(a · y)``
with ``y = fl(1 / b)`` improved twice by Markstein's correction ``r = fma(−b, q, a)`` (exact),
``q = fma(r, y, q)``, which yields the correctly rounded quotient (Markstein 1990; the first
correction already does when ``q`` is within one ulp, the second covers the rest).

The blocking is :func:`~.pool.emit_window_blocks`'s: for each block of output rows one DMA uTOp
loads the covered input rows, one VE uTOp dequantizes them into binary32 words and computes each
output row (sums over whole rows of pixels × channels: ``ve.shape`` steps the tap by ``stride``
pixels), and one DMA uTOp stores the block. With ``count_include_pad`` off the divisor changes
near the left and right edges, so each output row is divided in runs of equal divisors.
"""

import numpy as np

from tcloud.isa import EngineClass, Instr
from tcloud.isa.table import FmaResult, FmaSource, field_max

from .binary import fp32_word
from .pool import emit_window_blocks, window_block_rows
from .program import FirmwareError

_MAX_BODY = field_max("utop", "len")
_MAX_ROW_BYTES = min(field_max("ve.shape", "dst_stride"), 4 * field_max("ve.fma", "n"))
_CORRECTIONS = 2


def divisor_runs(out_width, width, kernel, stride, pad_left, count_include_pad):
    """Runs ``(first, stop, columns)`` of output columns whose windows cover the same number of
    input columns (``kernel`` when padding counts, else only those inside ``0..width``)."""
    counts = []
    for ox in range(out_width):
        start = ox * stride - pad_left
        counts.append(kernel if count_include_pad else min(start + kernel, width) - max(start, 0))
    runs, first = [], 0
    for ox in range(1, out_width + 1):
        if ox == out_width or counts[ox] != counts[first]:
            runs.append((first, ox, counts[first]))
            first = ox
    return runs


def fp32_division(dst, numerator, residual, divisor, n):
    """VE instructions for ``dst = fl(numerator / divisor)``, correctly rounded, on binary32 rows.

    Parameters
    ----------
    dst, numerator, residual : int
        Scratchpad addresses of binary32 rows (``residual`` is scratch), stepped by the current
        ``ve.shape``.
    divisor : float
        A positive binary32 value.
    n : int
        Elements per row.

    Returns
    -------
    list of Instr
        They leave ``R`` (``ve.setf``) at ``fl(1 / divisor)``.
    """
    reciprocal = fp32_word(np.float32(1) / np.float32(divisor))
    body = [Instr("ve.setf", value=reciprocal),
            Instr("ve.fma", dst=dst, src1=numerator, src2=0, n=n, src1_kind=FmaSource.FP32, src2_zero=1,
                  dst_kind=FmaResult.FP32)]
    for _ in range(_CORRECTIONS):
        body += [Instr("ve.setf", value=fp32_word(-np.float32(divisor))),
                 Instr("ve.fma", dst=residual, src1=dst, src2=numerator, n=n, src1_kind=FmaSource.FP32,
                       dst_kind=FmaResult.FP32),
                 Instr("ve.setf", value=reciprocal),
                 Instr("ve.fma", dst=dst, src1=residual, src2=dst, n=n, src1_kind=FmaSource.FP32,
                       dst_kind=FmaResult.FP32)]
    return body


def avgpool_zero_points(x_zero_point, y_zero_point, channels, kernel, stride, out_width):
    """The constant words :func:`emit_avgpool` reads: the input zero point as held on the pNPU
    (int32), once per element of an input row (``in_width · channels``), then the output zero point
    (its own type's value, 0..255 for uint8) as binary32 words, once per channel."""
    in_width = (out_width - 1) * stride[1] + kernel[1]
    words = np.full(in_width * channels + channels, x_zero_point, np.int32)
    words[in_width * channels:] = np.full(channels, y_zero_point, np.float32).view(np.int32)
    return words


def avgpool_footprint(channels, kernel, stride, out_width, rows):
    """Scratchpad bytes of :func:`emit_avgpool` with blocks of ``rows`` output rows."""
    in_rows = (rows - 1) * stride[0] + kernel[0]
    in_width = (out_width - 1) * stride[1] + kernel[1]
    per_slot = 5 * in_rows * in_width * channels + 3 * 4 * out_width * channels + rows * out_width * channels
    return 4 * (in_width + 1) * channels + 2 * per_slot


def emit_avgpool(prog, source, dest, kernel, stride, pads, count_include_pad, x_scale, y_scale, zero_points,
                 y_kind, sram_bytes):
    """Append ``dest = QLinearAveragePool(source)`` to ``prog``, bit for bit as onnxruntime.

    Parameters
    ----------
    prog : ProgramBuilder
    source, dest : NHWC
        int8 activations (uint8 held as ``q − 128``) with the same padded channel count ``C``;
        ``source``'s border covers ``pads`` and holds the input zero point.
    kernel, stride : tuple of int
    pads : tuple of int
        ``(top, left, bottom, right)``.
    count_include_pad : bool
        Divide by the whole kernel size, else by the number of window pixels inside the image.
    x_scale, y_scale : numpy.float32
    zero_points : DenseMatrix
        The words of :func:`avgpool_zero_points`, as rows of ``C`` words (``stride = 4·C``, ``item = 4``).
    y_kind : FmaResult
        ``FmaResult.INT8`` or ``FmaResult.UINT8``.
    sram_bytes : int

    Returns
    -------
    int
        The scratchpad bytes used.

    Raises
    ------
    FirmwareError
        If one output row does not fit the budget or an instruction's fields, or the border is
        smaller than the padding.
    """
    if any(p > b for p, b in zip(pads, source.border)):
        raise FirmwareError(f"average-pool padding {pads} exceeds the source's border {source.border}")
    cp, oh, ow = source.channels, dest.height, dest.width
    (kh, kw), (sy, sx) = kernel, stride
    in_width = (ow - 1) * sx + kw
    if 4 * in_width * cp > _MAX_ROW_BYTES:
        raise FirmwareError(f"an average pool over input rows of {in_width} pixels of {cp} channels exceeds the "
                            f"vector engine's row of {_MAX_ROW_BYTES} bytes")
    runs = divisor_runs(ow, source.width, kw, sx, pads[1], count_include_pad)
    per_row = 2 + kh * kw + len(runs) * (1 + 2 + 4 * _CORRECTIONS) + 1 + 2 + 4 * _CORRECTIONS + 3
    rows = window_block_rows(kernel, stride, oh, lambda r: avgpool_footprint(cp, kernel, stride, ow, r), sram_bytes,
                             max_rows=(_MAX_BODY - 5) // per_row)
    footprint = avgpool_footprint(cp, kernel, stride, ow, rows)
    if footprint > sram_bytes:
        raise FirmwareError(f"an average pool over {ow} output pixels of {cp} channels needs {footprint} bytes of "
                            f"scratchpad, the budget is {sram_bytes}")
    in_rows = (rows - 1) * sy + kh
    in_bytes, row_words, out_bytes = in_rows * in_width * cp, 4 * ow * cp, rows * ow * cp
    zero_in, zero_out = 0, 4 * in_width * cp
    slots = []
    for slot in range(2):
        start = zero_out + 4 * cp + slot * (5 * in_bytes + 3 * row_words + out_bytes)
        words = start + in_bytes
        sums = words + 4 * in_bytes
        slots.append((start, sums + 3 * row_words, words, sums, sums + row_words, sums + 2 * row_words))
    setup = prog.utop(EngineClass.DMA, zero_points.load(0, 4 * cp, 0, in_width + 1, 0, cp))
    pixel, word_pixel = cp, 4 * cp

    def block_body(slot, first_row, block_rows):
        in_buf, out_buf, words, sums, quotients, residuals = slot
        need = (block_rows - 1) * sy + kh
        body = [Instr("ve.shape", rows=need, dst_stride=in_width * word_pixel, src1_stride=in_width * pixel,
                      src2_stride=0),
                Instr("ve.sub", dst=words, src1=in_buf, src2=zero_in, n=in_width * cp, src1_i8=1),
                Instr("ve.shape", rows=need, dst_stride=in_width * word_pixel, src1_stride=in_width * word_pixel,
                      src2_stride=0),
                Instr("ve.setf", value=fp32_word(x_scale)),
                Instr("ve.fma", dst=words, src1=words, src2=0, n=in_width * cp, src1_kind=FmaSource.INT32,
                      src2_zero=1, dst_kind=FmaResult.FP32)]
        for r in range(block_rows):
            tap = lambda ky, kx, r=r: words + ((r * sy + ky) * in_width + kx) * word_pixel  # noqa: E731
            body += [Instr("ve.setf", value=fp32_word(1.0)),
                     Instr("ve.shape", rows=ow, dst_stride=word_pixel, src1_stride=sx * word_pixel,
                           src2_stride=word_pixel),
                     Instr("ve.fma", dst=sums, src1=tap(0, 0), src2=0, n=cp, src1_kind=FmaSource.FP32, src2_zero=1,
                           dst_kind=FmaResult.FP32)]
            body += [Instr("ve.fma", dst=sums, src1=tap(ky, kx), src2=sums, n=cp, src1_kind=FmaSource.FP32,
                           dst_kind=FmaResult.FP32) for ky in range(kh) for kx in range(kw) if (ky, kx) != (0, 0)]
            top = (first_row + r) * sy - pads[0]
            rows_inside = kh if count_include_pad else min(top + kh, source.height) - max(top, 0)
            for first, stop, columns in runs:
                offset = first * word_pixel
                body.append(Instr("ve.shape", rows=stop - first, dst_stride=word_pixel, src1_stride=word_pixel,
                                  src2_stride=word_pixel))
                body += fp32_division(quotients + offset, sums + offset, residuals + offset, rows_inside * columns, cp)
            body.append(Instr("ve.shape", rows=ow, dst_stride=word_pixel, src1_stride=word_pixel,
                              src2_stride=word_pixel))
            body += fp32_division(sums, quotients, residuals, y_scale, cp)
            body += [Instr("ve.setf", value=fp32_word(1.0)),
                     Instr("ve.shape", rows=ow, dst_stride=pixel, src1_stride=word_pixel, src2_stride=0),
                     Instr("ve.fma", dst=out_buf + r * ow * cp, src1=sums, src2=zero_out, n=cp,
                           src1_kind=FmaSource.FP32, dst_kind=y_kind)]
        return body

    emit_window_blocks(prog, source, dest, kernel, stride, pads, rows, slots, block_body, setup=[setup])
    return footprint
