"""Edges of four guarantees, on the golden model and both RTL backends: ``ctx.scrub`` zeroes a
context's windows up to their last byte and nothing outside them; window bounds are byte-exact (an
access that ends on the window's end runs, the smallest overrun faults and writes nothing); wait
slots naming the same token add up; and the ``operator`` policy never lets two contexts use engines
of the same class in the same cycle."""

import numpy as np
import pytest

from tcloud.isa import ContextStatus, EngineClass, FaultCode, Instr, encode_stream, get_config
from tcloud.isa import csr, host_protocol
from tcloud.runtime import FunctionalDevice
from tcloud.runtime.backends.amaranth import AmaranthDevice
from tcloud.runtime.backends.perf import PerfDevice
from tcloud.runtime.backends.verilator import VerilatorDevice

from conftest import utop

pytestmark = pytest.mark.slow  # edge cases on both RTL backends

BACKENDS = {"functional": FunctionalDevice, "amaranth": AmaranthDevice, "verilator": VerilatorDevice,
            "perf": PerfDevice}
RTL_BACKENDS = ("amaranth", "verilator")
MAX_CYCLES = 200_000
GUARD = 16
"""Bytes watched on each side of a window."""

HELPER = 1
HELPER_HBM_BASE, HELPER_HBM_SIZE, HELPER_CODE = 0xE00000, 0x10000, 0x8000
"""Context 1 fills and dumps the scratchpad for the tests (its window is the whole scratchpad)."""


def close(device):
    if hasattr(device, "close"):
        device.close()


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def device(request):
    """One ``tiny`` device per backend, shared by the tests of this module (each configures what it uses);
    the performance model keeps the same guarantees as the RTL it models."""
    dev = BACKENDS[request.param]("tiny")
    yield dev
    close(dev)


def run_context(device, ctx, program, *, hbm_base, hbm_size, sram_base, sram_size, code_at):
    """Give context ``ctx`` its windows, load ``program`` (plus ``halt``) at ``code_at``, run it to
    the end and return its :class:`~tcloud.runtime.ContextInfo`."""
    device.host(Instr("ctx.hbm", ctx=ctx, base=hbm_base, size=hbm_size))
    device.host(Instr("ctx.sram", ctx=ctx, base=sram_base, size=sram_size))
    device.write_hbm(hbm_base + code_at, encode_stream(program + [Instr("halt")]))
    device.host(Instr("ctx.start", ctx=ctx, pc=code_at))
    assert device.run(max_cycles=MAX_CYCLES)
    return device.context(ctx)


def dma(mnemonic, **fields):
    return utop(EngineClass.DMA, [Instr(mnemonic, **fields)])


def helper_dma(device, mnemonic, sram, size):
    info = run_context(device, HELPER, dma(mnemonic, sram=sram, hbm=0, rows=1, row_bytes=size),
                       hbm_base=HELPER_HBM_BASE, hbm_size=HELPER_HBM_SIZE, sram_base=0,
                       sram_size=device.config.sram_bytes, code_at=HELPER_CODE)
    assert info.status == ContextStatus.DONE, info


def poke_sram(device, address, data):
    """Write ``data`` to physical scratchpad ``address`` (through a DMA of the helper context)."""
    device.write_hbm(HELPER_HBM_BASE, data)
    helper_dma(device, "dma.load", address, len(data))


def peek_sram(device, address, size):
    """Read ``size`` bytes of physical scratchpad from ``address`` (through the helper context)."""
    helper_dma(device, "dma.store", address, size)
    return np.frombuffer(device.read_hbm(HELPER_HBM_BASE, size), np.uint8).copy()


def nonzero_bytes(rng, size):
    return rng.integers(1, 256, size, dtype=np.uint8)


def read_bytes(device, address, size):
    return np.frombuffer(device.read_hbm(address, size), np.uint8).copy()


