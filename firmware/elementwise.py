"""Vector-engine kernel: a residual add + ReLU chain over int32 tensors.

``Z = f(f(...f(X)))`` applied ``passes`` times, with ``f(z) = relu(z + Y)`` in int32 wrap-around
arithmetic. One pass is a typical residual connection; more passes make the kernel VE-bound, which
the multi-tenant experiments use as the "VE-heavy" tenant next to an ME-heavy GEMM.
"""

import numpy as np

from tcloud.isa import EngineClass, Instr, ProgramImage, Symbol, get_config
from tcloud.isa.table import INSTRUCTION_BYTES, field_max

from .program import FirmwareError, Footprint, ProgramBuilder

_ALIGN = 64
MIB = 1 << 20


def _up(value, multiple):
    return -(-value // multiple) * multiple


def elementwise_reference(x, y, passes=1):
    """NumPy reference of :func:`elementwise`."""
    z = np.asarray(x, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    for _ in range(passes):
        z = (z + y + (1 << 31)) % (1 << 32) - (1 << 31)
        z = np.maximum(z, 0)
    return z.astype(np.int32)


def elementwise(config, rows, cols, *, passes=1, block_elements=None):
    """Lower ``Z = relu(... relu(X + Y) ... + Y)`` (``passes`` times) to a program image.

    Parameters
    ----------
    config : ArchConfig or str
    rows, cols : int
        Shape of ``X``, ``Y`` and ``Z`` (int32).
    passes : int
        Applications of ``relu(z + Y)`` per element (VE work per byte moved).
    block_elements : int, optional
        Elements per double-buffered block (default: a quarter of the scratchpad, at most what
        one VE instruction can address).

    Returns
    -------
    ProgramImage
        Inputs ``X``, ``Y`` (i32, rows×cols); output ``Z`` (i32, rows×cols).

    Raises
    ------
    FirmwareError
        Non-positive sizes, or a block that does not fit the scratchpad.
    """
    cfg = get_config(config)
    total, block, _ = _layout(cfg, rows, cols, passes, block_elements)
    off_x, off_y, off_z, code_at = _hbm_layout(total)
    slot = _up(4 * block, _ALIGN)
    buffers = [(0, slot), (2 * slot, 3 * slot)]  # (x, y) per double-buffer slot

    prog = ProgramBuilder()
    loads, computes, stores = [], [], []
    for b, start in enumerate(range(0, total, block)):
        count = min(block, total - start)
        x_buf, y_buf = buffers[b % 2]
        reuse = [computes[b - 2], stores[b - 2]] if b >= 2 else []
        loads.append(prog.utop(EngineClass.DMA, [
            Instr("dma.load", sram=x_buf, hbm=off_x + 4 * start, rows=1, row_bytes=4 * count),
            Instr("dma.load", sram=y_buf, hbm=off_y + 4 * start, rows=1, row_bytes=4 * count)], deps=reuse))
        if b >= 1:
            stores.append(_store(prog, computes[b - 1], *_block_at(b - 1, block, total, buffers, off_z)))
        body = []
        for _ in range(passes):
            body += [Instr("ve.add", dst=x_buf, src1=x_buf, src2=y_buf, n=count),
                     Instr("ve.relu", dst=x_buf, src=x_buf, n=count)]
        computes.append(prog.utop(EngineClass.VE, body, deps=[loads[b]]))
    last = len(computes) - 1
    stores.append(_store(prog, computes[last], *_block_at(last, block, total, buffers, off_z)))
    code = prog.build(cfg)
    symbols = [Symbol("X", "input", "i32", (rows, cols), off_x, 4 * cols),
               Symbol("Y", "input", "i32", (rows, cols), off_y, 4 * cols),
               Symbol("Z", "output", "i32", (rows, cols), off_z, 4 * cols)]
    return ProgramImage.for_config(cfg, code, entry=code_at, hbm_bytes=_up(code_at + len(code), _ALIGN),
                                   sram_bytes=4 * slot, symbols=symbols)


def elementwise_footprint(config, rows, cols, *, passes=1, block_elements=None):
    """The :class:`~.program.Footprint` of :func:`elementwise`'s image, without building its code.

    Raises
    ------
    FirmwareError
        As :func:`elementwise` does.
    """
    _, block, hbm_bytes = _layout(get_config(config), rows, cols, passes, block_elements)
    return Footprint(4 * _up(4 * block, _ALIGN), hbm_bytes)


def _layout(cfg, rows, cols, passes, block_elements):
    """``(elements, block, HBM bytes)`` of an image, checked against the ISA and ``cfg``."""
    for name, value in (("rows", rows), ("cols", cols), ("passes", passes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FirmwareError(f"elementwise: {name} must be a positive integer, got {value!r}")
    total = rows * cols
    limit = min(field_max("ve.add", "n"), field_max("dma.load", "row_bytes") // 4, cfg.sram_bytes // 16)
    block = min(total, limit if block_elements is None else block_elements)
    if not 1 <= block <= limit:
        raise FirmwareError(f"elementwise: block_elements={block_elements} must be within 1..{limit} on "
                            f"{cfg.name!r}")
    most_passes = field_max("utop", "len") // 2
    if passes > most_passes:
        raise FirmwareError(f"elementwise: passes={passes} needs {2 * passes} instructions in one VE uTOp, which holds "
                            f"at most {2 * most_passes}: passes must be at most {most_passes}")
    code_at = _hbm_layout(total)[-1]
    hbm_bytes = _up(code_at + INSTRUCTION_BYTES * _instruction_count(total, block, passes), _ALIGN)
    if hbm_bytes > cfg.hbm_bytes:
        raise FirmwareError(f"elementwise {rows}x{cols}: needs {hbm_bytes / MIB:.1f} MiB of HBM ({code_at / MIB:.1f} MiB "
                            f"of X, Y and Z), but config {cfg.name!r} has {cfg.hbm_mib} MiB")
    return total, block, hbm_bytes


def _hbm_layout(total):
    """HBM offsets of X, Y, Z and the code for ``total`` elements."""
    step = _up(4 * total, _ALIGN)
    return 0, step, 2 * step, 3 * step


def _instruction_count(total, block, passes):
    """Instructions :func:`elementwise` emits, counted without building (a shape too large for the HBM is
    refused first): per block a load, a compute and a store uTOp, then ``halt``."""
    return -(-total // block) * ((1 + 2) + (1 + 2 * passes) + (1 + 1)) + 1


def _block_at(b, block, total, buffers, off_z):
    start = b * block
    return buffers[b % 2][0], off_z + 4 * start, min(block, total - start)


def _store(prog, compute, x_buf, hbm, count):
    return prog.utop(EngineClass.DMA, [Instr("dma.store", sram=x_buf, hbm=hbm, rows=1, row_bytes=4 * count)],
                     deps=[compute])
