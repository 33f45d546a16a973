"""Harvesting has a bound: an owner gets its engine back within ``reclaim_bound`` cycles whatever the
harvester runs. The review measured a victim owning 1 ME next to an attacker owning 3 with uTOps of
16 matmuls x 4,095 rows: 20,792 cycles under ``static``, 87,398 under ``harvest``, a reclaim wait of
66,605 cycles. Only uTOps that declare a cost within ``HARVEST_COST`` are harvested now, and the
engines enforce the declaration (``COST_EXCEEDED``) exactly as the golden model does."""

import numpy as np
import pytest

from tcloud.firmware.program import ProgramBuilder
from tcloud.isa import EngineClass, FaultCode, Instr, Machine, ProgramImage, encode_stream, get_config
from tcloud.isa.cost import INSTRUCTION_UNITS, encoded_field, instruction_units, utop_units
from tcloud.rtl import harvest_cost_for, reclaim_bound
from tcloud.isa.csr import HARVEST_COST_RESET, HARVEST_GRACE_RESET
from tcloud.runtime import DeviceFault
from tcloud.runtime.hypervisor import Hypervisor, VNPUSpec
from tcloud.runtime.backends.amaranth import AmaranthDevice
from tcloud.runtime.backends.verilator import VerilatorDevice

from conftest import new_tenant, utop

pytestmark = pytest.mark.slow  # harvesting bounds measured on the RTL

SMALL = get_config("small")
TILE = dict(k=SMALL.me_rows, n=SMALL.me_cols, w_stride=SMALL.me_cols)


def matmuls(rows, count, acc=1):
    return [Instr("me.matmul", a=0x100, out=0x400, m=rows, a_stride=0, out_stride=0, acc=acc)] * count


REVIEWED_BODY = [Instr("me.loadw", w=0, **TILE)] + matmuls(4095, 16)
"""The review's harvester uTOp: 16 matmuls of 4,095 rows."""


# --- the declared cost, golden model ---------------------------------------------------------------


