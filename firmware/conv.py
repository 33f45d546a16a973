"""Convolution as a GEMM over an im2col view that the DMA gathers straight from HBM.

An int8 activation lives in HBM as :class:`NHWC`: channels innermost, padded to a multiple of the
DMA's word (``WORD_BYTES``), with a border of pixels around each image that holds the zero point,
so a convolution's padding is already in memory. For ``Y = conv(X, W)`` the GEMM
``A[m][k] @ B[k][n]`` has one row per output pixel (``m = (b·OH + oy)·OW + ox``), one column per
weight tap (``k = (ky·KW + kx)·C + c``) and one column of ``B`` per output channel. The taps of
one kernel row, ``x[oy·s + ky][ox·s .. ox·s + KW)`` over all channels, are contiguous in NHWC, so
:class:`Im2col` fetches a run of output pixels of one kernel row with one 2-D ``dma.load``
(``hbm_stride = s·C``): the im2col matrix is never written to HBM, and the vector engines are not
involved. :class:`NHWC` also stores a GEMM result (rows = pixels) into the interior of its tensor.
"""

from dataclasses import dataclass

from tcloud.isa import Instr
from tcloud.isa.table import WORD_BYTES, field_max

from .program import FirmwareError

_MAX_TRANSFER_ROWS = min(field_max("dma.load", "rows"), field_max("dma.store", "rows"))


def padded_channels(channels):
    """Channels as laid out in HBM: rounded up to a whole DMA word."""
    return -(-channels // WORD_BYTES) * WORD_BYTES


def pixel_runs(r0, rows, height, width):
    """Split GEMM rows ``r0..r0+rows`` (pixels of ``height × width`` images in row-major order)
    into runs within one image row: ``(first_row, b, y, x, length)``, ``first_row`` counted from
    ``r0``."""
    r = r0
    while r < r0 + rows:
        image_row, x = divmod(r, width)
        b, y = divmod(image_row, height)
        length = min(width - x, r0 + rows - r, _MAX_TRANSFER_ROWS)
        yield r - r0, b, y, x, length
        r += length


@dataclass(frozen=True)
class NHWC:
    """An int8 activation ``[batch, height, width, channels]`` in HBM.

    Parameters
    ----------
    hbm : int
        Address of the first pixel of the border (the tensor's first byte).
    batch, height, width, channels : int
        The interior; ``channels`` is the padded count (a multiple of ``WORD_BYTES``).
    border : tuple of int
        Pixels of border ``(top, left, bottom, right)`` around each image.
    """

    hbm: int
    batch: int
    height: int
    width: int
    channels: int
    border: tuple = (0, 0, 0, 0)

    @property
    def padded_height(self):
        return self.height + self.border[0] + self.border[2]

    @property
    def padded_width(self):
        return self.width + self.border[1] + self.border[3]

    @property
    def nbytes(self):
        return self.batch * self.padded_height * self.padded_width * self.channels

    def pixel(self, b, y, x):
        """Address of pixel ``(y, x)`` of image ``b``; negative or past-the-edge coordinates reach
        into the border."""
        return self.hbm + ((b * self.padded_height + y + self.border[0]) * self.padded_width
                           + x + self.border[1]) * self.channels

    def _transfer(self, op, sram, sram_stride, r0, rows, c0, cols):
        if not any(self.border):  # interior pixels are contiguous: as few transfers as the rows field allows
            return [Instr(op, sram=sram + first * sram_stride, hbm=self.hbm + (r0 + first) * self.channels + c0,
                          rows=min(_MAX_TRANSFER_ROWS, rows - first), row_bytes=padded_channels(cols),
                          hbm_stride=self.channels, sram_stride=sram_stride)
                    for first in range(0, rows, _MAX_TRANSFER_ROWS)]
        return [Instr(op, sram=sram + first * sram_stride, hbm=self.pixel(b, y, x) + c0, rows=length,
                      row_bytes=padded_channels(cols), hbm_stride=self.channels, sram_stride=sram_stride)
                for first, b, y, x, length in pixel_runs(r0, rows, self.height, self.width)]

    def load(self, sram, sram_stride, r0, rows, c0, cols):
        """``dma.load`` instructions reading interior pixels ``r0..r0+rows`` (row-major),
        channels ``c0..c0+cols``, one pixel per scratchpad row."""
        return self._transfer("dma.load", sram, sram_stride, r0, rows, c0, cols)

    def store(self, sram, sram_stride, r0, rows, c0, cols):
        """``dma.store`` instructions writing GEMM rows ``r0..r0+rows`` (interior pixels in
        row-major order), channels ``c0..c0+cols``."""
        return self._transfer("dma.store", sram, sram_stride, r0, rows, c0, cols)


@dataclass(frozen=True)
class Im2col:
    """The im2col matrix of a convolution over an :class:`NHWC` source, as a GEMM operand ``A``.

    Parameters
    ----------
    source : NHWC
        Its border must cover the padding ``pads``.
    kernel : tuple of int
        ``(KH, KW)``.
    stride : tuple of int
        ``(sy, sx)``.
    pads : tuple of int
        ``(top, left, bottom, right)``.

    Raises
    ------
    FirmwareError
        If the source's border is smaller than the padding.
    """

    source: NHWC
    kernel: tuple
    stride: tuple
    pads: tuple

    def __post_init__(self):
        if any(p > b for p, b in zip(self.pads, self.source.border)):
            raise FirmwareError(f"convolution padding {self.pads} exceeds the source's border {self.source.border}")

    @property
    def out_height(self):
        return (self.source.height + self.pads[0] + self.pads[2] - self.kernel[0]) // self.stride[0] + 1

    @property
    def out_width(self):
        return (self.source.width + self.pads[1] + self.pads[3] - self.kernel[1]) // self.stride[1] + 1

    @property
    def rows(self):
        return self.source.batch * self.out_height * self.out_width

    @property
    def depth(self):
        return self.kernel[0] * self.kernel[1] * self.source.channels

    def load(self, sram, sram_stride, r0, rows, k0, depth):
        """``dma.load`` instructions gathering rows ``r0..r0+rows``, columns ``k0..k0+depth``."""
        src, (kh, kw), (sy, sx) = self.source, self.kernel, self.stride
        if (kh, kw, sy, sx) == (1, 1, 1, 1) and not any(self.pads) and not any(src.border):
            # a pointwise convolution reads the activation itself as A: one transfer
            return [Instr("dma.load", sram=sram, hbm=src.hbm + r0 * src.channels + k0, rows=rows, row_bytes=depth,
                          hbm_stride=src.channels, sram_stride=sram_stride)]
        tap_row = kw * src.channels
        out = []
        for ky in range(kh):
            lo, hi = max(k0, ky * tap_row), min(k0 + depth, (ky + 1) * tap_row)
            if lo >= hi:
                continue
            for first, b, oy, ox, length in pixel_runs(r0, rows, self.out_height, self.out_width):
                hbm = src.pixel(b, oy * sy - self.pads[0] + ky, ox * sx - self.pads[1]) + lo - ky * tap_row
                out.append(Instr("dma.load", sram=sram + first * sram_stride + lo - k0, hbm=hbm, rows=length,
                                 row_bytes=hi - lo, hbm_stride=sx * src.channels, sram_stride=sram_stride))
        return out

