"""One HBM specification for every HBM model: the same request sequence (instruction fetches, data
reads and writes, read-backs of written words, bursts and gaps, a master that refuses some
responses) through :class:`tcloud.rtl.sim.HbmModel` (Amaranth simulator), the Verilator harness's
C++ model and the cocotb responder, each compared cycle for cycle with
:func:`tcloud.verif.hbm_spec.reference`, at the port's full bandwidth and below it."""


import numpy as np
import pytest
from amaranth.sim import Simulator
from cocotb_tools.runner import get_results

from tcloud.isa import get_config
from tcloud.rtl.hbm import port_words
from tcloud.rtl.sim import HbmModel
from tcloud.runtime.backends.verilator import VerilatorDevice
from tcloud.verif.hbm_spec import NORMAL, HbmPlayer, Request, port_gbps, reference, spec_case

from conftest import BUILD, COCOTB_WAVES, cocotb_build

pytestmark = pytest.mark.slow  # HBM models against the reference, with a cocotb build

TINY = get_config("tiny")
PORT_GBPS = port_gbps(TINY)
BANDWIDTHS = {"port": PORT_GBPS, "3/8 port": PORT_GBPS * 3 / 8}


@pytest.fixture(params=sorted(BANDWIDTHS))
def config(request):
    return TINY.replace(hbm_gbps=BANDWIDTHS[request.param])


def expected(config):
    """The player of :func:`spec_case`, the initial HBM words, the reference trace and the words after it."""
    requests, ready, memory = spec_case(config)
    written = memory.copy()
    return HbmPlayer(config, requests, ready), memory, reference(config, requests, ready, written), written


def test_reference_follows_the_spec():
    """The reference itself, on sequences worked out by hand from the spec's rules."""
    words, first = port_words(TINY), 1 + TINY.hbm_latency
    half = TINY.replace(hbm_gbps=PORT_GBPS / 2)
    burst = reference(half, [Request(0, 4 * i, words) for i in range(6)], [True], np.zeros(64, np.uint32))
    assert burst.accepted == (0, 1, 2, 4, 6, 8)  # two beats of credit and half a beat a cycle
    assert [cycle for cycle, _, _ in burst.responses] == [c + first for c in burst.accepted]
    single_words = reference(half, [Request(0, 0, 1, id=i) for i in range(6)], [True], np.zeros(4, np.uint32))
    assert single_words.accepted == tuple(range(6))  # a word spends a quarter of a beat
    mixed = [Request(0, 0, 1, write=True, wdata=(7,), id=1), Request(0, 0, 1, id=2),
             Request(0, 0, words, fetch=True, id=3), Request(0, 0, words, fetch=True, id=4)]
    trace = reference(TINY, mixed, [False] * (first + 4) + [True] * 8, np.zeros(words, np.uint32))
    # the write stays offered until taken; then fetches and data in turn, a fetch first; reads see the write
    fetched = (7,) + (0,) * (words - 1)
    assert trace.responses == ((first + 4, 1, None), (first + 5, 3, fetched), (first + 6, 2, (7,)),
                               (first + 7, 4, fetched))


def amaranth_trace(config):
    player, memory, reference_trace, written = expected(config)
    model = HbmModel(config)
    model.memory[:memory.nbytes] = memory.view(np.uint8)
    result = {}

    async def bench(ctx):
        ctx.set(player.csr_we, 1)
        ctx.set(player.csr_wdata, NORMAL)
        await ctx.tick()
        ctx.set(player.csr_we, 0)
        await ctx.tick().until(player.idle)

        def read(address):
            ctx.set(player.csr_addr, address)
            return ctx.get(player.csr_rdata)
        result["trace"] = player.read_trace(read, reference_trace)

    sim = Simulator(player)
    sim.add_clock(1e-9)
    sim.add_testbench(model.serve(player.hbm), background=True)
    sim.add_testbench(bench)
    sim.run()
    return result["trace"], model.memory[:memory.nbytes].view("<u4"), reference_trace, written


def verilator_trace(config):
    player, memory, reference_trace, written = expected(config)
    device = VerilatorDevice(config, top=player)
    try:
        device.write_hbm(0, memory.tobytes())
        device.csr_write(0, NORMAL)
        assert device.run_until_idle(len(player.requests) * (config.hbm_latency + 64))
        trace = player.read_trace(device.csr_read, reference_trace)
        return trace, np.frombuffer(device.read_hbm(0, memory.nbytes), "<u4"), reference_trace, written
    finally:
        device.close()


@pytest.mark.parametrize("model", [amaranth_trace, verilator_trace], ids=["python", "cpp"])
def test_model_follows_the_reference(config, model):
    trace, memory, reference_trace, written = model(config)
    assert trace.accepted == reference_trace.accepted
    assert trace.responses == reference_trace.responses
    assert np.array_equal(memory, written)


@pytest.mark.xdist_group("hbm_player_runs")  # test_cli runs it again, waves on, in the same run directories
def test_cocotb_responder_follows_the_reference(verilator_on_path, config):
    player = HbmPlayer(config, *spec_case(config)[:2])
    with cocotb_build(lambda: player, "hbm_player", BUILD / "hbm_player") as (runner, build_dir, run_root):
        results = runner.test(hdl_toplevel="hbm_player", test_module="tcloud.verif.cocotb_hbm", build_dir=build_dir,
                              test_dir=run_root / f"run-{config.hbm_gbps:g}", waves=COCOTB_WAVES,
                              extra_env={"TCLOUD_CONFIG": config.name, "TCLOUD_HBM_GBPS": repr(config.hbm_gbps)})
    assert get_results(results) == (5, 0)