# --- 1. ctx.scrub reaches the last word of each window and stops there ----------------------------


SCRUB_WINDOWS = {
    # name: (sram_base, sram_size, hbm_base, hbm_size)
    "aligned": (0x2000, 0x400, 0x60000, 0x800),
    "unaligned": (0x2004, 0x3F4, 0x60004, 0x7F4),  # neither base nor end on a bank or HBM-beat boundary
    "one_word": (0x2FFC, 0x4, 0x6FFFC, 0x4),
}


@pytest.mark.parametrize("window", sorted(SCRUB_WINDOWS))
def test_scrub_zeroes_each_window_to_its_last_byte_and_nothing_outside(device, window):
    sram_base, sram_size, hbm_base, hbm_size = SCRUB_WINDOWS[window]
    rng = np.random.default_rng(len(window))
    sram_before = nonzero_bytes(rng, sram_size + 2 * GUARD)
    hbm_before = nonzero_bytes(rng, hbm_size + 2 * GUARD)
    poke_sram(device, sram_base - GUARD, sram_before)
    device.write_hbm(hbm_base - GUARD, hbm_before)
    device.host(Instr("ctx.hbm", ctx=0, base=hbm_base, size=hbm_size))
    device.host(Instr("ctx.sram", ctx=0, base=sram_base, size=sram_size))
    device.host(Instr("ctx.scrub", ctx=0))
    for before, after, size in ((sram_before, peek_sram(device, sram_base - GUARD, sram_size + 2 * GUARD), sram_size),
                                (hbm_before, read_bytes(device, hbm_base - GUARD, hbm_size + 2 * GUARD), hbm_size)):
        expected = before.copy()
        expected[GUARD:GUARD + size] = 0
        assert np.array_equal(after[:GUARD], expected[:GUARD]), "scrub wrote below the window"
        assert not after[GUARD:GUARD + size].any(), f"non-zero bytes left at window offsets " \
            f"{[hex(i) for i in np.flatnonzero(after[GUARD:GUARD + size])][:8]}"
        assert np.array_equal(after[GUARD + size:], expected[GUARD + size:]), "scrub wrote past the window"


# --- 2. byte-exact window bounds -------------------------------------------------------------------


SRAM_BASE, SRAM_SIZE = 0x1000, 0x400
HBM_BASE, HBM_SIZE, CODE = 0x40000, 0x1000, 0x800
S, H = SRAM_SIZE, HBM_SIZE


def as_i8(raw):
    return raw.view(np.int8).astype(np.int64)


def put_i32(memory, addr, values):
    data = np.asarray(values, np.int64).astype("<i4").view(np.uint8).ravel()
    memory[addr:addr + data.size] = data


def loadw_then_matmul(w, k, n, a, m, out, a_stride=4, out_stride=16):
    return utop(EngineClass.ME, [Instr("me.loadw", w=w, k=k, n=n, w_stride=4),
                                 Instr("me.matmul", a=a, out=out, m=m, a_stride=a_stride, out_stride=out_stride)])


def ve(*body):
    return utop(EngineClass.VE, list(body))


def effect_load_hbm_end(s, h):
    s[0:8] = h[H - 8:H]


def effect_load_hbm_end_strided(s, h):
    s[0x10:0x28] = np.concatenate([h[H - 0x28:H - 0x20], h[H - 0x18:H - 0x10], h[H - 8:H]])


def effect_load_sram_end(s, h):
    s[S - 8:S] = h[0x100:0x108]


def effect_store_hbm_end(s, h):
    h[H - 8:H] = s[0:8]


def effect_store_sram_end(s, h):
    h[0x100:0x108] = s[S - 8:S]


def effect_fill_int8(s, h):
    s[S - 4:S] = np.uint8(0xFD)


def effect_fill_int8_rows(s, h):
    s[S - 12:S - 8] = 5
    s[S - 4:S] = 5


def effect_copy_int8(s, h):
    s[0:4] = s[S - 4:S]


