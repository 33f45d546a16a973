"""Vector engine: VE instructions over ``rows × n`` elements, ``ve_lanes`` at a time."""

from amaranth.hdl import Cat, Mux, Signal, signed
from amaranth.lib import data

from tcloud.isa.errors import ConfigError
from tcloud.isa.table import FMA_BYTE_RESULTS, FMA_BYTE_SOURCES, BY_MNEMONIC, LUT_BYTES, EngineClass, FaultCode

from .decode import OPCODES
from tcloud.isa.cost import LUT_WORDS, lut_read_words, region_end

from .engine import Engine
from .vector_alu import VectorALU

_BINARY = ("ve.add", "ve.sub", "ve.mul", "ve.max", "ve.min")
_UNARY = ("ve.relu", "ve.copy")
_REDUCE = ("ve.redsum", "ve.redmax")
_INT32_MIN = -(1 << 31)


def _any_of(value, choices):
    """Whether ``value`` equals one of the integer ``choices``."""
    result = value == choices[0]
    for choice in choices[1:]:
        result = result | (value == choice)
    return result


def _row_words(n, is_i8):
    return Mux(is_i8, (n + 3) >> 2, n)


class VectorEngine(Engine):
    """Executes VE uTOps: for each row set by ``ve.shape`` and each chunk of ``ve_lanes`` elements,
    read the sources, evaluate :class:`~tcloud.rtl.vector_alu.VectorALU`, write the destination
    (int8 results with byte enables), or accumulate a row reduction.

    ``ve.lutload`` shifts its table into a ``LUT_BYTES``-byte register one scratchpad read of
    :func:`~tcloud.isa.cost.lut_read_words` words at a time; a flag cleared at every dispatch says a
    table was loaded in this uTOp (``ve.lut`` without it faults with ``VE_STATE``), so no table
    outlives its uTOp."""

    engine_class = EngineClass.VE
    prefetch = True

    def __init__(self, config):
        lanes = config.ve_lanes
        if lanes % 4 or lanes > config.sram_line_words:
            self._MustUse__used = True  # rejected, not forgotten: no UnusedElaboratable warning
            raise ConfigError(f"ve_lanes={lanes} must be a multiple of 4 and at most sram_line_words="
                              f"{config.sram_line_words} (one int32 chunk per scratchpad access)")
        super().__init__(config)

    def unit_state(self):
        return {"ve_rows": self._rows}

    def on_start(self, m):
        m.d.sync += [self._rows.eq(1), self._strides[0].eq(0), self._strides[1].eq(0),
                     self._strides[2].eq(0), self._src2_row.eq(0), self._lut_loaded.eq(0), self._fma_r.eq(0)]

    def elaborate(self, platform):
        field = BY_MNEMONIC["ve.shape"].field
        self._rows = Signal(field("rows").width, init=1)
        self._strides = [Signal(field(name).width, name=f"shape_{name}")
                         for name in ("dst_stride", "src1_stride", "src2_stride")]
        self._src2_row = Signal(name="shape_src2_row")
        self._lut = Signal(8 * LUT_BYTES, name="lut")
        self._lut_loaded = Signal(name="lut_loaded")
        self._fma_r = Signal(BY_MNEMONIC["ve.setf"].field("value").width, name="fma_r")
        m = super().elaborate(platform)
        m.submodules.alu = self._alu
        return m

    def execute(self, m, instr):
        lanes = self.config.ve_lanes
        self._alu = alu = VectorALU(lanes)
        opcode = instr.as_value()[:8]
        rows, (dst_stride, src1_stride, src2_stride), src2_row = self._rows, self._strides, self._src2_row
        op = Signal(8)
        dst, src1, src2 = Signal(24), Signal(24), Signal(24)
        n = Signal(16)
        src1_i8, src2_i8, dst_i8 = Signal(), Signal(), Signal()
        reduce_max = Signal()
        row = Signal(12)
        elem = Signal(17)
        x = Signal(data.ArrayLayout(signed(32), lanes))
        y = Signal(data.ArrayLayout(signed(32), lanes))
        acc = Signal(data.ArrayLayout(signed(32), lanes))
        count = Signal(range(lanes + 1))
        m.d.comb += count.eq(Mux(n - elem < lanes, n - elem, lanes))
        line = self.sram.rdata.as_value()
        m.d.comb += [alu.opcode.eq(op), alu.x.eq(x), alu.y.eq(y), alu.dst_i8.eq(dst_i8),
                     alu.mult.eq(instr.ve_requant.mult), alu.shift.eq(instr.ve_requant.shift),
                     alu.zp.eq(Mux(op == OPCODES["ve.requantf"], instr.ve_requantf.zp, instr.ve_requant.zp)),
                     alu.table.eq(self._lut), alu.fma_r.eq(self._fma_r), alu.fma_src1.eq(instr.ve_fma.src1_kind),
                     alu.fma_dst.eq(Mux(op == OPCODES["ve.fmav"], instr.ve_fmav.dst_kind, instr.ve_fma.dst_kind))]

        def region(addr, is_i8, stride, count):
            return region_end(addr, rows, stride, _row_words(count, is_i8))

        def src2_region(addr, is_i8, count):
            """The second source's region: one element per row with ve.shape.src2_row."""
            return region(addr, is_i8, src2_stride, Mux(src2_row, 1, count))

        with m.State("EXECUTE"):
            m.d.comb += self.busy.eq(1)
            m.d.sync += [op.eq(opcode), row.eq(0), elem.eq(0)]
            with m.Switch(opcode):
                with m.Case(OPCODES["ve.shape"]):
                    shape = instr.ve_shape
                    m.d.sync += [rows.eq(shape.rows), dst_stride.eq(shape.dst_stride),
                                 src1_stride.eq(shape.src1_stride), src2_stride.eq(shape.src2_stride),
                                 src2_row.eq(shape.src2_row)]
                    m.next = "NEXT"
                with m.Case(*(OPCODES[name] for name in _BINARY)):
                    v = instr.ve_add
                    m.d.sync += [dst.eq(v.dst), src1.eq(v.src1), src2.eq(v.src2), n.eq(v.n),
                                 src1_i8.eq(v.src1_i8), src2_i8.eq(v.src2_i8), dst_i8.eq(v.dst_i8)]
                    ok = (self.sram_fits(region(v.src1, v.src1_i8, src1_stride, v.n))
                          & self.sram_fits(src2_region(v.src2, v.src2_i8, v.n))
                          & self.sram_fits(region(v.dst, v.dst_i8, dst_stride, v.n)))
                    self._start_or_fault(m, ok, "VE_READ1")
                with m.Case(*(OPCODES[name] for name in _UNARY)):
                    v = instr.ve_relu
                    m.d.sync += [dst.eq(v.dst), src1.eq(v.src), n.eq(v.n), src1_i8.eq(v.src_i8),
                                 dst_i8.eq(v.dst_i8)]
                    ok = (self.sram_fits(region(v.src, v.src_i8, src1_stride, v.n))
                          & self.sram_fits(region(v.dst, v.dst_i8, dst_stride, v.n)))
                    self._start_or_fault(m, ok, "VE_READ1")
                with m.Case(OPCODES["ve.fill"]):
                    v = instr.ve_fill
                    m.d.sync += [dst.eq(v.dst), n.eq(v.n), dst_i8.eq(v.dst_i8)]
                    m.d.sync += [x[lane].eq(v.value) for lane in range(lanes)]
                    self._start_or_fault(m, self.sram_fits(region(v.dst, v.dst_i8, dst_stride, v.n)), "VE_APPLY")
                with m.Case(OPCODES["ve.requant"]):
                    v = instr.ve_requant
                    m.d.sync += [dst.eq(v.dst), src1.eq(v.src), n.eq(v.n), src1_i8.eq(0), dst_i8.eq(v.dst_i8)]
                    ok = (self.sram_fits(region(v.src, 0, src1_stride, v.n))
                          & self.sram_fits(region(v.dst, v.dst_i8, dst_stride, v.n)))
                    self._start_or_fault(m, ok, "VE_READ1")
                with m.Case(OPCODES["ve.requantf"]):
                    v = instr.ve_requantf
                    m.d.sync += [dst.eq(v.dst), src1.eq(v.src1), src2.eq(v.src2), n.eq(v.n), src1_i8.eq(0),
                                 src2_i8.eq(0), dst_i8.eq(v.dst_i8)]
                    ok = (self.sram_fits(region(v.src1, 0, src1_stride, v.n))
                          & self.sram_fits(src2_region(v.src2, 0, v.n))
                          & self.sram_fits(region(v.dst, v.dst_i8, dst_stride, v.n)))
                    self._start_or_fault(m, ok, "VE_READ1")
                with m.Case(OPCODES["ve.setf"]):
                    m.d.sync += self._fma_r.eq(instr.ve_setf.value)
                    m.next = "NEXT"
                with m.Case(OPCODES["ve.fma"], OPCODES["ve.fmav"]):
                    v = instr.ve_fma  # ve.fmav: the same fields up to src1_kind, always reads src2
                    no_addend = (opcode == OPCODES["ve.fma"]) & v.src2_zero
                    dst_kind = Mux(opcode == OPCODES["ve.fmav"], instr.ve_fmav.dst_kind, v.dst_kind)
                    byte_source = _any_of(v.src1_kind, FMA_BYTE_SOURCES)
                    byte_result = _any_of(dst_kind, FMA_BYTE_RESULTS)
                    m.d.sync += [dst.eq(v.dst), src1.eq(v.src1), src2.eq(v.src2), n.eq(v.n),
                                 src1_i8.eq(byte_source), src2_i8.eq(0), dst_i8.eq(byte_result)]
                    with m.If(no_addend):  # no addend: +0.0, and src2 is not read
                        m.d.sync += [y[lane].eq(0) for lane in range(lanes)]
                    ok = (self.sram_fits(region(v.src1, byte_source, src1_stride, v.n))
                          & (no_addend | self.sram_fits(src2_region(v.src2, 0, v.n)))
                          & self.sram_fits(region(v.dst, byte_result, dst_stride, v.n)))
                    self._start_or_fault(m, ok, "VE_READ1")
                with m.Case(*(OPCODES[name] for name in _REDUCE)):
                    v = instr.ve_redsum
                    m.d.sync += [dst.eq(v.dst), src1.eq(v.src), n.eq(v.n), src1_i8.eq(v.src_i8),
                                 reduce_max.eq(opcode == OPCODES["ve.redmax"])]
                    ok = (self.sram_fits(region(v.src, v.src_i8, src1_stride, v.n))
                          & self.sram_fits(region_end(v.dst, rows, dst_stride, 1)))
                    self._start_or_fault(m, ok, "VE_READ1")
                with m.Case(OPCODES["ve.lutload"]):
                    m.d.sync += src1.eq(instr.ve_lutload.src)
                    self._start_or_fault(m, self.sram_fits(region_end(instr.ve_lutload.src, 1, 0, LUT_WORDS)),
                                         "VE_LUT_READ")
                with m.Case(OPCODES["ve.lut"]):
                    v = instr.ve_lut
                    m.d.sync += [dst.eq(v.dst), src1.eq(v.src), n.eq(v.n), src1_i8.eq(1), dst_i8.eq(1)]
                    ok = (self.sram_fits(region(v.src, 1, src1_stride, v.n))
                          & self.sram_fits(region(v.dst, 1, dst_stride, v.n)))
                    with m.If(~self._lut_loaded):
                        self.raise_fault(m, FaultCode.VE_STATE)
                    with m.Else():
                        self._start_or_fault(m, ok, "VE_READ1")

        is_reduce = (op == OPCODES["ve.redsum"]) | (op == OPCODES["ve.redmax"])
        is_binary = op == OPCODES["ve.requantf"]  # two sources: accumulators and scale words
        is_binary = is_binary | ((op == OPCODES["ve.fma"]) & ~instr.ve_fma.src2_zero)  # and an addend
        is_binary = is_binary | (op == OPCODES["ve.fmav"])  # and multipliers
        for name in _BINARY:
            is_binary = is_binary | (op == OPCODES[name])

        def chunk_addr(base, stride, is_i8, per_row=0):
            return self.sram_addr(base + row * stride + Mux(per_row, 0, Mux(is_i8, elem >> 2, elem)))

        def capture(target, is_i8, per_row=0):
            for lane in range(lanes):
                byte, word = line[8 * lane:8 * lane + 8], line[32 * lane:32 * lane + 32]
                if lane:  # with per_row, the row's one element goes to every lane
                    byte, word = Mux(per_row, line[:8], byte), Mux(per_row, line[:32], word)
                m.d.sync += target[lane].eq(Mux(is_i8, byte.as_signed(), word.as_signed()))

        with m.State("VE_READ1"):
            m.d.comb += [self.busy.eq(1), self.sram.valid.eq(1),
                         self.sram.addr.eq(chunk_addr(src1, src1_stride, src1_i8)),
                         self.sram.words.eq(Mux(src1_i8, (count + 3) >> 2, count))]
            with m.If(self.sram.ready):
                m.next = "VE_WAIT1"
        with m.State("VE_WAIT1"):
            m.d.comb += self.busy.eq(1)
            with m.If(self.sram.rvalid):
                capture(x, src1_i8)
                with m.If(is_binary):
                    m.next = "VE_READ2"
                with m.Elif(is_reduce):
                    m.next = "VE_ACCUMULATE"
                with m.Else():
                    m.next = "VE_APPLY"
        with m.State("VE_READ2"):
            m.d.comb += [self.busy.eq(1), self.sram.valid.eq(1),
                         self.sram.addr.eq(chunk_addr(src2, src2_stride, src2_i8, src2_row)),
                         self.sram.words.eq(Mux(src2_row, 1, Mux(src2_i8, (count + 3) >> 2, count)))]
            with m.If(self.sram.ready):
                m.next = "VE_WAIT2"
        with m.State("VE_WAIT2"):
            m.d.comb += self.busy.eq(1)
            with m.If(self.sram.rvalid):
                capture(y, src2_i8, src2_row)
                m.next = "VE_APPLY"

        with m.State("VE_APPLY"):
            m.d.comb += [self.busy.eq(1), self.sram.valid.eq(1), self.sram.we.eq(1),
                         self.sram.addr.eq(chunk_addr(dst, dst_stride, dst_i8))]
            for lane in range(lanes):
                value = alu.result[lane]
                with m.If(dst_i8):
                    m.d.comb += self.sram.wdata.as_value()[8 * lane:8 * lane + 8].eq(value[:8])
                    m.d.comb += self.sram.wmask.as_value()[lane].eq(lane < count)
                with m.Else():
                    m.d.comb += [self.sram.wdata[lane].eq(value),
                                 self.sram.wmask[lane].eq(Mux(lane < count, 0b1111, 0))]
            with m.If(self.sram.ready):
                m.d.comb += self.count_ve.eq(count)
                with m.If(elem + lanes < n):
                    m.d.sync += elem.eq(elem + lanes)
                    self._next_chunk_state(m, op)
                with m.Elif(row + 1 < rows):
                    m.d.sync += [elem.eq(0), row.eq(row + 1)]
                    self._next_chunk_state(m, op)
                with m.Else():
                    m.next = "NEXT"
            self._abort_point(m)

        with m.State("VE_ACCUMULATE"):
            m.d.comb += [self.busy.eq(1), self.count_ve.eq(count)]
            for lane in range(lanes):
                valid = lane < count
                item = Mux(valid, x[lane], Mux(reduce_max, _INT32_MIN, 0))
                combined = Mux(reduce_max, Mux(item > acc[lane], item, acc[lane]), acc[lane] + item)
                m.d.sync += acc[lane].eq(Mux(elem == 0, item, combined))
            with m.If(elem + lanes >= n):
                m.next = "VE_REDUCE_WRITE"
            with m.Else():
                m.d.sync += elem.eq(elem + lanes)
                m.next = "VE_READ1"
            self._abort_point(m)
        with m.State("VE_REDUCE_WRITE"):
            total = acc[0]
            for lane in range(1, lanes):
                total = Mux(reduce_max, Mux(acc[lane] > total, acc[lane], total), (total + acc[lane])[:32].as_signed())
            m.d.comb += [self.busy.eq(1), self.sram.valid.eq(1), self.sram.we.eq(1),
                         self.sram.addr.eq(self.sram_addr(dst + row * dst_stride)),
                         self.sram.wdata[0].eq(total), self.sram.wmask[0].eq(0b1111)]
            with m.If(self.sram.ready):
                m.d.sync += elem.eq(0)
                with m.If(row + 1 == rows):
                    m.next = "NEXT"
                with m.Else():
                    m.d.sync += row.eq(row + 1)
                    m.next = "VE_READ1"
            self._abort_point(m)

        self._lut_load(m, src1, elem, line)

    def _lut_load(self, m, src, elem, line):
        """``ve.lutload``: read the table a line at a time (``elem`` counts its words), shifting each
        read in at the top of the table register, so the last read ends at the top and the first at
        the bottom; abortable between reads."""
        chunk = lut_read_words(self.config)
        with m.State("VE_LUT_READ"):
            m.d.comb += [self.busy.eq(1), self.sram.valid.eq(1), self.sram.addr.eq(self.sram_addr(src + elem)),
                         self.sram.words.eq(chunk)]
            with m.If(self.sram.ready):
                m.next = "VE_LUT_WAIT"
        with m.State("VE_LUT_WAIT"):
            m.d.comb += self.busy.eq(1)
            with m.If(self.sram.rvalid):
                m.d.sync += self._lut.eq(Cat(self._lut[32 * chunk:], line[:32 * chunk]))
                with m.If(elem + chunk >= LUT_WORDS):
                    m.d.sync += self._lut_loaded.eq(1)
                    m.next = "NEXT"
                with m.Else():
                    m.d.sync += elem.eq(elem + chunk)
                    m.next = "VE_LUT_READ"
                    self._abort_point(m)

    def _abort_point(self, m):
        """Stop after the current chunk when the uTOp is aborted (a write in flight is harmless)."""
        with m.If(self._stop):
            self.end_aborted(m)

    def _start_or_fault(self, m, ok, state):
        with m.If(ok):
            m.next = state
        with m.Else():
            self.raise_fault(m, FaultCode.SRAM_BOUNDS)

    @staticmethod
    def _next_chunk_state(m, op):
        with m.If(op == OPCODES["ve.fill"]):
            m.next = "VE_APPLY"
        with m.Else():
            m.next = "VE_READ1"
