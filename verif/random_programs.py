"""Constrained-random, DAG-shaped uTOp programs for checking RTL against the golden model.

A generated program loads an input tensor into a scratchpad area of fixed slots, runs random DMA,
ME and VE uTOps on them (and DMA gathers of input rows by indices a VE uTOp wrote), and stores the
whole area back to HBM, so comparing the output tensor compares everything the program computed. Every operand stays inside one slot (so no instruction
partially overlaps its own operands, which the ISA leaves undefined; ME uTOps may read, later in
the same uTOp, what one of their matmuls wrote). DMA uTOps also store slots to, and load them from,
HBM scratch slots that are part of the output.

Dependencies form a DAG, not a chain. Each uTOp waits on exactly the earlier uTOps it conflicts with
on some slot (the last writer of a slot it reads; the last writer and every reader since of a slot
it writes) that are not already ordered before it; random fences order everything. The uTOps go
through a :class:`tcloud.firmware.ProgramBuilder` given the random generator, which spreads each
uTOp's producers over up to three wait slots (so a wait often counts several signals) and picks
random free tokens. Independent uTOps on different engines run concurrently and complete out of
order. The program is race-free on any hardware, and :func:`tcloud.verif.find_races` confirms it.

Seeds
-----
Tests take their seeds from :func:`seeds`: ``TCLOUD_SEED`` (default 0) and the ones after it. Run
them inside :func:`replay_hint`, which adds ``replay with TCLOUD_SEED=<seed>`` to a failure; with
that setting the failing program is the first one run.
"""

import os
from contextlib import contextmanager

import numpy as np

from tcloud.firmware import ProgramBuilder
from tcloud.isa import EngineClass, Instr, ProgramImage, Symbol, get_config
from tcloud.isa.table import FMA_BYTE_RESULTS, FMA_BYTE_SOURCES, LUT_BYTES, FmaResult, FmaSource

SLOT_BYTES = 128
SLOTS = 8
AREA = SLOT_BYTES * SLOTS
HBM_SLOTS = 2
SEED_VARIABLE = "TCLOUD_SEED"

_BINARY = ("ve.add", "ve.sub", "ve.mul", "ve.max", "ve.min")
_FENCE_ODDS = 20


def seeds(count):
    """Return ``count`` consecutive seeds starting at ``TCLOUD_SEED`` (0 when unset).

    Parameters
    ----------
    count : int

    Returns
    -------
    range
    """
    first = int(os.environ.get(SEED_VARIABLE, "0"))
    return range(first, first + count)


@contextmanager
def replay_hint(seed):
    """Add how to replay ``seed`` to any exception raised inside the ``with`` block.

    Parameters
    ----------
    seed : int
        The seed of the random program (or of the random case) being checked.
    """
    try:
        yield
    except Exception as exc:
        exc.add_note(f"random seed {seed}: replay with {SEED_VARIABLE}={seed}")
        raise