def effect_weights_at_end(s, h):
    put_i32(s, 0x40, as_i8(s[0:4]).reshape(1, 4) @ as_i8(s[S - 16:S]).reshape(4, 4))


def effect_input_at_end(s, h):
    put_i32(s, 0x40, as_i8(s[S - 16:S]).reshape(4, 4) @ as_i8(s[0:16]).reshape(4, 4))


def effect_output_at_end(s, h):
    put_i32(s, S - 16, as_i8(s[0:4]).reshape(1, 4) @ as_i8(s[0:16]).reshape(4, 4))


BOUNDS_CASES = {
    # name: (uTOp ending exactly at the window's end, its smallest overrun, fault, index of the
    #        faulting body instruction, effect of the fitting uTOp on (scratchpad, HBM) windows)
    "dma_load_reads_hbm_end": (
        dma("dma.load", sram=0, hbm=H - 8, rows=1, row_bytes=8),
        dma("dma.load", sram=0, hbm=H - 4, rows=1, row_bytes=8),
        FaultCode.HBM_BOUNDS, 0, effect_load_hbm_end),
    "dma_load_reads_hbm_end_strided": (
        dma("dma.load", sram=0x10, hbm=H - 0x28, rows=3, row_bytes=8, hbm_stride=16, sram_stride=8),
        dma("dma.load", sram=0x10, hbm=H - 0x24, rows=3, row_bytes=8, hbm_stride=16, sram_stride=8),
        FaultCode.HBM_BOUNDS, 0, effect_load_hbm_end_strided),
    "dma_load_writes_sram_end": (
        dma("dma.load", sram=S - 8, hbm=0x100, rows=1, row_bytes=8),
        dma("dma.load", sram=S - 4, hbm=0x100, rows=1, row_bytes=8),
        FaultCode.SRAM_BOUNDS, 0, effect_load_sram_end),
    "dma_store_writes_hbm_end": (
        dma("dma.store", sram=0, hbm=H - 8, rows=1, row_bytes=8),
        dma("dma.store", sram=0, hbm=H - 4, rows=1, row_bytes=8),
        FaultCode.HBM_BOUNDS, 0, effect_store_hbm_end),
    "dma_store_reads_sram_end": (
        dma("dma.store", sram=S - 8, hbm=0x100, rows=1, row_bytes=8),
        dma("dma.store", sram=S - 4, hbm=0x100, rows=1, row_bytes=8),
        FaultCode.SRAM_BOUNDS, 0, effect_store_sram_end),
    "ve_fill_int8_writes_sram_end": (
        ve(Instr("ve.fill", dst=S - 4, n=4, value=-3, dst_i8=1)),
        ve(Instr("ve.fill", dst=S - 4, n=5, value=-3, dst_i8=1)),  # one byte over
        FaultCode.SRAM_BOUNDS, 0, effect_fill_int8),
    "ve_fill_int8_rows_write_sram_end": (
        ve(Instr("ve.shape", rows=2, dst_stride=8), Instr("ve.fill", dst=S - 12, n=4, value=5, dst_i8=1)),
        ve(Instr("ve.shape", rows=2, dst_stride=8), Instr("ve.fill", dst=S - 12, n=5, value=5, dst_i8=1)),
        FaultCode.SRAM_BOUNDS, 1, effect_fill_int8_rows),
    "ve_copy_int8_reads_sram_end": (
        ve(Instr("ve.copy", dst=0, src=S - 4, n=4, src_i8=1, dst_i8=1)),
        ve(Instr("ve.copy", dst=0, src=S - 4, n=5, src_i8=1, dst_i8=1)),
        FaultCode.SRAM_BOUNDS, 0, effect_copy_int8),
    "me_loadw_reads_sram_end": (
        loadw_then_matmul(w=S - 16, k=4, n=4, a=0, m=1, out=0x40),
        loadw_then_matmul(w=S - 12, k=4, n=1, a=0, m=1, out=0x40),  # (k-1)*4 + n ends one byte over
        FaultCode.SRAM_BOUNDS, 0, effect_weights_at_end),
    "me_matmul_reads_sram_end": (
        loadw_then_matmul(w=0, k=4, n=4, a=S - 16, m=4, out=0x40),
        loadw_then_matmul(w=0, k=1, n=4, a=S - 12, m=4, out=0x40),  # rows of k=1 byte: one byte over
        FaultCode.SRAM_BOUNDS, 1, effect_input_at_end),
    "me_matmul_writes_sram_end": (
        loadw_then_matmul(w=0, k=4, n=4, a=0, m=1, out=S - 16),
        loadw_then_matmul(w=0, k=4, n=4, a=0, m=1, out=S - 12),
        FaultCode.SRAM_BOUNDS, 1, effect_output_at_end),
}


