"""Banked scratchpad: SRAM banks with one read and one write port each, behind a crossbar.

The scratchpad is ``sram_banks`` banks of ``sram_line_words``-word rows; line ``l`` (word addresses
``l·L .. l·L + L - 1``, ``L = sram_line_words``) is row ``l // sram_banks`` of bank
``(l + l // sram_banks) % sram_banks`` (skewed interleaving, :func:`bank_of`). Each bank is a
simple dual-port memory (one read port, one write port: an SRAM macro or an FPGA block RAM in
simple-dual-port mode) with byte write enables.

A requester's access covers up to ``L`` consecutive words at any word alignment, so it touches one
line, or two consecutive lines, which lie in two different banks. Reads and writes are arbitrated
separately (a bank serves one read and one write per cycle): each cycle the requesters are visited
in a rotating order and one is granted when every bank it needs is still free, so an access takes
both its lines in the same cycle or waits. Reads of the same line share the bank's read (the row
is read once and every reader takes its words from it), so engines streaming one operand — MEs
reading the same activation rows for different output columns — do not serialise. The order starts at the first requester refused in the
previous cycle, so a requester waits at most one cycle for each other requester of its kind
(reads, or writes) — :func:`access_wait` — and requesters touching different banks proceed in the
same cycle.

Port budget, ``small`` (4 MEs, 2 VEs, 2 DMAs, 16 banks): per bank 1 read + 1 write port; per
engine one requester port (DMA, VE, ME) plus the ME's weight loader (a second, read-only port) and
the host's scrubber (write-only): 13 requesters, up to 16 line reads and 16 line writes per cycle
when they touch different banks.
"""

import functools
import operator

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out


def _or(values):
    return functools.reduce(operator.or_, values)