def _up4(value):
    return -(-value // 4) * 4


def _sram(slot):
    return ("sram", slot)


class _Gen:
    def __init__(self, config, rng, hbm_scratch):
        self.cfg, self.rng, self.hbm_scratch = config, rng, hbm_scratch
        self.builder = ProgramBuilder(rng=rng)
        self.refs = []
        self.before = []  # per uTOp: bit set of uTOps guaranteed complete when it issues
        self._fence()

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

    def _fence(self):
        if self.refs:
            self.builder.fence()
        self.fenced = (1 << len(self.refs)) - 1
        self.writer, self.readers = {}, {}

    def add(self, engine, body, reads, writes):
        """Append a uTOp reading and writing the given slots, waiting on what it conflicts with."""
        if self.int(1, _FENCE_ODDS) == 1:
            self._fence()
        index = len(self.refs)
        deps = {self.writer[key] for key in reads | writes if key in self.writer}
        for key in writes:
            deps |= self.readers.get(key, set())
        deps = [d for d in deps if not any(self.before[e] >> d & 1 for e in deps)]
        before = self.fenced
        for d in deps:
            before |= self.before[d] | 1 << d
        self.before.append(before)
        self.refs.append(self.builder.utop(engine, body, deps=[self.refs[d] for d in deps]))
        for key in reads:
            self.readers.setdefault(key, set()).add(index)
        for key in writes:
            self.writer[key], self.readers[key] = index, set()

    # --- random uTOps -----------------------------------------------------------------------------

    def ve_instruction(self):
        lanes = self.cfg.ve_lanes
        op = self.pick(_BINARY + ("ve.relu", "ve.copy", "ve.fill", "ve.requant", "ve.requantf", "ve.redsum",
                                  "ve.redmax", "ve.lut", "ve.fma", "ve.fmav"))
        n = self.int(1, min(3 * lanes, SLOT_BYTES // 4))
        src1_i8, src2_i8, dst_i8 = (bool(self.int(0, 1)) for _ in range(3))
        if op in ("ve.fma", "ve.fmav"):
            src1_kind, dst_kind = FmaSource(self.int(0, 3)), FmaResult(self.int(0, 3))
            src2_zero = op == "ve.fma" and self.int(0, 3) == 0
            src1_i8, src2_i8, dst_i8 = src1_kind in FMA_BYTE_SOURCES, False, dst_kind in FMA_BYTE_RESULTS
        if op in ("ve.requant", "ve.requantf"):
            src1_i8 = False
        if op == "ve.requantf":
            src2_i8 = False
        if op == "ve.lut":
            src1_i8 = dst_i8 = True
        reduce = op in ("ve.redsum", "ve.redmax")
        two_sources = op in _BINARY + ("ve.requantf", "ve.fmav") or (op == "ve.fma" and not src2_zero)
        src2_row = int(two_sources and self.int(0, 3) == 0)  # src2: one element per row
        src1_bytes = n * (1 if src1_i8 else 4)
        src2_bytes = (1 if src2_row else n) * (1 if src2_i8 else 4)
        dst_bytes = 4 if reduce else n * (1 if dst_i8 else 4)
        strides = [_up4(b) + 4 * self.int(0, 2) for b in (dst_bytes, src1_bytes, src2_bytes)]
        if self.int(0, 3) == 0:
            strides[2] = 0
        rows = self.rows_fitting([(dst_bytes, strides[0]), (src1_bytes, strides[1]), (src2_bytes, strides[2])])
        dst, src1, src2 = self.slots(3)
        in_place = (op in ("ve.relu", "ve.copy", "ve.requant", "ve.requantf", "ve.lut", "ve.fma", "ve.fmav") + _BINARY
                    and self.int(0, 3) == 0)
        if in_place and dst_bytes == src1_bytes and strides[0] == strides[1]:
            dst = src1
        shape = Instr("ve.shape", rows=rows, dst_stride=strides[0], src1_stride=strides[1], src2_stride=strides[2],
                      src2_row=src2_row)
        reads = {src1, src2} if two_sources else set() if op == "ve.fill" else {src1}
        writes = {dst}
        prologue = []
        if op == "ve.requantf" and self.int(0, 1):
            # the input's random words are mostly scales far out of range: fill src2 with one in range
            prologue = [Instr("ve.shape", rows=1),
                        Instr("ve.fill", dst=src2, n=((rows - 1) * strides[2] + src2_bytes) // 4,
                              value=self.scale_word(), dst_i8=0)]
            writes.add(src2)
        if op in _BINARY:
            body = Instr(op, dst=dst, src1=src1, src2=src2, n=n, src1_i8=int(src1_i8), src2_i8=int(src2_i8),
                         dst_i8=int(dst_i8))
        elif op in ("ve.relu", "ve.copy"):
            body = Instr(op, dst=dst, src=src1, n=n, src_i8=int(src1_i8), dst_i8=int(dst_i8))
        elif op == "ve.fill":
            body = Instr(op, dst=dst, n=n, value=self.int(-(1 << 31), (1 << 31) - 1), dst_i8=int(dst_i8))
        elif op == "ve.lut":
            body = Instr(op, dst=dst, src=src1, n=n)
        elif op == "ve.requant":
            tie = self.int(0, 2) == 0
            body = Instr(op, dst=dst, src=src1, n=n, mult=1 if tie else self.int(0, (1 << 31) - 1),
                         shift=self.int(1, 3) if tie else self.int(0, 63), zp=self.int(-128, 127),
                         dst_i8=int(dst_i8))
        elif op == "ve.requantf":
            body = Instr(op, dst=dst, src1=src1, src2=src2, n=n, zp=self.int(-128, 127), dst_i8=int(dst_i8))
        elif op in ("ve.fma", "ve.fmav"):
            zero = {"src2_zero": int(src2_zero)} if op == "ve.fma" else {}
            body = Instr(op, dst=dst, src1=src1, src2=src2, n=n, src1_kind=int(src1_kind), dst_kind=int(dst_kind), **zero)
            if self.int(0, 3):  # else R stays that of an earlier ve.setf in the uTOp, or +0.0
                word = self.scale_word() if self.int(0, 1) else self.int(0, (1 << 32) - 1)
                prologue.append(Instr("ve.setf", value=word & 0xFFFFFFFF))
        else:
            body = Instr(op, dst=dst, src=src1, n=n, src_i8=int(src1_i8))
        return prologue + [shape, body], {_sram(s) for s in reads}, {_sram(s) for s in writes}

    def scale_word(self):
        """A binary32 scale word as an int32: a typical requantization scale, or one that makes ties."""
        if self.int(0, 2) == 0:
            scale = np.float32(0.5 ** self.int(1, 4) * self.pick((1, 3, 5, 7)))
        else:
            scale = np.float32(np.exp2(self.rng.uniform(-24, 4)))
        return int(np.float32(scale * self.pick((1, -1))).view(np.int32))

    def lut_table(self):
        """A ``ve.lutload`` of a random table: whatever the consecutive slots it spans hold (random
        input or earlier results); returns it and the slots it reads."""
        span = -(-LUT_BYTES // SLOT_BYTES)
        first = self.int(0, SLOTS - span)
        return Instr("ve.lutload", src=first * SLOT_BYTES), {_sram((first + i) * SLOT_BYTES) for i in range(span)}

    def ve_utop(self):
        body, reads, writes = [], set(), set()
        loaded = False
        for _ in range(self.int(1, 3)):
            part, r, w = self.ve_instruction()
            if part[-1].mnemonic == "ve.lut" and (not loaded or self.int(0, 2) == 0):
                load, table = self.lut_table()  # else the table of an earlier ve.lutload of this uTOp
                part.insert(self.int(0, 1), load)
                r |= table
                loaded = True
            body += part
            reads |= r
            writes |= w
        self.add(EngineClass.VE, body, reads, writes)

    def me_utop(self):
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
        writes = {out}
        chain = self.pick((None, None, "a", "w"))
        if chain == "w":  # weights read from the output the matmuls just produced
            body.append(Instr("me.loadw", w=out, k=k, n=n, w_stride=w_stride))
        if chain:  # a product reading what the previous matmul of this uTOp wrote
            second_out = self.pick((out, a))
            writes.add(second_out)
            body.append(Instr("me.matmul", a=out, out=second_out, m=m, a_stride=a_stride,
                              out_stride=out_stride, acc=self.int(0, 1)))
        self.add(EngineClass.ME, body, {_sram(a), _sram(w)}, {_sram(s) for s in writes})

    def dma_instruction(self, hbm_base, hbm_bytes, store):
        row_bytes = 4 * self.int(1, 8)
        hbm_stride = row_bytes + 4 * self.int(0, 2)
        sram_stride = row_bytes + 4 * self.int(0, 2)
        rows = self.rows_fitting([(row_bytes, sram_stride)])
        while rows > 1 and (rows - 1) * hbm_stride + row_bytes > hbm_bytes:
            rows -= 1
        hbm = hbm_base + 4 * self.int(0, (hbm_bytes - (rows - 1) * hbm_stride - row_bytes) // 4)
        sram = self.slots(1)[0]
        instr = Instr("dma.store" if store else "dma.load", sram=sram, hbm=hbm, rows=rows, row_bytes=row_bytes,
                      hbm_stride=hbm_stride, sram_stride=sram_stride)
        return instr, _sram(sram)

    def dma_utop(self, input_offset):
        body, reads, writes = [], set(), set()
        for _ in range(self.int(1, 2)):
            kind = self.pick(("input", "load", "store"))
            if kind == "input":
                instr, slot = self.dma_instruction(input_offset, AREA, store=False)
                writes.add(slot)
            else:
                scratch = self.int(0, HBM_SLOTS - 1)
                instr, slot = self.dma_instruction(self.hbm_scratch + scratch * SLOT_BYTES, SLOT_BYTES,
                                                   store=kind == "store")
                hbm = ("hbm", scratch)
                reads.add(slot if kind == "store" else hbm)
                writes.add(hbm if kind == "store" else slot)
            body.append(instr)
        self.add(EngineClass.DMA, body, reads, writes)

    def gather_utop(self, input_offset):
        """A VE uTOp filling part of a slot with random indices of rows of a table in the input, then a
        DMA uTOp gathering those rows into another slot."""
        row_bytes = 4 * self.int(1, 8)
        sram_stride = row_bytes + 4 * self.int(0, 2)
        rows = self.rows_fitting([(row_bytes, sram_stride)])
        table = 4 * self.int(0, 8)
        table_rows = (AREA - table) // row_bytes
        indices, dst = self.slots(2)
        idx = indices + 4 * self.int(0, SLOT_BYTES // 4 - rows)
        fills = [Instr("ve.fill", dst=idx + 4 * r, n=1, value=self.int(0, table_rows - 1)) for r in range(rows)]
        self.add(EngineClass.VE, fills, set(), {_sram(indices)})
        self.add(EngineClass.DMA, [Instr("dma.gather", sram=dst, hbm=input_offset + table, idx=idx, rows=rows,
                                         row_bytes=row_bytes, sram_stride=sram_stride)], {_sram(indices)}, {_sram(dst)})


def random_program(config, seed, *, utops=12):
    """Return ``(image, inputs)``: a random race-free DAG-shaped program and its random input.

    The program loads input ``X`` into the scratchpad (in one to three DMA uTOps), fills the HBM
    scratch slots from it, runs ``utops`` random uTOps, and stores the scratchpad area to output
    ``Y``, whose tail holds the HBM scratch slots.

    Parameters
    ----------
    config : ArchConfig or str
    seed : int
    utops : int
        Random uTOps between the initial loads and the final store.
    """
    cfg = get_config(config)
    rng = np.random.default_rng(seed)
    in_offset, out_offset = 0, AREA
    hbm_scratch = out_offset + AREA
    code_at = hbm_scratch + HBM_SLOTS * SLOT_BYTES
    gen = _Gen(cfg, rng, hbm_scratch)
    cuts = sorted(int(c) for c in rng.choice(np.arange(1, SLOTS), gen.int(0, 2), replace=False))
    for first, end in zip([0] + cuts, cuts + [SLOTS]):
        size = (end - first) * SLOT_BYTES
        gen.add(EngineClass.DMA, [Instr("dma.load", sram=first * SLOT_BYTES, hbm=in_offset + first * SLOT_BYTES,
                                        rows=1, row_bytes=size)],
                set(), {_sram(s * SLOT_BYTES) for s in range(first, end)})
    for scratch in range(HBM_SLOTS):
        slot = gen.slots(1)[0]
        gen.add(EngineClass.DMA, [Instr("dma.store", sram=slot, hbm=hbm_scratch + scratch * SLOT_BYTES, rows=1,
                                        row_bytes=SLOT_BYTES)], {_sram(slot)}, {("hbm", scratch)})
    for _ in range(utops):
        kind = gen.pick(("ve", "ve", "me", "dma", "gather"))
        if kind == "ve":
            gen.ve_utop()
        elif kind == "me":
            gen.me_utop()
        elif kind == "gather":
            gen.gather_utop(in_offset)
        else:
            gen.dma_utop(in_offset)
    gen.add(EngineClass.DMA, [Instr("dma.store", sram=0, hbm=out_offset, rows=1, row_bytes=AREA)],
            {_sram(s * SLOT_BYTES) for s in range(SLOTS)}, set())
    code = gen.builder.build(cfg)
    out_bytes = AREA + HBM_SLOTS * SLOT_BYTES
    symbols = [Symbol("X", "input", "i32", (AREA // 4,), in_offset, AREA),
               Symbol("Y", "output", "i32", (out_bytes // 4,), out_offset, out_bytes)]
    image = ProgramImage.for_config(cfg, code, entry=code_at, hbm_bytes=_up4(code_at + len(code)),
                                    sram_bytes=AREA, symbols=symbols)
    values = rng.integers(-(1 << 31), 1 << 31, AREA // 4, dtype=np.int64)
    small = rng.random(AREA // 4) < 0.5
    values[small] = rng.integers(-300, 300, int(small.sum()))
    return image, {"X": values.astype(np.int32)}