def run_bounds_case(device, program, seed):
    """Fill the context-0 windows and GUARD bytes around them, run ``program`` in context 0 and return
    (its ContextInfo, scratchpad and HBM bytes before, and after, each covering the window ± GUARD)."""
    rng = np.random.default_rng(seed)
    sram_before = nonzero_bytes(rng, S + 2 * GUARD)
    poke_sram(device, SRAM_BASE - GUARD, sram_before)
    device.write_hbm(HBM_BASE - GUARD, nonzero_bytes(rng, H + 2 * GUARD))
    device.write_hbm(HBM_BASE + CODE, encode_stream(program + [Instr("halt")]))
    hbm_before = read_bytes(device, HBM_BASE - GUARD, H + 2 * GUARD)
    info = run_context(device, 0, program, hbm_base=HBM_BASE, hbm_size=H, sram_base=SRAM_BASE, sram_size=S,
                       code_at=CODE)
    sram_after = peek_sram(device, SRAM_BASE - GUARD, S + 2 * GUARD)
    hbm_after = read_bytes(device, HBM_BASE - GUARD, H + 2 * GUARD)
    return info, (sram_before, hbm_before), (sram_after, hbm_after)


def window(memory, size):
    return memory[GUARD:GUARD + size]


@pytest.mark.parametrize("case", sorted(BOUNDS_CASES))
def test_an_access_ending_exactly_at_the_window_end_runs(device, case):
    program, _, _, _, effect = BOUNDS_CASES[case]
    info, (sram, hbm), after = run_bounds_case(device, program, seed=len(case))
    assert (info.status, info.fault) == (ContextStatus.DONE, FaultCode.NONE), info
    effect(window(sram, S), window(hbm, H))
    assert np.array_equal(after[0], sram), "scratchpad differs from the expected effect"
    assert np.array_equal(after[1], hbm), "HBM differs from the expected effect"


@pytest.mark.parametrize("case", sorted(BOUNDS_CASES))
def test_the_smallest_overrun_faults_and_writes_nothing(device, case):
    _, program, fault, index, _ = BOUNDS_CASES[case]
    info, before, after = run_bounds_case(device, program, seed=len(case) + 100)
    expected_pc = CODE + 16 * (1 + index)
    assert (info.status, info.fault, info.fault_pc) == (ContextStatus.FAULTED, fault, expected_pc), info
    assert np.array_equal(after[0], before[0]), "the faulting uTOp changed the scratchpad"
    assert np.array_equal(after[1], before[1]), "the faulting uTOp changed HBM"
    if device.name in RTL_BACKENDS:
        golden = FunctionalDevice("tiny")
        expected = run_context(golden, 0, program, hbm_base=HBM_BASE, hbm_size=H, sram_base=SRAM_BASE,
                               sram_size=S, code_at=CODE)
        assert (info.fault, info.fault_pc) == (expected.fault, expected.fault_pc)


# --- 3. wait slots naming the same token add up ----------------------------------------------------