def sram_addr_bits(config):
    """Bits of a scratchpad word address."""
    return max(1, (config.sram_bytes // 4 - 1).bit_length())


def sram_port_signature(config):
    """One requester's port, seen from the requester.

    A request (``valid`` with ``addr``, ``we``, ``words``, ``wdata``, ``wmask``) is taken in the
    cycle ``ready`` is high; until then it holds. It covers up to ``sram_line_words`` consecutive
    words from word address ``addr`` (lane ``i`` is the word at ``addr + i``): a read the first
    ``words`` of them (at least one), a write the bytes ``wmask`` enables (4 bits per lane). A read's
    ``rdata`` is valid in the next cycle, while ``rvalid`` is high.
    """
    lanes = config.sram_line_words
    return wiring.Signature({
        "valid": Out(1),
        "ready": In(1),
        "addr": Out(sram_addr_bits(config)),
        "we": Out(1),
        "words": Out(range(lanes + 1)),
        "wdata": Out(data.ArrayLayout(32, lanes)),
        "wmask": Out(data.ArrayLayout(4, lanes)),
        "rvalid": In(1),
        "rdata": In(data.ArrayLayout(32, lanes)),
    })


def bank_of(line, bank_bits):
    """Bank of scratchpad line ``line`` (an int or a Value): consecutive lines go to consecutive
    banks, and each further round of ``2 ** bank_bits`` lines starts one bank later (skewed
    interleaving). A power-of-two stride of whole rounds, which a tile's rows have when its width is
    a power of two, would otherwise put every row in one bank; skewed, they walk the banks. Two
    consecutive lines are always in different banks (one or two apart)."""
    skewed = line + (line >> bank_bits)
    return skewed % (1 << bank_bits) if isinstance(line, int) else skewed[:bank_bits]


def access_wait(requesters):
    """Cycles an access may wait for its banks when ``requesters`` ports may compete with it."""
    return requesters - 1


class Scratchpad(wiring.Component):
    """The banked scratchpad with ``ports`` requester ports (``port0`` ... ``port{n-1}``).

    A read sees every write granted in an earlier cycle; a read and a write of one word granted in
    the same cycle read the old value; two writes of one word never share a cycle (the write port
    serves one). See the module docstring for the organisation and the arbitration.

    Parameters
    ----------
    config : ArchConfig
    ports : int
    """

    def __init__(self, config, ports):
        self.config, self.ports = config, ports
        self.lanes, self.banks = config.sram_line_words, config.sram_banks
        self.depth = config.sram_bytes // (4 * self.lanes * self.banks)
        super().__init__({f"port{i}": In(sram_port_signature(config)) for i in range(ports)})

    def port(self, index):
        return getattr(self, f"port{index}")

    def elaborate(self, platform):
        m = Module()
        lanes, banks = self.lanes, self.banks
        lane_bits, bank_bits = (lanes - 1).bit_length(), (banks - 1).bit_length()
        ports = [self.port(i) for i in range(self.ports)]

        requests = [self._decode(m, i, p, lane_bits, bank_bits) for i, p in enumerate(ports)]
        read_grant = self._allocate(m, "read", [p.valid & ~p.we for p in ports],
                                    self._conflicts(m, "read", requests, share_lines=True))
        write_grant = self._allocate(m, "write", [p.valid & p.we for p in ports],
                                     self._conflicts(m, "write", requests, share_lines=False))
        for i, p in enumerate(ports):
            m.d.comb += p.ready.eq(read_grant[i] | write_grant[i])

        bank_data = []
        for b in range(banks):
            mem = memory.Memory(shape=32 * lanes, depth=self.depth, init=[])
            m.submodules[f"bank{b}"] = mem
            read, write = mem.read_port(), mem.write_port(granularity=8)
            rows = [Mux(r["bank0"] == b, r["row0"], r["row1"]) for r in requests]
            reads = [read_grant[i] & r["banks"][b] for i, r in enumerate(requests)]
            writes = [write_grant[i] & r["banks"][b] for i, r in enumerate(requests)]
            writer = Signal(range(len(requests)), name=f"bank{b}_writer")  # writes never share a bank
            m.d.comb += writer.eq(_or(Mux(w, i, 0) for i, w in enumerate(writes)))
            wmask = [Mux(r["bank0"] == b, r["wmask0"], r["wmask1"]) for r in requests]
            m.d.comb += [read.addr.eq(_or(Mux(hit, row, 0) for hit, row in zip(reads, rows))),
                         read.en.eq(Cat(reads).any()),
                         write.addr.eq(Array(rows)[writer]), write.data.eq(Array(r["wdata"] for r in requests)[writer]),
                         write.en.eq(Mux(Cat(writes).any(), Array(wmask)[writer], 0))]
            bank_data.append(read.data)

        for i, p in enumerate(ports):
            offset = Signal(max(1, lane_bits), name=f"port{i}_read_offset")
            banks_read = [Signal(bank_bits, name=f"port{i}_read_bank{n}") for n in range(2)]
            m.d.sync += p.rvalid.eq(read_grant[i])
            with m.If(read_grant[i]):
                m.d.sync += [offset.eq(requests[i]["offset"]), banks_read[0].eq(requests[i]["bank0"]),
                             banks_read[1].eq(requests[i]["bank1"])]
            lines = Cat(Array(bank_data)[banks_read[0]], Array(bank_data)[banks_read[1]])
            m.d.comb += p.rdata.eq(lines.bit_select(offset * 32, 32 * lanes))
        return m

    def _decode(self, m, index, port, lane_bits, bank_bits):
        """Split a request into its lines: banks, rows, and the write data and masks per line."""
        lanes, banks = self.lanes, self.banks
        offset = port.addr[:lane_bits] if lane_bits else Const(0, 1)
        line = port.addr[lane_bits:]
        used = Signal(lanes, name=f"port{index}_lanes")
        for lane in range(lanes):
            m.d.comb += used[lane].eq(Mux(port.we, port.wmask[lane] != 0, lane < port.words))
        in_first = Signal(lanes, name=f"port{index}_first_line_lanes")  # lane + offset < lanes
        m.d.comb += in_first.eq(Const((1 << lanes) - 1, lanes) >> offset)
        need0, need1 = (used & in_first).any(), (used & ~in_first).any()
        bank0, bank1 = Signal(bank_bits, name=f"port{index}_bank0"), Signal(bank_bits, name=f"port{index}_bank1")
        m.d.comb += [bank0.eq(bank_of(line, bank_bits)), bank1.eq(bank_of(line + 1, bank_bits))]
        bank_set = Signal(banks, name=f"port{index}_banks")
        m.d.comb += bank_set.eq((need0 << bank0) | (need1 << bank1))

        def rotate(value, width):  # line position w holds lane (w - offset) mod lanes
            if not lane_bits:
                return value
            return Cat(value, value).bit_select((lanes - offset)[:lane_bits] * width, width * lanes)

        byte_mask = rotate(port.wmask.as_value(), 4)
        first_words = Signal(lanes, name=f"port{index}_first_line_words")  # line positions >= offset
        m.d.comb += first_words.eq(Const((1 << lanes) - 1, lanes) << offset)
        first_positions = Cat(first_words[w].replicate(4) for w in range(lanes))
        return {
            "offset": offset, "bank0": bank0, "bank1": bank1, "banks": bank_set,
            "lines": (line, line + 1), "needs": (need0, need1),
            "row0": line[bank_bits:], "row1": (line + 1)[bank_bits:],
            "wdata": rotate(port.wdata.as_value(), 32),
            "wmask0": byte_mask & first_positions, "wmask1": byte_mask & ~first_positions,
        }

    def _conflicts(self, m, kind, requests, share_lines):
        """``conflict[i][j]``: requests ``i`` and ``j`` cannot be served in the same cycle — they need a
        common bank, and (given ``share_lines``) not for the same line, whose one read both share."""
        count = len(requests)
        conflict = [[None] * count for _ in range(count)]
        for i in range(count):
            for j in range(i + 1, count):
                ri, rj = requests[i], requests[j]
                if share_lines:
                    clash = Cat(ri["needs"][a] & rj["needs"][b] & (ri[f"bank{a}"] == rj[f"bank{b}"])
                                & (ri["lines"][a] != rj["lines"][b]) for a in range(2) for b in range(2)).any()
                else:
                    clash = (ri["banks"] & rj["banks"]).any()
                pair = Signal(name=f"{kind}_conflict{i}_{j}")
                m.d.comb += pair.eq(clash)
                conflict[i][j] = conflict[j][i] = pair
        return conflict

    def _allocate(self, m, kind, wants, conflict):
        """Grant requests in a rotating order, each only if it conflicts with none granted before
        it (:meth:`_conflicts`). The next order starts at the first requester refused."""
        count = len(wants)
        start = Signal(range(count), name=f"{kind}_start")
        grants = [Const(0, 1)] * count
        refused, first_refused = Const(0, 1), Const(0, range(count))
        for before_start in (False, True):
            for i in range(count):
                eligible = wants[i] & ((i < start) if before_start else (i >= start))
                blocked = Cat(grants[j] & conflict[i][j] for j in range(count) if j != i).any()
                ok = Signal(name=f"{kind}_ok{i}_{int(before_start)}")
                m.d.comb += ok.eq(eligible & ~blocked)
                grants[i] = grants[i] | ok
                denied = eligible & ~ok
                first_refused = Mux(denied & ~refused, i, first_refused)
                refused = refused | denied
        with m.If(refused):
            m.d.sync += start.eq(first_refused)
        granted = [Signal(name=f"{kind}_grant{i}") for i in range(count)]
        m.d.comb += [g.eq(v) for g, v in zip(granted, grants)]
        return granted