def test_units_match_the_documented_formula():
    cfg = get_config("tiny")
    shape = Instr("ve.shape", rows=3)
    add = Instr("ve.add", dst=0, src1=0, src2=0, n=10)
    chunks = -(-10 // cfg.ve_lanes)
    assert utop_units([shape, add], cfg) == 2 * INSTRUCTION_UNITS + 3 * 5 * chunks
    assert utop_units([add], cfg) == INSTRUCTION_UNITS + 5 * chunks          # rows = 1 before ve.shape
    loadw = Instr("me.loadw", w=0, k=4, n=4, w_stride=4)
    mm = Instr("me.matmul", a=0x100, out=0x400, m=7, acc=1)
    # a new region streams, loads (acc) and writes back; the next matmul into it only streams
    assert utop_units([loadw, mm, mm], cfg) == 3 * INSTRUCTION_UNITS + cfg.me_rows + 7 * 3 + 7
    reads_it = Instr("me.matmul", a=0x400, out=0x400, m=7, acc=1)
    assert utop_units([loadw, mm, reads_it], cfg) == 3 * INSTRUCTION_UNITS + cfg.me_rows + 2 * 7 * 3
    reload = Instr("me.loadw", w=0x400, k=4, n=4, w_stride=4)
    assert utop_units([loadw, mm, reload, mm], cfg) == 4 * INSTRUCTION_UNITS + 2 * cfg.me_rows + 2 * 7 * 3
    dma = Instr("dma.load", sram=0, hbm=0, rows=2, row_bytes=cfg.hbm_port_bytes + 4)
    assert utop_units([dma], cfg) == INSTRUCTION_UNITS + 2 * 2


@pytest.mark.parametrize("slack", [0, -1])
def test_golden_faults_at_the_instruction_that_exceeds_the_declared_cost(slack):
    t = new_tenant()
    cfg = t.machine.config
    body = [Instr("ve.fill", dst=0x100 * i, n=4, value=i + 1) for i in range(4)]
    exact = utop_units(body, cfg)
    t.load(utop(EngineClass.VE, body, cost=exact + slack) + [Instr("halt")])
    t.machine.run()
    filled = [t.read_sram(0x100 * i, 1, np.int32)[0] for i in range(4)]
    if slack == 0:
        assert t.state.fault == FaultCode.NONE and filled == [1, 2, 3, 4]
    else:
        assert t.state.fault == FaultCode.COST_EXCEEDED
        assert t.state.fault_pc == t.code_at + 4 * 16       # the last body instruction
        assert filled == [1, 2, 3, 0], "the faulting instruction must have no effect"


def test_an_undeclared_cost_is_not_limited():
    t = new_tenant()
    t.load(utop(EngineClass.ME, [Instr("me.loadw", w=0, k=4, n=4, w_stride=4)] + matmuls(300, 3)) + [Instr("halt")])
    t.machine.run()
    assert t.state.fault == FaultCode.NONE


# --- the declared cost, RTL against the golden model -----------------------------------------------


def _run_both(device, program):
    """Run ``program`` as context 0 on ``device`` and on the golden model; return both (fault, pc)."""
    code = encode_stream(program + [Instr("halt")])
    results = []
    for target in (device, Machine(device.config)):
        host = target.host
        host(Instr("ctx.hbm", ctx=0, base=0, size=1 << 20))
        host(Instr("ctx.sram", ctx=0, base=0, size=device.config.sram_bytes))
        if isinstance(target, Machine):
            target.hbm[0xF0000:0xF0000 + len(code)] = np.frombuffer(code, np.uint8)
            host(Instr("ctx.start", ctx=0, pc=0xF0000))
            target.run()
            ctx = target.contexts[0]
            results.append((ctx.fault, ctx.fault_pc))
        else:
            target.write_hbm(0xF0000, code)
            host(Instr("ctx.start", ctx=0, pc=0xF0000))
            target.run(2_000_000)
            info = target.context(0)
            results.append((info.fault, info.fault_pc))
    return results


@pytest.fixture(scope="module", params=["amaranth", "verilator"])
def device(request):
    dev = {"amaranth": AmaranthDevice, "verilator": VerilatorDevice}[request.param]("tiny")
    yield dev
    dev.close()


CASES = {
    "me": [Instr("me.loadw", w=0, k=4, n=4, w_stride=4)] + matmuls(5, 3),
    "me_regions": [Instr("me.loadw", w=0, k=4, n=4, w_stride=4), *matmuls(5, 1, acc=0),
                   Instr("me.matmul", a=0x400, out=0x400, m=5, acc=1), *matmuls(5, 1),
                   Instr("me.loadw", w=0x400, k=4, n=4, w_stride=4), *matmuls(5, 2)],
    "ve": [Instr("ve.shape", rows=3, dst_stride=64, src1_stride=64, src2_stride=64),
           Instr("ve.add", dst=0x200, src1=0, src2=0x40, n=9), Instr("ve.redsum", dst=0x300, src=0, n=9)],
    "dma": [Instr("dma.load", sram=0, hbm=0, rows=3, row_bytes=20, hbm_stride=32, sram_stride=32)] * 3,
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("slack", [0, -1, 1 - INSTRUCTION_UNITS])
def test_rtl_enforces_the_declared_cost_like_the_golden_model(device, name, slack):
    body = CASES[name]
    cls = EngineClass[name.split("_")[0].upper()]
    cost = utop_units(body, device.config) + slack
    if slack == 1 - INSTRUCTION_UNITS:  # fault at the first instruction instead
        cost = instruction_units(body[0].mnemonic, encoded_field(body[0]), device.config) - 1
    rtl, golden = _run_both(device, utop(cls, body, cost=cost))
    assert rtl == golden, (name, slack, rtl, golden)
    assert (golden[0] == FaultCode.NONE) == (slack == 0)


# --- the reclaim bound on the RTL --------------------------------------------------------------------


def owner_chain(config, utops, rows=64):
    """The victim: a chain of short ME uTOps, each after a VE uTOp. While the VE runs, the victim
    wants no ME, so its ME can be harvested; its next ME uTOp then waits for it."""
    builder = ProgramBuilder()
    last = None
    for _ in range(utops):
        last = builder.utop(EngineClass.ME, [Instr("me.loadw", w=0, **TILE)] + matmuls(rows, 1, acc=0), deps=[last])
        last = builder.utop(EngineClass.VE, [Instr("ve.fill", dst=0x800, n=64, value=1)], deps=[last])
    return image(builder.build(config))


def image(code):
    return ProgramImage.for_config("small", code, entry=0, hbm_bytes=len(code), sram_bytes=0x1000, symbols=[])


def harvester(body, utops, cost):
    """Independent ME uTOps of ``body`` declaring ``cost``: always ready, wanting every ME."""
    return image(encode_stream(utop(EngineClass.ME, body, cost=cost) * utops + [Instr("halt")]))


def run_pair(policy, attacker_image, hbm_latency=8, reclaim_cycles=None, victim_utops=12, harvest_grace=0):
    """Victim (1 ME, 1 VE) next to an attacker (3 MEs, 1 VE). ``harvest_grace`` 0 lets the attacker
    take the victim's ME in every gap of its chain: the worst case for the reclaim bound."""
    with Hypervisor("small", "verilator", policy, hbm_timing={"hbm_latency": hbm_latency},
                    reclaim_cycles=reclaim_cycles, harvest_grace=harvest_grace) as hv:
        victim = hv.create_vnpu(VNPUSpec(mes=1, ves=1), name="victim")
        attacker = hv.create_vnpu(VNPUSpec(mes=3, ves=1), name="attacker")
        victim.load(owner_chain(hv.config, victim_utops))
        attacker.load(attacker_image)
        attack = attacker.submit({})
        victim.run({})
        try:
            attack.result()
            attacker_fault = FaultCode.NONE
        except DeviceFault as fault:
            attacker_fault = fault.fault
        usage = victim.usage()
        return {"latency": victim.runs[-1].latency_cycles, "reclaim_max": usage.reclaim_max_cycles,
                "attacker_fault": attacker_fault, "bound": hv.reclaim_bound,
                "attacker_harvested": attacker.usage().me_harvested_cycles + attacker.usage().ve_harvested_cycles}


def test_the_reviewed_harvester_no_longer_delays_the_owner():
    """The review's uTOps declare no cost (too long to declare within HARVEST_COST): they never run on
    the victim's ME, so the victim's latency is its static one."""
    static = run_pair("static", harvester(REVIEWED_BODY, 4, cost=0), victim_utops=8)
    harvest = run_pair("harvest", harvester(REVIEWED_BODY, 4, cost=0), victim_utops=8)
    assert harvest["attacker_harvested"] == 0 and harvest["reclaim_max"] == 0, harvest
    assert harvest["latency"] <= 1.05 * static["latency"], (static, harvest)


def test_a_harvester_that_lies_about_its_cost_faults_within_it():
    """Declaring the largest harvestable cost on the review's body: the engine stops it at the
    declaration, so the owner's wait stays within the bound (and the liar faults alone)."""
    result = run_pair("harvest", harvester(REVIEWED_BODY, 4, cost=HARVEST_COST_RESET))
    assert result["attacker_fault"] == FaultCode.COST_EXCEEDED
    assert result["reclaim_max"] <= result["bound"], result


def harvester_body(kind, cost):
    """A uTOp body of ``kind`` using as much of ``cost`` as it can: long matrix rows, vector fills
    (one unit per written chunk, the slowest unit when writes contend) or instruction fetches only."""
    if kind == "me_rows":
        rows = (cost - 2 * INSTRUCTION_UNITS - SMALL.me_rows) // 3
        return EngineClass.ME, [Instr("me.loadw", w=0, **TILE)] + matmuls(rows, 1)
    if kind == "ve_fill":
        rows = cost - 2 * INSTRUCTION_UNITS
        return EngineClass.VE, [Instr("ve.shape", rows=rows, dst_stride=0), Instr("ve.fill", dst=0, n=SMALL.ve_lanes)]
    return EngineClass.VE, [Instr("ve.shape", rows=1)] * (cost // INSTRUCTION_UNITS)


@pytest.mark.parametrize("kind", ["me_rows", "ve_fill", "fetch_only"])
@pytest.mark.parametrize("hbm_latency, target", [(8, 20000), (64, 40000)])
def test_the_owner_waits_at_most_the_bound_for_harvesters_at_the_limit(kind, hbm_latency, target):
    """Harvester uTOps that use all the cost they may declare under the operator's target: the
    measured longest wait stays within ``reclaim_bound``, and harvesting still happens. (The targets
    leave a few hundred work units: the bound charges every instruction a worst-case fetch behind
    every engine's prefetches in flight, so shorter targets leave uTOps too short to harvest.)"""
    cost = harvest_cost_for(SMALL, hbm_latency, target)
    cls, body = harvester_body(kind, cost)
    assert cost - INSTRUCTION_UNITS < utop_units(body, SMALL) <= cost
    attack = image(encode_stream(utop(cls, body, cost=cost) * 400 + [Instr("halt")]))
    result = run_pair("harvest", attack, hbm_latency=hbm_latency, reclaim_cycles=target)
    assert result["bound"] <= target
    assert result["attacker_fault"] == FaultCode.NONE
    assert 0 < result["reclaim_max"] <= result["bound"], result


def test_the_grace_period_keeps_an_owners_chain_on_its_engine():
    """With HARVEST_GRACE (reset 1,024 cycles) a harvester only takes an engine its owner has left
    idle that long: the victim's chain, whose gaps are shorter, waits once (for the uTOp running on
    its ME, idle until the victim started) and then keeps it, finishing that one wait after its
    static latency. With no grace the harvester takes the ME in every gap and the victim waits each
    time (measured: 11x its static latency)."""
    cls, body = harvester_body("me_rows", HARVEST_COST_RESET)
    attack = image(encode_stream(utop(cls, body, cost=utop_units(body, SMALL)) * 400 + [Instr("halt")]))
    static = run_pair("static", attack, victim_utops=24)
    graced = run_pair("harvest", attack, victim_utops=24, harvest_grace=HARVEST_GRACE_RESET)
    eager = run_pair("harvest", attack, victim_utops=24)
    assert graced["latency"] <= static["latency"] + graced["reclaim_max"] + 100, (static, graced)
    assert eager["latency"] > 3 * static["latency"], (static, eager)


def test_harvest_cost_zero_disables_harvesting():
    with Hypervisor("small", "verilator", "harvest") as hv:
        hv.pnpus[0].device.set_policy("harvest", harvest_cost=0)
        a = hv.create_vnpu(VNPUSpec(mes=1, ves=1))
        hv.create_vnpu(VNPUSpec(mes=3, ves=1))
        a.load(owner_chain(hv.config, 6))
        a.run({})
        assert a.usage().me_harvested_cycles == 0


def test_reclaim_cycles_are_checked():
    with pytest.raises(ValueError, match="below the shortest reclaim bound"):
        Hypervisor("small", "verilator", "harvest", reclaim_cycles=10)
    with pytest.raises(ValueError, match="reclaim_cycles must be an integer"):
        Hypervisor("small", "verilator", "harvest", reclaim_cycles="soon")


def test_set_policy_checks_the_harvest_cost(device):
    with pytest.raises(ValueError, match="harvest_cost must be an integer"):
        device.set_policy("harvest", harvest_cost=-1)
