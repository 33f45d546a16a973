"""Constrained-random uTOp programs for checking RTL against the golden model.

A generated program loads an input tensor into the scratchpad, runs random DMA, ME and VE uTOps
whose operands stay inside fixed scratchpad slots (so no instruction partially overlaps its own
operands, which the ISA leaves undefined; ME uTOps may read, later in the same uTOp, what one of
their matmuls wrote), and stores the whole scratchpad area back to HBM, so
comparing the output tensor compares everything the program computed. Each uTOp depends on the
previous one; the schedule is therefore valid for any hardware, and :func:`tcloud.verif.find_races`
confirms it.
"""

import numpy as np

from tcloud.firmware import ProgramBuilder
from tcloud.isa import EngineClass, Instr, ProgramImage, Symbol, get_config

SLOT_BYTES = 256
SLOTS = 4
AREA = SLOT_BYTES * SLOTS

_BINARY = ("ve.add", "ve.sub", "ve.mul", "ve.max", "ve.min")


def _up4(value):
    return -(-value // 4) * 4


class _Gen:
    def __init__(self, config, rng):
        self.cfg, self.rng = config, rng

    def pick(self, options):
        return options[int(self.rng.integers(0, len(options)))]

    def int(self, low, high):
        return int(self.rng.integers(low, high + 1))

    def slots(self, count):
        return [int(s) * SLOT_BYTES for s in self.rng.permutation(SLOTS)[:count]]

    def rows_fitting(self, row_bytes_and_strides):
        rows = self.int(1, 4)
        while rows > 1 and any((rows - 1) * stride + row_bytes > SLOT_BYTES
                               for row_bytes, stride in row_bytes_and_strides):
            rows -= 1
        return rows

    def ve_instruction(self):
        lanes = self.cfg.ve_lanes
        op = self.pick(_BINARY + ("ve.relu", "ve.copy", "ve.fill", "ve.requant", "ve.redsum", "ve.redmax"))
        n = self.int(1, min(3 * lanes, 48))
        src1_i8, src2_i8, dst_i8 = (bool(self.int(0, 1)) for _ in range(3))
        if op == "ve.requant":
            src1_i8 = False
        reduce = op in ("ve.redsum", "ve.redmax")
        src1_bytes = n * (1 if src1_i8 else 4)
        src2_bytes = n * (1 if src2_i8 else 4)
        dst_bytes = 4 if reduce else n * (1 if dst_i8 else 4)
        strides = [_up4(b) + 4 * self.int(0, 2) for b in (dst_bytes, src1_bytes, src2_bytes)]
        if self.int(0, 3) == 0:
            strides[2] = 0
        rows = self.rows_fitting([(dst_bytes, strides[0]), (src1_bytes, strides[1]), (src2_bytes, strides[2])])
        dst, src1, src2 = self.slots(3)
        in_place = op in ("ve.relu", "ve.copy", "ve.requant") + _BINARY and self.int(0, 3) == 0
        if in_place and dst_bytes == src1_bytes and strides[0] == strides[1]:
            dst = src1
        shape = Instr("ve.shape", rows=rows, dst_stride=strides[0], src1_stride=strides[1], src2_stride=strides[2])
        if op in _BINARY:
            body = Instr(op, dst=dst, src1=src1, src2=src2, n=n, src1_i8=int(src1_i8), src2_i8=int(src2_i8),
                         dst_i8=int(dst_i8))
        elif op in ("ve.relu", "ve.copy"):
            body = Instr(op, dst=dst, src=src1, n=n, src_i8=int(src1_i8), dst_i8=int(dst_i8))
        elif op == "ve.fill":
            body = Instr(op, dst=dst, n=n, value=self.int(-(1 << 31), (1 << 31) - 1), dst_i8=int(dst_i8))
        elif op == "ve.requant":
            tie = self.int(0, 2) == 0
            body = Instr(op, dst=dst, src=src1, n=n, mult=1 if tie else self.int(0, (1 << 31) - 1),
                         shift=self.int(1, 3) if tie else self.int(0, 63), zp=self.int(-128, 127),
                         dst_i8=int(dst_i8))
        else:
            body = Instr(op, dst=dst, src=src1, n=n, src_i8=int(src1_i8))
        return [shape, body]

    def me_body(self):
        cfg = self.cfg
        a, w, out = self.slots(3)
        k, n = self.int(1, cfg.me_rows), self.int(1, cfg.me_cols)
        w_stride = _up4(n) + 4 * self.int(0, 1)
        a_stride = _up4(k) + 4 * self.int(0, 1)
        out_stride = 4 * n + 4 * self.int(0, 1)
        m = 1
        while (m + 1 - 1) * max(a_stride, out_stride) + 4 * n <= SLOT_BYTES and m < 12:
            m += 1
        m = self.int(1, m - 1) if m > 1 else 1
        while (k - 1) * w_stride + n > SLOT_BYTES:
            k -= 1
        body = [Instr("me.loadw", w=w, k=k, n=n, w_stride=w_stride)]
        for _ in range(self.int(1, 2)):
            body.append(Instr("me.matmul", a=a, out=out, m=m, a_stride=a_stride, out_stride=out_stride,
                              acc=self.int(0, 1)))
        chain = self.pick((None, None, "a", "w"))
        if chain == "w":  # weights read from the output the matmuls just produced
            body.append(Instr("me.loadw", w=out, k=k, n=n, w_stride=w_stride))
        if chain:  # a product reading what the previous matmul of this uTOp wrote
            body.append(Instr("me.matmul", a=out, out=self.pick((out, a)), m=m, a_stride=a_stride,
                              out_stride=out_stride, acc=self.int(0, 1)))
        return body

    def dma_body(self, input_offset, input_bytes):
        row_bytes = 4 * self.int(1, 8)
        hbm_stride = row_bytes + 4 * self.int(0, 2)
        sram_stride = row_bytes + 4 * self.int(0, 2)
        rows = self.rows_fitting([(row_bytes, sram_stride)])
        while rows > 1 and (rows - 1) * hbm_stride + row_bytes > input_bytes:
            rows -= 1
        hbm = input_offset + 4 * self.int(0, (input_bytes - (rows - 1) * hbm_stride - row_bytes) // 4)
        return [Instr("dma.load", sram=self.slots(1)[0], hbm=hbm, rows=rows, row_bytes=row_bytes,
                      hbm_stride=hbm_stride, sram_stride=sram_stride)]


def random_program(config, seed, *, utops=12):
    """Return ``(image, inputs)``: a random race-free program and its random input.

    Parameters
    ----------
    config : ArchConfig or str
    seed : int
    utops : int
        Random uTOps between the initial load and the final store.
    """
    cfg = get_config(config)
    rng = np.random.default_rng(seed)
    gen = _Gen(cfg, rng)
    in_offset, out_offset, code_at = 0, AREA, 2 * AREA
    builder = ProgramBuilder()
    last = builder.utop(EngineClass.DMA, [Instr("dma.load", sram=0, hbm=in_offset, rows=1, row_bytes=AREA)])
    for _ in range(utops):
        kind = gen.pick(("ve", "ve", "me", "dma"))
        if kind == "ve":
            body = [part for _ in range(gen.int(1, 3)) for part in gen.ve_instruction()]
            last = builder.utop(EngineClass.VE, body, deps=[last])
        elif kind == "me":
            last = builder.utop(EngineClass.ME, gen.me_body(), deps=[last])
        else:
            last = builder.utop(EngineClass.DMA, gen.dma_body(in_offset, AREA), deps=[last])
    builder.utop(EngineClass.DMA, [Instr("dma.store", sram=0, hbm=out_offset, rows=1, row_bytes=AREA)], deps=[last])
    code = builder.build(cfg)
    symbols = [Symbol("X", "input", "i32", (AREA // 4,), in_offset, AREA),
               Symbol("Y", "output", "i32", (AREA // 4,), out_offset, AREA)]
    image = ProgramImage.for_config(cfg, code, entry=code_at, hbm_bytes=_up4(code_at + len(code)),
                                    sram_bytes=AREA, symbols=symbols)
    values = rng.integers(-(1 << 31), 1 << 31, AREA // 4, dtype=np.int64)
    small = rng.random(AREA // 4) < 0.5
    values[small] = rng.integers(-300, 300, int(small.sum()))
    return image, {"X": values.astype(np.int32)}