TOKEN_SRAM_BASE, TOKEN_SRAM_SIZE = 0, 0x2000
TOKEN_HBM_BASE, TOKEN_HBM_SIZE, TOKEN_CODE = 0x100000, 0x10000, 0x8000
STALE, DATA_BYTES, OUT = -1, 0x800, 0x4000


def waits(slots):
    """Header fields of ``slots``, a list of (token, count) for wait slots 0, 1, 2."""
    fields = {}
    for i, (token, count) in enumerate(slots):
        fields.update({f"wait{i}": token, f"count{i}": count})
    return fields


def token_program(slots, producers, follow_ups=()):
    """VE producers (each signalling the tokens in its mask), a VE consumer waiting on ``slots``,
    then VE uTOps waiting on the (token, count) pairs of ``follow_ups``."""
    program = []
    for mask in producers:
        program += utop(EngineClass.VE, [Instr("ve.fill", dst=0x1000, n=1, value=1)], signal=mask)
    program += utop(EngineClass.VE, [Instr("ve.fill", dst=0x1020, n=1, value=3)], **waits(slots))
    for token, count in follow_ups:
        program += utop(EngineClass.VE, [Instr("ve.fill", dst=0x1010, n=1, value=2)], **waits([(token, count)]))
    return program


def run_tokens(device, program):
    return run_context(device, 0, program, hbm_base=TOKEN_HBM_BASE, hbm_size=TOKEN_HBM_SIZE,
                       sram_base=TOKEN_SRAM_BASE, sram_size=TOKEN_SRAM_SIZE, code_at=TOKEN_CODE)


