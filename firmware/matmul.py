"""Matrix products of two int8 activations (attention's ``Q·Kᵀ`` and ``P·V``) on the matrix engines.

onnxruntime's ``QLinearMatMul`` of two activations computes ``Σ_k (a − z_A)(b − z_B)`` in int32; the
matrix engines multiply int8 operands as they are, so the zero points are folded into the product
itself by stacking operands along ``k``::

    Σ (a − z_A)(b − z_B) = Σ a·b + Σ a·(−z_B) + Σ (−z_A)·b + K·z_A·z_B
                         = [A | A | −z_A] · [B ; −z_B ; B] + K·z_A·z_B

where ``−z`` stands for a matrix whose every entry is ``−z`` (two int8 parts, 127 and 1, when
``z = −128``), read from one constant row with a DMA stride of 0, and ``K·z_A·z_B`` is the bias. The
depth grows from ``K`` to at most ``5·K`` (``3·K`` for zero points other than −128, ``K`` for zero
zero points); the product stays exact, the requantization is the epilogue's (``ve.requantf``).
"""

from dataclasses import dataclass

from .gemm import DenseMatrix
from .program import FirmwareError

INT8_MAX = 127


def int8_parts(value):
    """``value`` (−127 .. 128) as int8 terms that sum to it: ``[]`` for 0, ``[127, 1]`` for 128."""
    if value == 0:
        return []
    if value > INT8_MAX:
        return [INT8_MAX, value - INT8_MAX]
    return [value]


@dataclass(frozen=True)
class Stack:
    """A GEMM operand made of operands side by side along ``k``: the columns of ``A``
    (``along_rows=False``) or the rows of ``B`` (``along_rows=True``); ``parts`` are
    ``(extent along k, layout)``."""

    parts: tuple
    along_rows: bool

    def load(self, sram, sram_stride, r0, rows, c0, cols):
        """DMA instructions for rows ``r0..r0+rows``, columns ``c0..c0+cols`` (see ``DenseMatrix.load``)."""
        first, count = (r0, rows) if self.along_rows else (c0, cols)
        out, start = [], 0
        for extent, part in self.parts:
            lo, hi = max(first, start), min(first + count, start + extent)
            if lo < hi:
                if self.along_rows:
                    out += part.load(sram + (lo - first) * sram_stride, sram_stride, lo - start, hi - lo, c0, cols)
                else:
                    out += part.load(sram + lo - first, sram_stride, r0, rows, lo - start, hi - lo)
            start += extent
        return out


def zero_point_operands(a, b, depth, a_zero, b_zero, constant_rows):
    """The stacked operands and the bias of ``Σ (a − a_zero)(b − b_zero)`` (see the module docstring).

    Parameters
    ----------
    a, b : layouts with ``load``
        ``A[m][depth]`` and ``B[depth][n]``, int8 as the pNPU holds them.
    depth : int
        ``K``, a multiple of 4 (a DMA word), so the stacked parts stay word-aligned.
    a_zero, b_zero : int
        Zero points of the int8 values the pNPU holds.
    constant_rows : callable
        ``constant_rows(value)`` → the HBM address of a row of at least ``max(K, n)`` bytes equal to
        ``value``.

    Returns
    -------
    tuple
        ``(A_ext, B_ext, depth_ext)``; the GEMM's bias is :func:`zero_point_bias`.

    Raises
    ------
    FirmwareError
        If ``depth`` is not a multiple of 4.
    """
    if depth % 4:
        raise FirmwareError(f"a matrix product of two activations needs a depth that is a multiple of 4, "
                            f"not {depth}")
    a_parts, b_parts = [(depth, a)], [(depth, b)]
    for value in int8_parts(-b_zero):
        a_parts.append((depth, a))
        b_parts.append((depth, DenseMatrix(constant_rows(value), 0)))
    for value in int8_parts(-a_zero):
        a_parts.append((depth, DenseMatrix(constant_rows(value), 0)))
        b_parts.append((depth, b))
    return Stack(tuple(a_parts), along_rows=False), Stack(tuple(b_parts), along_rows=True), depth * len(a_parts)


def zero_point_bias(depth, a_zero, b_zero):
    """The bias every output of :func:`zero_point_operands`' product needs: ``K·a_zero·b_zero``."""
    return depth * a_zero * b_zero
