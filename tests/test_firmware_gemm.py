"""Tiled GEMM firmware versus NumPy on many shapes, race-free under any legal schedule."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcloud.firmware import (FirmwareError, Footprint, GemmPlan, ProgramBuilder, Requant, elementwise,
                             elementwise_footprint, gemm, gemm_footprint, plan_gemm)
from tcloud.firmware.gemm import _instruction_count, _sram_footprint, me_utop_cost
from tcloud.isa.cost import HARVEST_COST_DEFAULT
from tcloud.isa import ContextStatus, EngineClass, Instr, ProgramImage, decode_stream, get_config
from tcloud.runtime import FunctionalDevice, run_image
from tcloud.verif import find_races
from tcloud.verif.races import check_program

from test_golden_ops import ref_requant


def reference(a, b, bias, requant):
    acc = a.astype(np.int64) @ b.astype(np.int64)
    if bias is not None:
        acc = acc + bias
    acc = ((acc + (1 << 31)) % (1 << 32)) - (1 << 31)
    if requant is None:
        return acc
    flat = [ref_requant(x, requant.multiplier, requant.shift, requant.zero_point) for x in acc.flat]
    return np.array(flat, dtype=np.int64).reshape(acc.shape)


def check_gemm(config, m, k, n, *, bias, requant, seed=0, plan=None):
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    a.flat[0], b.flat[0] = -128, -128
    inputs = {"A": a, "B": b}
    bias_values = None
    if bias:
        bias_values = rng.integers(-(1 << 20), 1 << 20, n, dtype=np.int32)
        inputs["bias"] = bias_values
    image = gemm(config, m, k, n, bias=bias, requant=requant, plan=plan)
    device = FunctionalDevice(config, trace=True)
    outputs, info = run_image(device, image, inputs)
    assert outputs["C"].tolist() == reference(a, b, bias_values, requant).tolist()
    assert find_races(device.machine.trace) == []
    assert info.counters["macs"] == m * k * n
    return image, info


@given(config=st.sampled_from(["tiny", "small"]), m=st.integers(1, 70), k=st.integers(1, 70),
       n=st.integers(1, 70), bias=st.booleans(), requant=st.booleans(), seed=st.integers(0, 1000))
@settings(max_examples=40)
def test_random_shapes_match_numpy(config, m, k, n, bias, requant, seed):
    check_gemm(config, m, k, n, bias=bias, requant=Requant(1 << 30, 44, -3) if requant else None, seed=seed)


@pytest.mark.parametrize("config, shape", [
    ("tiny", (1, 1, 1)),
    ("tiny", (4, 4, 4)),
    ("tiny", (5, 300, 3)),          # K >> array
    ("small", (8, 8, 8)),
    ("small", (33, 65, 17)),
    ("small", (256, 256, 256)),
])
def test_edge_shapes(config, shape):
    check_gemm(config, *shape, bias=True, requant=Requant.from_scale(1 / 3000, 7))


def test_small_blocks_exercise_double_buffering_and_token_reuse():
    footprint = _sram_footprint(get_config("tiny"), 8, 8, 8, True, True)
    forced = GemmPlan(20, 24, 16, mb=8, nb=8, kb=8, sram_bytes=footprint, estimated_cycles=0)
    image, info = check_gemm("tiny", 20, 24, 16, bias=True, requant=Requant(1 << 30, 40), plan=forced)
    assert info.counters["utops"]["dma"] == 3 * 2 * 3 + 2 * 3 * 2  # loads per chunk + a bias load and a store per block
    headers = [i for i in decode_stream(image.code) if i.mnemonic == "utop"]
    assert len({t for h in headers for t in range(16) if h["signal"] >> t & 1}) > 1


@pytest.mark.slow
def test_large_gemm():
    check_gemm("small", 512, 512, 512, bias=True, requant=Requant.from_scale(1 / 9000))


def test_plan_fits_the_scratchpad_and_prefers_fewer_utops():
    for name in ("tiny", "small", "tpu_like"):
        cfg = get_config(name)
        plan = plan_gemm(cfg, 300, 500, 700, bias=True, requant=True)
        assert plan.sram_bytes <= cfg.sram_bytes
        assert plan.nb % cfg.me_cols == 0 and plan.kb % cfg.me_rows == 0
    assert plan_gemm("small", 256, 256, 256, max_utop_cost=None).kb == 256


def test_me_utops_stay_within_the_harvestable_cost():
    """By default every ME uTOp of a GEMM declares at most HARVEST_COST's reset value, so the harvest
    policy may share it; without a limit the planner may choose longer uTOps."""
    for limit in (HARVEST_COST_DEFAULT, 600):
        plan = plan_gemm("small", 256, 256, 256, max_utop_cost=limit)
        image = gemm("small", 256, 256, 256, max_utop_cost=limit)
        costs = [i["cost"] for i in decode_stream(image.code) if i.mnemonic == "utop" and i["cls"] == EngineClass.ME]
        assert max(costs) == me_utop_cost(get_config("small"), plan.mb, plan.kb) <= limit
    with pytest.raises(FirmwareError, match="ME uTOps of at most 10 work units"):
        plan_gemm("small", 256, 256, 256, max_utop_cost=10)
    for bad in (0, -5, "2048", 1.5, True):
        with pytest.raises(FirmwareError, match="max_utop_cost must be a positive integer or None"):
            plan_gemm("small", 16, 16, 16, max_utop_cost=bad)


@pytest.mark.parametrize("dims, message", [
    ((0, 4, 4), "dimension M must be a positive integer"),
    ((4, -1, 4), "dimension K"),
    ((4, 4, 2.5), "dimension N"),
])
def test_bad_dimensions(dims, message):
    with pytest.raises(FirmwareError, match=message):
        gemm("tiny", *dims)


def test_shape_too_wide_for_dma_strides():
    with pytest.raises(FirmwareError, match="exceeds the largest DMA stride"):
        gemm("small", 1, 5_000_000, 1)


def test_requant_from_scale():
    for scale in (1.0, 0.5, 1 / 3, 1e-6, 123.456, 2.0 ** -60):
        r = Requant.from_scale(scale)
        assert r.multiplier < 1 << 31
        assert abs(r.scale - scale) / scale < 1e-8 or scale < 2.0 ** -40
    with pytest.raises(FirmwareError, match="positive finite"):
        Requant.from_scale(0)
    with pytest.raises(FirmwareError, match="representable range"):
        Requant.from_scale(2.0 ** 40)
    with pytest.raises(FirmwareError, match="'zp'=200 is out of range"):
        Requant(1, 0, 200)


def test_builder_errors():
    builder = ProgramBuilder()
    with pytest.raises(FirmwareError, match="cannot run in a ME uTOp"):
        builder.utop(EngineClass.ME, [Instr("ve.fill", dst=0, n=1)])
    with pytest.raises(FirmwareError, match="not CTRL"):
        builder.utop(EngineClass.CTRL, [Instr("nop")])
    fill = [Instr("ve.fill", dst=0, n=1)]
    wide = ProgramBuilder()
    many = [wide.utop(EngineClass.VE, fill) for _ in range(46)]
    wide.utop(EngineClass.VE, fill, deps=many)
    with pytest.raises(FirmwareError, match="depends on 46 uTOps; at most 45"):
        wide.build()


def test_builder_groups_many_producers_into_wait_slots_and_fence_drops_deps():
    builder = ProgramBuilder()
    fill = [Instr("ve.fill", dst=0, n=1)]
    many = [builder.utop(EngineClass.VE, fill) for _ in range(20)]
    builder.utop(EngineClass.VE, fill, deps=many)
    builder.fence()
    builder.utop(EngineClass.VE, fill, deps=many)
    instrs = decode_stream(builder.build())
    headers = [i for i in instrs if i.mnemonic == "utop"]
    assert (headers[20]["count0"], headers[20]["count1"]) == (15, 5)
    assert headers[21]["count0"] == 0
    assert instrs[-1].mnemonic == "halt"


def test_builder_with_an_rng_spreads_producers_over_random_wait_slots_and_tokens():
    layouts, tokens = set(), set()
    for seed in range(30):
        builder = ProgramBuilder(rng=np.random.default_rng(seed))
        fills = [builder.utop(EngineClass.VE, [Instr("ve.fill", dst=4 * i, n=1, value=i)]) for i in range(6)]
        builder.utop(EngineClass.VE, [Instr("ve.redsum", dst=64, src=0, n=6)], deps=fills)
        consumer = [i for i in decode_stream(builder.build()) if i.mnemonic == "utop"][-1]
        waits = [(consumer[f"wait{s}"], consumer[f"count{s}"]) for s in range(3) if consumer[f"count{s}"]]
        assert sum(count for _, count in waits) == 6
        layouts.add(tuple(sorted(count for _, count in waits)))
        tokens |= {token for token, _ in waits}
    assert {(6,), (3, 3), (2, 2, 2)} <= layouts and len(tokens) > 8



@pytest.mark.parametrize("config", ["tiny", "small"])
def test_the_footprint_counted_before_lowering_is_the_images(config):
    for m, k, n in [(1, 1, 1), (5, 6, 7), (33, 70, 17), (64, 300, 100), (130, 33, 250)]:
        for bias, requant in [(False, None), (True, None), (False, Requant(1 << 30, 38, 0)),
                              (True, Requant(3, 2, 1))]:
            image = gemm(config, m, k, n, bias=bias, requant=requant)
            plan = plan_gemm(config, m, k, n, bias=bias, requant=requant is not None)
            count = _instruction_count(get_config(config), plan, bias, requant is not None)
            assert count == len(image.code) // 16, (m, k, n, bias, requant)
            footprint = gemm_footprint(config, m, k, n, bias=bias, requant=requant is not None)
            assert footprint == Footprint(image.sram_bytes, image.hbm_bytes), (m, k, n, bias, requant)


def test_a_gemm_the_hbm_cannot_hold_is_refused_with_its_sizes():
    config = get_config("tiny").replace(name="one-mib", hbm_mib=1)
    rows = (1 << 20) // 64  # 64-byte rows of A: 1 MiB of operands before B, C and the code
    with pytest.raises(FirmwareError, match=r"GEMM 16384x64x1 needs 1\.\d MiB of HBM \(1\.\d MiB of operands and "
                                            r"result, 0\.\d MiB of code\), but config 'one-mib' has 1 MiB"):
        gemm(config, rows, 64, 1)
    assert gemm(config, rows // 4, 64, 1).hbm_bytes <= config.hbm_bytes


@pytest.mark.parametrize("config, shape, blocks", [
    ("tiny", (20, 24, 40), dict(mb=8, nb=16, kb=8, tiles_per_utop=2, acc_buffers=3)),
    ("small", (70, 40, 100), dict(mb=16, nb=64, kb=16, tiles_per_utop=2, acc_buffers=4)),
])
def test_me_utops_over_several_column_tiles_with_three_or_four_accumulator_buffers(config, shape, blocks):
    """Forced plans whose ME uTOps compute two column tiles each, with three or four accumulator
    buffers, several K chunks and ragged edges, stay exact and race-free."""
    cfg = get_config(config)
    footprint = _sram_footprint(cfg, blocks["mb"], blocks["nb"], blocks["kb"], True, True,
                                acc_buffers=blocks["acc_buffers"])
    plan = GemmPlan(*shape, sram_bytes=footprint, estimated_cycles=0, **blocks)
    image, _ = check_gemm(config, *shape, bias=True, requant=Requant(1 << 30, 40), plan=plan)
    me = [i for i in decode_stream(image.code) if i.mnemonic == "utop" and i["cls"] == EngineClass.ME]
    assert max(i["len"] for i in me) == 2 * 2 * (blocks["kb"] // cfg.me_rows)  # two tiles of loadw/matmul pairs


def test_me_utops_over_several_column_tiles_declare_the_planned_cost():
    """Without a cost limit the planner groups column tiles into longer ME uTOps; a limit that one
    tile fits but two do not keeps them apart. Either way the uTOps declare what the planner counted."""
    cfg = get_config("small")
    for limit, tiles in ((None, 2), (8000, 1)):
        plan = plan_gemm(cfg, 512, 256, 256, bias=True, requant=True, max_utop_cost=limit)
        assert plan.tiles_per_utop == tiles
        image = gemm(cfg, 512, 256, 256, bias=True, requant=Requant(1 << 30, 44), plan=plan)
        costs = [i["cost"] for i in decode_stream(image.code) if i.mnemonic == "utop" and i["cls"] == EngineClass.ME]
        assert max(costs) == me_utop_cost(cfg, plan.mb, plan.kb, tiles) <= (limit or max(costs))


def test_an_im2col_gemm_without_bias_splits_its_loads_and_stays_race_free():
    """Many im2col transfers split a step's A and B loads over the DMA engines; with no bias load the
    first chunk's MEs wait for the store that frees their accumulators themselves."""
    from tcloud.firmware.conv import NHWC, Im2col
    from tcloud.firmware.gemm import DenseMatrix, _load_utops, emit_gemm
    from tcloud.isa import ProgramImage, Symbol

    cfg = get_config("small")
    batch, h, w, ch, n = 2, 12, 12, 4, 16
    source = NHWC(0, batch, h, w, ch, (1, 1, 1, 1))
    a = Im2col(source, (3, 3), (1, 1), (1, 1, 1, 1))
    m, k = a.rows, a.depth
    plan = plan_gemm(cfg, m, k, n, max_utop_cost=None, a=a)
    assert _load_utops(cfg, len(a.load(0, 0, 0, plan.mb, 0, plan.kb)) + 1) == cfg.dma_count
    b_at, c_at = 2048, 4096
    code_at = c_at + m * n * 4
    prog = ProgramBuilder()
    emit_gemm(prog, cfg, plan, a, DenseMatrix(b_at, n), DenseMatrix(c_at, 4 * n, 4))
    code = prog.build(cfg)
    image = ProgramImage.for_config(cfg, code, entry=code_at, hbm_bytes=code_at + len(code),
                                    sram_bytes=plan.sram_bytes, symbols=[
                                        Symbol("X", "input", "i8", (source.nbytes // ch, ch), 0, ch),
                                        Symbol("B", "input", "i8", (k, n), b_at, n),
                                        Symbol("C", "output", "i32", (m, n), c_at, 4 * n)])
    rng = np.random.default_rng(3)
    x = np.zeros((batch, h + 2, w + 2, ch), np.int8)
    x[:, 1:-1, 1:-1] = rng.integers(-128, 128, (batch, h, w, ch), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    device = FunctionalDevice(cfg, trace=True)
    outputs, _ = run_image(device, image, {"X": x.reshape(-1, ch), "B": b})
    cols = np.stack([x[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=3)
    expected = cols.reshape(m, k).astype(np.int64) @ b.astype(np.int64)
    assert outputs["C"].tolist() == expected.tolist()
    assert find_races(device.machine.trace) == []


@pytest.mark.parametrize("fanout", [False, True])
def test_more_live_dependency_groups_than_tokens_get_a_fence(fanout):
    """17 producers each awaited by a later consumer (or one producer awaited by 17 consumers) need 17 live
    tokens: build inserts a fence where the 17th group would open; the program runs to its end on the golden
    model and the race checker finds every consumer ordered after its producer."""
    builder = ProgramBuilder()
    fill = lambda value: [Instr("ve.fill", dst=4 * value, n=1, value=value)]  # noqa: E731
    copy = lambda source, value: [Instr("ve.copy", dst=256 + 4 * value, src=4 * source, n=1)]  # noqa: E731
    if fanout:
        producer = builder.utop(EngineClass.VE, fill(1))
        for value in range(17):
            builder.utop(EngineClass.VE, copy(1, value), deps=[producer])
    else:
        producers = [builder.utop(EngineClass.VE, fill(value)) for value in range(17)]
        for value, p in enumerate(producers):
            builder.utop(EngineClass.VE, copy(value, value), deps=[p])
    code = builder.build()
    assert builder.inserted_fences >= 1
    image = ProgramImage.for_config("tiny", code, entry=0, hbm_bytes=-(-len(code) // 64) * 64, sram_bytes=512)
    _, info = run_image(FunctionalDevice("tiny"), image, {})
    assert info.status == ContextStatus.DONE
    assert check_program(image).races == []


@pytest.mark.parametrize("rows, cols, passes, block", [(8, 32, 1, None), (24, 64, 3, 256), (100, 100, 5, 64),
                                                        (3, 5, 2047, None), (7, 9, 2, 10)])
def test_elementwise_counts_its_instructions_before_building(rows, cols, passes, block):
    """The count that refuses a shape too large for the HBM before the program is built is the count built."""
    from tcloud.firmware.elementwise import _instruction_count

    image = elementwise("small", rows, cols, passes=passes, block_elements=block)
    used = min(rows * cols, block or rows * cols)
    assert len(image.code) // 16 == _instruction_count(rows * cols, used, passes)
    footprint = elementwise_footprint("small", rows, cols, passes=passes, block_elements=block)
    assert footprint == Footprint(image.sram_bytes, image.hbm_bytes)


def test_the_footprints_refuse_what_the_kernels_refuse():
    """Every refusal comes before the code is built, so the footprint functions give the same errors."""
    config = get_config("tiny").replace(name="one-mib", hbm_mib=1)
    for call in (lambda f: f(config, (1 << 20) // 64, 64, 1), lambda f: f("small", 1, 4194400, 1)):
        with pytest.raises(FirmwareError) as built:
            call(gemm)
        with pytest.raises(FirmwareError) as counted:
            call(gemm_footprint)
        assert str(counted.value) == str(built.value)
    for args, options in (((config, 1000, 1000), {}), (("small", 0, 4), {}), (("small", 4, 4), {"passes": 5000}),
                          (("small", 4, 4), {"block_elements": 0})):
        with pytest.raises(FirmwareError) as built:
            elementwise(*args, **options)
        with pytest.raises(FirmwareError) as counted:
            elementwise_footprint(*args, **options)
        assert str(counted.value) == str(built.value)