@pytest.mark.parametrize("slots", [2, 3])
def test_repeated_waits_hold_the_consumer_until_the_sum_is_signalled(device, slots):
    """Signals arrive out of program order: the quick VE producers finish long before the DMA load
    they follow, so a consumer that dispatched on any single slot's count would copy stale data."""
    rng = np.random.default_rng(slots)
    data = rng.integers(0, 1 << 30, DATA_BYTES // 4, dtype=np.int32)
    device.write_hbm(TOKEN_HBM_BASE, data.tobytes())
    device.write_hbm(TOKEN_HBM_BASE + OUT, bytes(16))
    program = [
        *utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=DATA_BYTES // 4, value=STALE)], signal=1 << 1),
        *utop(EngineClass.DMA, [Instr("dma.load", sram=0, hbm=0, rows=1, row_bytes=DATA_BYTES)],
              signal=1 << 0, **waits([(1, 1)])),
    ]
    for i in range(slots - 1):
        program += utop(EngineClass.VE, [Instr("ve.fill", dst=0x1000 + 16 * i, n=4, value=i + 1)], signal=1 << 0)
    program += utop(EngineClass.VE, [Instr("ve.copy", dst=0x1800, src=DATA_BYTES - 16, n=4)], signal=1 << 2,
                    **waits([(0, 1)] * slots))
    program += utop(EngineClass.DMA, [Instr("dma.store", sram=0x1800, hbm=OUT, rows=1, row_bytes=16)],
                    **waits([(2, 1)]))
    info = run_tokens(device, program)
    assert (info.status, info.fault) == (ContextStatus.DONE, FaultCode.NONE), info
    out = np.frombuffer(device.read_hbm(TOKEN_HBM_BASE + OUT, 16), np.int32)
    assert out.tolist() == data[-4:].tolist(), "the consumer ran before every producer had signalled"


TOKEN_LAYOUTS = {
    # name: wait slots 0, 1, 2 as (token, count)
    "slots_0_1": [(0, 1), (0, 1)],
    "slots_0_1_2": [(0, 1), (0, 1), (0, 1)],
    "slots_1_2_mixed_counts": [(4, 1), (9, 2), (9, 3)],
    "slots_0_2_with_another_token": [(7, 2), (3, 1), (7, 2)],
}


def needs(slots):
    total = {}
    for token, count in slots:
        total[token] = total.get(token, 0) + count
    return total


def producers_for(supply):
    """Signal masks of VE producers that signal token t ``supply[t]`` times."""
    return [sum(1 << t for t, n in supply.items() if n > i) for i in range(max(supply.values()))]


def shared_token(slots):
    """The token named by the most wait slots."""
    return max(needs(slots), key=lambda t: sum(token == t for token, _ in slots))


@pytest.mark.parametrize("supply", ["one_short", "exact", "one_extra"])
@pytest.mark.parametrize("layout", sorted(TOKEN_LAYOUTS))
def test_repeated_waits_need_and_consume_the_sum_of_their_counts(device, layout, supply):
    """``one_short``: the consumer deadlocks. ``exact``: it runs and the program halts. ``one_extra``:
    it leaves exactly one signal, so one more single wait runs and a second deadlocks."""
    slots = TOKEN_LAYOUTS[layout]
    token = shared_token(slots)
    available = needs(slots)
    available[token] += {"one_short": -1, "exact": 0, "one_extra": 1}[supply]
    producers = producers_for(available)
    follow_ups = [(token, 1), (token, 1)] if supply == "one_extra" else []
    program = token_program(slots, producers, follow_ups)
    ve_utops_before = device.context(0).counters["utops"]["ve"]
    info = run_tokens(device, program)
    consumer_pc = TOKEN_CODE + 32 * len(producers)
    expected = {"one_short": (ContextStatus.FAULTED, FaultCode.TOKEN_DEADLOCK, consumer_pc),
                "exact": (ContextStatus.DONE, FaultCode.NONE, 0),
                "one_extra": (ContextStatus.FAULTED, FaultCode.TOKEN_DEADLOCK, consumer_pc + 64)}[supply]
    assert (info.status, info.fault, info.fault_pc) == expected, info
    ran = info.counters["utops"]["ve"] - ve_utops_before
    assert ran == len(producers) + (supply != "one_short") + (supply == "one_extra")


# --- 4. the operator policy gives each engine class to one context at a time ----------------------


OPERATOR_CONFIGS = {"amaranth": get_config("tiny").replace(name="tiny-duo", me_count=2, ve_count=2, contexts=3),
                    "verilator": get_config("small")}
TENANTS = 3
ROUNDS = 3
INPUT_BYTES, OUTPUT_BYTES = 0x300, 0x400
ENGINE_COUNTERS = {"me": ("ME_OWNED", "ME_HARVESTED"), "ve": ("VE_OWNED", "VE_HARVESTED")}


def tenant_program(rounds):
    """Load inputs, then independent ME and VE uTOps writing separate outputs, then store them all."""
    program = dma("dma.load", sram=0, hbm=0, rows=1, row_bytes=INPUT_BYTES) + [Instr("fence")]
    for i in range(rounds):
        program += loadw_then_matmul(w=0, k=4, n=4, a=0x40, m=16, out=0x400 + OUTPUT_BYTES * i)
        program += ve(Instr("ve.add", dst=0x500 + OUTPUT_BYTES * i, src1=0x40, src2=0x80, n=128))
    program += [Instr("fence")]
    program += dma("dma.store", sram=0x400, hbm=0x2000, rows=1, row_bytes=OUTPUT_BYTES * rounds)
    return program


def load_tenants(device, rng):
    program = encode_stream(tenant_program(ROUNDS) + [Instr("halt")])
    for c in range(TENANTS):
        hbm_base = 0x100000 * (c + 1)
        device.host(Instr("ctx.hbm", ctx=c, base=hbm_base, size=0x10000))
        device.host(Instr("ctx.sram", ctx=c, base=0x1000 * c, size=0x1000))
        device.write_hbm(hbm_base, rng.integers(0, 256, INPUT_BYTES, dtype=np.uint8).tobytes())
        device.write_hbm(hbm_base + 0x8000, program)


def tenant_outputs(device):
    return [device.read_hbm(0x100000 * (c + 1) + 0x2000, OUTPUT_BYTES * ROUNDS) for c in range(TENANTS)]


class ClassMonitor:
    """Samples, after every clock edge the test causes, which contexts' uTOps ran on each engine
    class during that cycle: the per-context engine-cycle counters (``ME_OWNED`` + ``ME_HARVESTED``
    and the VE pair) grow by the number of engines of the class busy with that context's uTOps."""

    def __init__(self, device):
        self.device = device
        self.previous = self.totals()
        self.history = []

    def totals(self):
        read = self.device.csr_read
        return {cls: [sum(read(csr.context_csr(c, name)) for name in names) for c in range(TENANTS)]
                for cls, names in ENGINE_COUNTERS.items()}

    def sample(self):
        now = self.totals()
        self.history.append({cls: {c for c in range(TENANTS) if now[cls][c] != self.previous[cls][c]}
                             for cls in now})
        self.previous = now

    def host(self, command):
        """A host command issued one CSR write (one cycle) at a time, sampling every cycle."""
        device = self.device

        def write(address, value):
            device.csr_write(address, value)
            self.sample()

        def wait(cycles):
            for _ in range(cycles):
                device.run_cycles(1)
                self.sample()
            return cycles

        operation = host_protocol.command(command, timeout=MAX_CYCLES, poll_cycles=1)
        assert host_protocol.drive(operation, write, device.csr_read, wait) == csr.CommandError.OK

    def run(self):
        for _ in range(MAX_CYCLES):
            if not self.device.csr_read(csr.GLOBAL["RUNNING"]):
                return
            self.device.run_cycles(1)
            self.sample()
        pytest.fail("the tenants did not finish")

    def sharing_cycles(self, cls):
        return [t for t, cycle in enumerate(self.history) if len(cycle[cls]) > 1]

    def users(self, cls):
        return set().union(*(cycle[cls] for cycle in self.history))


@pytest.mark.parametrize("policy", ["operator", "harvest"])
@pytest.mark.parametrize("backend", RTL_BACKENDS)
def test_operator_policy_never_shares_an_engine_class_between_contexts(backend, policy):
    """Under ``operator`` no cycle has two contexts on engines of one class (each class is used by
    every context in turn); the same monitor sees sharing under ``harvest``."""
    config = OPERATOR_CONFIGS[backend]
    device = BACKENDS[backend](config)
    try:
        device.set_policy(policy)
        load_tenants(device, np.random.default_rng(4))
        monitor = ClassMonitor(device)
        assert monitor.previous == {cls: [0] * TENANTS for cls in ENGINE_COUNTERS}
        for c in range(TENANTS):
            monitor.host(Instr("ctx.start", ctx=c, pc=0x8000))
        monitor.run()
        assert device.run(max_cycles=MAX_CYCLES)
        assert [device.context(c).status for c in range(TENANTS)] == [ContextStatus.DONE] * TENANTS
        golden = FunctionalDevice(config)
        load_tenants(golden, np.random.default_rng(4))
        for c in range(TENANTS):
            golden.host(Instr("ctx.start", ctx=c, pc=0x8000))
        assert golden.run()
        assert tenant_outputs(device) == tenant_outputs(golden)
    finally:
        close(device)
    for cls in ENGINE_COUNTERS:
        assert monitor.users(cls) == set(range(TENANTS)), f"{cls}: only tenants {monitor.users(cls)} ran"
        shared = monitor.sharing_cycles(cls)
        if policy == "operator":
            assert not shared, f"{cls} engines ran several contexts at once in {len(shared)} cycles, " \
                f"first in sampled cycle {shared[0]}: contexts {monitor.history[shared[0]][cls]}"
        else:
            assert shared, f"the monitor saw no {cls} sharing under harvest"
