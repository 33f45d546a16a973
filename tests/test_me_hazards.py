"""Within one ME uTOp the RTL honours the ISA's sequential semantics, although it keeps a matmul's
output in local accumulators: a later matmul or loadw of the same uTOp that reads that output sees it
(the review found row 0 golden ``[18, -137, 6, ...]``, RTL ``[-51, -46, ...]`` before the fix)."""

import numpy as np
import pytest

from tcloud.firmware import ProgramBuilder
from tcloud.isa import EngineClass, Instr, ProgramImage, Symbol, get_config
from tcloud.runtime import FunctionalDevice, run_image
from tcloud.runtime.backends.amaranth import AmaranthDevice
from tcloud.runtime.backends.verilator import VerilatorDevice

pytestmark = pytest.mark.slow  # ME uTOps on both RTL backends

CONFIG = get_config("tiny")
K = N = CONFIG.me_rows
AREA = 0x800
IN_AT, OUT_AT, CODE_AT = 0, AREA, 2 * AREA
W_AT, A_AT, O_AT, O2_AT, W2_AT = 0x000, 0x100, 0x400, 0x600, 0x200


def hazard_image(body):
    """Load the input area into the scratchpad, run ``body`` as one ME uTOp, store the area back."""
    builder = ProgramBuilder()
    load = builder.utop(EngineClass.DMA, [Instr("dma.load", sram=0, hbm=IN_AT, rows=1, row_bytes=AREA)])
    compute = builder.utop(EngineClass.ME, body, deps=[load])
    builder.utop(EngineClass.DMA, [Instr("dma.store", sram=0, hbm=OUT_AT, rows=1, row_bytes=AREA)], deps=[compute])
    code = builder.build()
    symbols = [Symbol("X", "input", "i8", (AREA,), IN_AT, AREA), Symbol("Y", "output", "i8", (AREA,), OUT_AT, AREA)]
    return ProgramImage.for_config(CONFIG, code, entry=CODE_AT, hbm_bytes=CODE_AT + len(code), sram_bytes=AREA,
                                   symbols=symbols)


def loadw(w):
    return Instr("me.loadw", w=w, k=K, n=N, w_stride=N)


def matmul(a, out, m, acc):
    return Instr("me.matmul", a=a, out=out, m=m, a_stride=4 * N, out_stride=4 * N, acc=acc)


CASES = {
    # the review's reproducer: matmul 2 reads A from the O that matmul 1 wrote and accumulates into it
    "a_reads_previous_output": [loadw(W_AT), matmul(A_AT, O_AT, 8, 0), matmul(O_AT, O_AT, 8, 1)],
    "a_reads_previous_output_elsewhere": [loadw(W_AT), matmul(A_AT, O_AT, 8, 1), matmul(O_AT + 4, O2_AT, 6, 0)],
    "loadw_reads_previous_output": [loadw(W_AT), matmul(A_AT, O_AT, 3, 0), loadw(O_AT), matmul(A_AT, O2_AT, 3, 0)],
    # long enough (m > me_cols) for the weight loader to run ahead while the matmul streams
    "loader_look_ahead_reads_streaming_output": [loadw(W_AT), matmul(A_AT, O_AT, 12, 0), loadw(O_AT + 16),
                                                 matmul(A_AT, O2_AT, 12, 0)],
    "independent_loader_look_ahead": [loadw(W_AT), matmul(A_AT, O_AT, 12, 0), loadw(W2_AT),
                                      matmul(A_AT, O2_AT, 12, 1)],
}


@pytest.fixture(scope="module", params=["amaranth", "verilator"])
def device(request):
    dev = {"amaranth": AmaranthDevice, "verilator": VerilatorDevice}[request.param](CONFIG)
    yield dev
    dev.close()


@pytest.mark.parametrize("case", sorted(CASES))
def test_me_utop_reading_its_own_output_matches_the_golden_model(device, case):
    image = hazard_image(CASES[case])
    inputs = {"X": np.random.default_rng(7).integers(-128, 128, AREA, dtype=np.int8)}
    expected, expected_info = run_image(FunctionalDevice(CONFIG), image, inputs)
    outputs, info = run_image(device, image, inputs)
    stale = outputs["Y"] != expected["Y"]
    assert not stale.any(), f"{case}: {int(stale.sum())} bytes differ, first at {int(np.argmax(stale)):#x}"
    assert info.counters == expected_info.counters
