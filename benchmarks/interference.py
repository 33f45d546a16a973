"""Performance interference: a victim tenant's latency next to hostile neighbours, per policy.

On one ``small`` pNPU (Verilator RTL, the preset's HBM timing: ``small``'s 120-cycle latency at
32 bytes per cycle, no jitter, no backpressure) a *victim* vNPU and a *neighbour* vNPU
split the engines: each owns 2 of the 4 MEs, 1 of the 2 VEs and 1 of the 2 DMA engines
(``VICTIM`` and ``NEIGHBOUR`` below; ``--shared-dma``: both share the two DMA engines, as every
vNPU did before DMA engines could be owned); the HBM port is shared by everyone (no bandwidth
shares). Under ``harvest`` either may run uTOps on the other's idle engines.

Victims (each run back to back, ``--runs`` times per scenario, every output checked against the
golden model): ``gemm`` (int8 GEMM 96x128x96) and ``vector`` (residual add+ReLU chain 32x64,
4 passes). Neighbours, each resubmitted as soon as its previous run ends (so it is active for the
victim's whole measurement; both start at the same cycle and the victim's first ``WARMUP_RUNS`` runs
are not counted):

* ``alone``: the neighbour vNPU exists (same engine split) but runs nothing: the baseline;
* ``long_utops``: independent ME uTOps of 16 matmuls x 4,095 rows each (~74 k cycles per uTOp) and
  VE uTOps of similar length (too long to declare a harvestable cost: they run on owned engines only);
* ``at_the_limit``: independent ME and VE uTOps each declaring as much work as ``HARVEST_COST``
  allows, the longest a harvester can hold an engine; the victim's longest reclaim wait is
  compared with :func:`tcloud.rtl.reclaim_bound`;
* ``dma_flood``: back-to-back independent 256 KiB ``dma.load`` / ``dma.store`` uTOps;
* ``many_short``: 600 tiny independent uTOps (ME, VE and DMA in turn);
* ``faulting``: a little real work, then an out-of-window ``dma.load``: faults (``HBM_BOUNDS``)
  every run and is resubmitted at once;
* ``killed``: a program that never finishes, killed by the host (``VNPU.kill``) every
  ``KILL_AFTER`` active cycles and resubmitted.

Measured per policy x victim x neighbour: the victim's latency (RTL ``RUN_CYCLES``) p50 and p99
over its runs, the slowdowns neighbour/alone under the same policy (and against the victim alone
under ``static``, i.e. on its owned engines only), and the victim's reclaim wait (``RECLAIM_WAIT``
cumulative and ``RECLAIM_MAX``, the longest single wait for an owned engine another context held).
With ``--runs`` N the p99 is numpy's linearly interpolated 99th percentile of N samples (for
N < 100, between the two largest). The simulation is deterministic; the spread between runs comes
from the phase of the neighbour against the victim.

Writes ``benchmarks/results/interference.json`` and ``interference.png`` (``--shared-dma``:
``interference_shared_dma.*``).
``python -m benchmarks.interference [--quick] [--shared-dma] [--runs N] [--out PATH] [--plot PATH]``
"""

import argparse
import dataclasses
import threading
import time

import numpy as np

from tcloud.firmware import elementwise, gemm
from tcloud.isa import EngineClass, Instr, ProgramImage, encode_stream, get_config
from tcloud.isa.cost import HARVEST_COST_DEFAULT, INSTRUCTION_UNITS, utop_units
from tcloud.rtl import reclaim_bound
from tcloud.runtime import DeviceFault, FunctionalDevice, run_image
from tcloud.runtime.hypervisor import Hypervisor, VNPUSpec

from .common import RESULTS, try_plot, write
from .common import conditions as common_conditions

CONFIG = "small"
BACKEND = "verilator"
POLICIES = ("static", "harvest", "temporal", "operator")
NEIGHBOURS = ("alone", "long_utops", "at_the_limit", "dma_flood", "many_short", "faulting", "killed")
HOSTILE = NEIGHBOURS[1:]
HBM_LATENCY = get_config(CONFIG).hbm_latency
"""The preset's HBM latency (cycles; 120 on ``small``), as every backend uses by default; no jitter, no
backpressure."""
HBM_TIMING = {"hbm_latency": HBM_LATENCY, "hbm_jitter": 0, "hbm_accept_probability": 1.0}
POLL_CYCLES = 512
"""Hypervisor driver granularity: runs start and finish (and kills land) within this many cycles."""
WARMUP_RUNS = 1
"""Victim runs not counted in the latencies: the first starts with the neighbour, not next to it in
steady state. The reclaim and DMA counters (cumulative in hardware) include them."""
KILL_AFTER, QUICK_KILL_AFTER = 20_000, 5_000
"""The ``killed`` neighbour is killed after about this many active cycles of each run."""
DEFAULT_RUNS, QUICK_RUNS = 32, 3
TIMEOUT_S = 3600
"""Wall seconds a scenario may take before its unfinished victim runs count as hung. At the preset
HBM latency a victim next to the DMA flood under ``temporal`` takes several hundred thousand cycles
per run, and the flood simulates at well under 100 k cycles/s on a busy 2-core machine: 600 s
(enough at an 8-cycle HBM) could cut a healthy scenario short."""

MIB, KIB = 1024 * 1024, 1024
VICTIM = VNPUSpec(mes=2, ves=1, dmas=1, sram_kib=120, hbm_mib=2)
NEIGHBOUR = VNPUSpec(mes=2, ves=1, dmas=1, sram_kib=120, hbm_mib=2)


def engine_split(shared_dma):
    """(victim, neighbour) specs: one DMA engine each, or (``shared_dma``) both sharing the pool."""
    return tuple(dataclasses.replace(spec, dmas=0) if shared_dma else spec for spec in (VICTIM, NEIGHBOUR))
CODE_AT = 0x180000
"""Neighbour programs live at 1.5 MiB of their 2 MiB window, clear of the data they touch."""


def utop(cls, body, **header):
    return [Instr("utop", cls=int(cls), len=len(body), **header), *body]


def declared(cls, body):
    """A uTOp declaring its exact cost, so the harvest policy may run it on others' engines."""
    return utop(cls, body, cost=utop_units(body, get_config(CONFIG)))


def program_image(body, sram_bytes=64 * KIB):
    code = encode_stream(body + [Instr("halt")])
    return ProgramImage.for_config(CONFIG, code, entry=CODE_AT, hbm_bytes=NEIGHBOUR.hbm_mib * MIB,
                                   sram_bytes=sram_bytes, symbols=[])


def me_utop(matmuls, rows):
    """One ME uTOp: a full weight tile, then ``matmuls`` matmuls of ``rows`` rows (accumulating
    into one output row, so the scratchpad footprint stays tiny)."""
    cfg = get_config(CONFIG)
    k, n = cfg.me_rows, cfg.me_cols
    return utop(EngineClass.ME, [Instr("me.loadw", w=0, k=k, n=n, w_stride=n)]
                + [Instr("me.matmul", a=0x100, out=0x1000, m=rows, a_stride=0, out_stride=0, acc=1)] * matmuls)


def ve_utop(adds, rows, n=64):
    return utop(EngineClass.VE, [Instr("ve.shape", rows=rows, dst_stride=0, src1_stride=0, src2_stride=0)]
                + [Instr("ve.add", dst=0x2000, src1=0x2000, src2=0x2100, n=n)] * adds)


def neighbour_programs(quick):
    """The hostile neighbours' images (``quick``: shorter uTOps, same shapes)."""
    long_rows, long_adds = (512, 1) if quick else (4095, 7)
    long_me, long_ve = me_utop(16, long_rows), ve_utop(long_adds, 256)  # ~74 k and ~72 k cycles (quick ~10 k)
    long_utops = program_image((long_me + long_me + long_ve) * 4)

    chunk, rows = 0x4000, (4 if quick else 16)  # 16 KiB rows: 256 KiB moved per uTOp (quick: 64 KiB)
    flood = []
    for i in range(32):
        op = "dma.load" if i % 2 == 0 else "dma.store"
        hbm = (i // 2 % 4) * 16 * chunk if op == "dma.load" else 0x100000 + (i // 2 % 2) * 16 * chunk
        flood += utop(EngineClass.DMA, [Instr(op, sram=0, hbm=hbm, rows=rows, row_bytes=chunk, hbm_stride=chunk,
                                              sram_stride=0)])
    dma_flood = program_image(flood)

    short = []
    for i in range(600):
        if i % 3 == 0:
            short += utop(EngineClass.ME, [Instr("me.loadw", w=0, k=8, n=8, w_stride=8),
                                           Instr("me.matmul", a=0x100, out=0x1000 + 0x100 * (i % 16), m=4)])
        elif i % 3 == 1:
            short += utop(EngineClass.VE, [Instr("ve.fill", dst=0x3000 + 0x40 * (i % 16), n=16, value=i)])
        else:
            short += utop(EngineClass.DMA, [Instr("dma.load", sram=0x4000 + 0x40 * (i % 16), hbm=0x40 * (i % 64),
                                                  rows=1, row_bytes=64)])
    many_short = program_image(short)

    window = NEIGHBOUR.hbm_mib * MIB
    faulting = program_image(
        utop(EngineClass.DMA, [Instr("dma.load", sram=0x8000, hbm=0, rows=4, row_bytes=0x1000, hbm_stride=0x1000,
                                     sram_stride=0x1000)])
        + me_utop(4, 1024) + me_utop(4, 1024) + ve_utop(4, 64)
        + utop(EngineClass.DMA, [Instr("dma.load", sram=0, hbm=window - 0x100, rows=1, row_bytes=0x200)]))

    killed = program_image((me_utop(4, 512) + ve_utop(1, 80)) * 1000)  # ~3 k-cycle uTOps, never ends in time
    return {"long_utops": long_utops, "at_the_limit": program_image(at_the_limit() * 24), "dma_flood": dma_flood,
            "many_short": many_short, "faulting": faulting, "killed": killed}


def at_the_limit():
    """An ME and a VE uTOp that each declare as much work as ``HARVEST_COST`` lets a harvester run."""
    cfg = get_config(CONFIG)
    k, n = cfg.me_rows, cfg.me_cols
    me = [Instr("me.loadw", w=0, k=k, n=n, w_stride=n)]
    matmul = Instr("me.matmul", a=0x100, out=0x1000, m=256, a_stride=0, out_stride=0, acc=1)
    while utop_units(me + [matmul], cfg) <= HARVEST_COST_DEFAULT:
        me.append(matmul)
    add = Instr("ve.add", dst=0x2000, src1=0x2000, src2=0x2100, n=64)
    per_row = utop_units([add], cfg) - INSTRUCTION_UNITS  # one row of the add
    rows = (HARVEST_COST_DEFAULT - 2 * INSTRUCTION_UNITS) // per_row
    ve = [Instr("ve.shape", rows=rows, dst_stride=0, src1_stride=0, src2_stride=0), add]
    return declared(EngineClass.ME, me) + declared(EngineClass.ME, me) + declared(EngineClass.VE, ve)


NEIGHBOUR_DESCRIPTIONS = {
    "alone": "neighbour vNPU allocated (same engine split) but idle",
    "long_utops": "12 independent uTOps per run, (ME, ME, VE) x 4: ME = loadw + 16 matmuls x 4095 rows "
                  "(~74 k cycles), VE = 7 x ve.add of 256 rows x 64 (~72 k cycles); quick: 512 rows, 1 add "
                  "(~10 k cycles)",
    "at_the_limit": "72 independent uTOps per run, (ME, ME, VE) x 24, each declaring the largest cost the "
                    "HARVEST_COST register lets a harvester run (ME: loadw + 256-row matmuls, VE: ve.add rows)",
    "dma_flood": "32 independent DMA uTOps per run, alternating dma.load / dma.store of 16 x 16 KiB rows "
                 "(256 KiB each, ~10 k cycles alone; quick: 4 rows)",
    "many_short": "600 independent tiny uTOps per run: ME (loadw + 4-row matmul), VE (16-element fill), "
                  "DMA (64-byte load) in turn",
    "faulting": "DMA 16 KiB load, 2 ME uTOps of 4 x 1024-row matmuls, 1 VE uTOp, then a dma.load across the "
                "end of its HBM window: HBM_BOUNDS every run, resubmitted at once",
    "killed": f"2000 independent uTOps alternating ME (4 x 512-row matmuls, ~3 k cycles) and VE (80 rows x 64, "
              f"~3 k cycles): never finishes in time; the host kills it (VNPU.kill) after ~{KILL_AFTER} active "
              f"cycles of each run (quick: {QUICK_KILL_AFTER}) and resubmits it at once",
}


def victims(quick, seed=0):
    """(image, inputs, expected outputs, description) per victim."""
    rng = np.random.default_rng(seed)
    m, k, n = (64, 96, 64) if quick else (96, 128, 96)
    rows, cols = (24, 64) if quick else (32, 64)
    gemm_inputs = {"A": rng.integers(-128, 128, (m, k), dtype=np.int8),
                   "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}
    vec_inputs = {"X": rng.integers(-1 << 20, 1 << 20, (rows, cols), dtype=np.int32),
                  "Y": rng.integers(-1000, 1000, (rows, cols), dtype=np.int32)}
    out = {}
    for name, image, inputs, what in (
            ("gemm", gemm(CONFIG, m, k, n), gemm_inputs, f"int8 GEMM {m}x{k}x{n}"),
            ("vector", elementwise(CONFIG, rows, cols, passes=4, block_elements=256), vec_inputs,
             f"elementwise relu(z+Y) {rows}x{cols}, 4 passes, 256-element blocks")):
        expected, _ = run_image(FunctionalDevice(CONFIG), image, inputs)
        out[name] = (image, inputs, expected, what)
    return out


class Neighbour:
    """Keeps a neighbour vNPU busy: resubmits its program whenever a run ends (from the
    hypervisor's driver thread, so there is no host-side gap), and counts how runs ended."""

    def __init__(self, vnpu):
        self.vnpu, self.stopped = vnpu, False
        self.outcomes = {}
        self.lock = threading.Lock()

    def start(self):
        self.vnpu.submit({}).add_done_callback(self._done)

    def _done(self, future):
        exc = future.exception()
        if exc is None:
            outcome = "finished"
        else:
            outcome = exc.fault.name if isinstance(exc, DeviceFault) else type(exc).__name__
        with self.lock:
            if self.stopped:  # the run cut short when the hypervisor closed after the measurement
                return
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        try:
            self.start()
        except Exception as exc:  # noqa: BLE001 - the hypervisor is closing; record it, never raise in the driver
            with self.lock:
                self.outcomes[f"resubmit failed: {type(exc).__name__}"] = 1

    def stop(self):
        with self.lock:
            self.stopped = True


def scenario(policy, victim, neighbour, runs, images, timeout_s, kill_after=KILL_AFTER, specs=(VICTIM, NEIGHBOUR)):
    """Run ``runs`` victim jobs next to ``neighbour``; return latencies, reclaim waits and checks."""
    image, inputs, expected, _ = victim
    wall = time.perf_counter()
    with Hypervisor(CONFIG, BACKEND, policy, poll_cycles=POLL_CYCLES, hbm_timing=HBM_TIMING) as hv:
        v = hv.create_vnpu(specs[0], name="victim")
        nb = hv.create_vnpu(specs[1], name=neighbour)
        v.load(image)
        keeper = None
        if neighbour != "alone":
            nb.load(images[neighbour])
            keeper = Neighbour(nb)
        with hv._lock:  # everything is queued before the driver clocks a cycle: only the kills depend on
            start_cycle = hv.stats()[0]["cycles"]  # locked: the driver thread may be using the device
            if keeper is not None:
                keeper.start()
            futures = [v.submit(inputs) for _ in range(WARMUP_RUNS + runs)]
        kills, next_kill, deadline, hung = 0, kill_after, time.monotonic() + timeout_s, False
        while not all(f.done() for f in futures):
            if time.monotonic() > deadline:
                hung = True
                break
            if neighbour == "killed":
                active = nb.usage().active_cycles
                if active >= next_kill:
                    nb.kill()
                    kills += 1
                    next_kill = active + kill_after
            time.sleep(0.001)
        if keeper is not None:
            keeper.stop()
        cycles = hv.stats()[0]["cycles"] - start_cycle
        wrong, errors = 0, []
        for f in futures:
            if not f.done():
                continue
            if f.exception() is not None:
                errors.append(repr(f.exception()))
                continue
            out = f.result()
            if out.keys() != expected.keys() or any(not np.array_equal(out[k], expected[k]) for k in expected):
                wrong += 1
        usage = v.usage()
        latencies = [r.latency_cycles for r in v.runs][WARMUP_RUNS:]
        warmup = [r.latency_cycles for r in v.runs][:WARMUP_RUNS]
        neighbour_usage = nb.usage()
    result = {
        "latencies": latencies,
        "p50": float(np.percentile(latencies, 50)) if latencies else None,
        "p99": float(np.percentile(latencies, 99)) if latencies else None,
        "reclaim_wait_cycles": usage.reclaim_wait_cycles,
        "warmup_latencies": warmup,
        "reclaim_wait_per_run": round(usage.reclaim_wait_cycles / max(1, len(v.runs)), 1),
        "reclaim_max_cycles": usage.reclaim_max_cycles,
        "victim_harvested_cycles": {"me": usage.me_harvested_cycles, "ve": usage.ve_harvested_cycles},
        "victim_dma_cycles_per_run": round(usage.dma_cycles / max(1, len(v.runs)), 1),
        "neighbour_harvested_cycles": {"me": neighbour_usage.me_harvested_cycles,
                                       "ve": neighbour_usage.ve_harvested_cycles},
        "neighbour_hbm_bytes": neighbour_usage.hbm_bytes_read + neighbour_usage.hbm_bytes_written,
        "neighbour_outcomes": dict(keeper.outcomes) if keeper else {},
        "kills": kills,
        "window_cycles": cycles,
        "wrong_outputs": wrong,
        "failed_runs": errors,
        "unfinished_runs": sum(not f.done() for f in futures) if hung else 0,
        "wall_seconds": round(time.perf_counter() - wall, 2),
    }
    return result


def measure(runs, quick, policies=POLICIES, neighbours=NEIGHBOURS, timeout_s=TIMEOUT_S, shared_dma=False):
    images = neighbour_programs(quick)
    vics = victims(quick)
    results = {name: {} for name in vics}
    for vname, victim in vics.items():
        for policy in policies:
            results[vname][policy] = {}
            for neighbour in neighbours:
                r = scenario(policy, victim, neighbour, runs, images, timeout_s,
                             QUICK_KILL_AFTER if quick else KILL_AFTER, engine_split(shared_dma))
                results[vname][policy][neighbour] = r
                flag = ""
                if r["wrong_outputs"] or r["failed_runs"] or r["unfinished_runs"]:
                    flag = (f"  !! wrong {r['wrong_outputs']} failed {len(r['failed_runs'])} "
                            f"unfinished {r['unfinished_runs']}")
                print(f"{vname:6} {policy:8} {neighbour:10} p50 {r['p50']:>9.0f}  p99 {r['p99']:>9.0f}  "
                      f"reclaim max {r['reclaim_max_cycles']:>7}  total {r['reclaim_wait_cycles']:>8}  "
                      f"nb {r['neighbour_outcomes']}  {r['wall_seconds']:.1f}s{flag}", flush=True)
    for vname in results:
        owned = results[vname].get("static", {}).get("alone")
        for policy in results[vname]:
            alone = results[vname][policy].get("alone")
            for neighbour, r in results[vname][policy].items():
                if alone and r["p50"] is not None:
                    r["slowdown_p50"] = round(r["p50"] / alone["p50"], 3)
                    r["slowdown_p99"] = round(r["p99"] / alone["p99"], 3)
                if owned and r["p50"] is not None:
                    r["slowdown_p50_vs_owned"] = round(r["p50"] / owned["p50"], 3)
                    r["slowdown_p99_vs_owned"] = round(r["p99"] / owned["p99"], 3)
    return vics, results


def summarize(results, shared_dma=False):
    def rows(policy=None):
        for vname, per_policy in results.items():
            for pol, per_nb in per_policy.items():
                if policy is not None and pol != policy:
                    continue
                for nb, r in per_nb.items():
                    if nb != "alone" and "slowdown_p99" in r:
                        yield vname, pol, nb, r

    def case(vname, pol, nb, r):
        return {"victim": vname, "policy": pol, "neighbour": nb, "slowdown_p50": r["slowdown_p50"],
                "slowdown_p99": r["slowdown_p99"], "p50_cycles": r["p50"], "p99_cycles": r["p99"],
                "alone_p99_cycles": results[vname][pol]["alone"]["p99"],
                "reclaim_max_cycles": r["reclaim_max_cycles"]}

    summary = {}
    harvest = list(rows("harvest"))
    if harvest:
        summary["harvest_worst_case"] = case(*max(harvest, key=lambda t: t[3]["slowdown_p99"]))
        engines = [row for row in harvest if row[2] != "dma_flood"]
        if engines:  # the worst case from sharing MEs/VEs (the flood hurts every policy alike)
            summary["harvest_worst_engine_case"] = case(*max(engines, key=lambda t: t[3]["slowdown_p99"]))
        summary["harvest_max_reclaim_wait"] = case(*max(harvest, key=lambda t: t[3]["reclaim_max_cycles"]))
    summary["worst_case_per_policy"] = {pol: case(*max(rs, key=lambda t: t[3]["slowdown_p99"]))
                                        for pol in POLICIES if (rs := list(rows(pol)))}
    flood = {f"{v}/{p}": {"slowdown_p50": r["slowdown_p50"], "slowdown_p99": r["slowdown_p99"],
                          "victim_dma_cycles_per_run_vs_alone": round(
                              r["victim_dma_cycles_per_run"] / results[v][p]["alone"]["victim_dma_cycles_per_run"], 2)}
             for v, p, nb, r in rows() if nb == "dma_flood"}
    if flood:
        worst = max(flood, key=lambda k: flood[k]["slowdown_p50"])
        static = {k: f for k, f in flood.items() if k.endswith("/static")}
        summary["dma_flood"] = flood
        summary["dma_flood_worst"] = {"case": worst, **flood[worst]}
        if static:  # under static only the HBM port (and, with --shared-dma, the DMA engines) is shared
            worst_static = max(static, key=lambda k: static[k]["slowdown_p50"])
            f = static[worst_static]
            large = f["slowdown_p50"] > 1.5
            transfer = f["victim_dma_cycles_per_run_vs_alone"]
            cause = ("its own DMA uTOps take {:.2f}x their engine-cycles alone, so most of it is waiting for a "
                     "DMA engine the flood's long uTOps hold" if transfer < 0.5 * f["slowdown_p50"]
                     else "its own DMA uTOps take {:.2f}x their engine-cycles alone: HBM bandwidth").format(transfer)
            dmas = "share both DMA engines" if shared_dma else "own one DMA engine each"
            summary["dma_flood_note"] = (
                f"{'LARGE: ' if large else ''}victim and neighbour {dmas}; under static, where no other context "
                f"runs on the victim's engines, a DMA-flooding neighbour slows the {worst_static.split('/')[0]} victim "
                f"{f['slowdown_p50']:.2f}x at p50 and {f['slowdown_p99']:.2f}x at p99 ({cause}); up to "
                f"{flood[worst]['slowdown_p50']:.2f}x at p50 under {worst.split('/')[1]}. HBM bandwidth is shared "
                "with no per-context shares.")
    bound = reclaim_bound(get_config(CONFIG), HBM_LATENCY, HARVEST_COST_DEFAULT)
    longest = max((r["reclaim_max_cycles"] for v, p, nb, r in rows("harvest")), default=0)
    summary["harvest_reclaim_within_bound"] = {"longest_wait_cycles": longest, "bound_cycles": bound,
                                               "holds": longest <= bound}
    summary["max_reclaim_wait_cycles"] = {
        pol: {nb: max(results[v][pol][nb]["reclaim_max_cycles"] for v in results) for nb in NEIGHBOURS
              if all(nb in results[v][pol] for v in results)}
        for pol in POLICIES if all(pol in results[v] for v in results)}
    bad = [f"{v}/{p}/{nb}: wrong {r['wrong_outputs']}, failed {r['failed_runs']}, unfinished {r['unfinished_runs']}"
           for v, per_policy in results.items() for p, per_nb in per_policy.items() for nb, r in per_nb.items()
           if r["wrong_outputs"] or r["failed_runs"] or r["unfinished_runs"]]
    summary["victim_runs_wrong_failed_or_hung"] = bad
    return summary


def conditions(runs, quick, shared_dma=False):
    from tcloud.rtl import abort_bound
    from tcloud.isa.csr import QUANTUM_RESET, STARVATION_RESET

    cfg = get_config(CONFIG)
    return {**common_conditions(cfg, HBM_TIMING), "backend": BACKEND,
            "abort_bound_cycles": abort_bound(cfg, HBM_LATENCY),
            "harvest_cost": HARVEST_COST_DEFAULT,
            "reclaim_bound_cycles": reclaim_bound(cfg, HBM_LATENCY, HARVEST_COST_DEFAULT),
            "quantum_cycles": QUANTUM_RESET, "starvation_cycles": STARVATION_RESET,
            "poll_cycles": POLL_CYCLES, "warmup_runs": WARMUP_RUNS,
            "kill_after_cycles": QUICK_KILL_AFTER if quick else KILL_AFTER,
            "runs_per_scenario": runs, "quick": quick,
            "engine_split": {"victim": engine_split(shared_dma)[0].__dict__,
                             "neighbour": engine_split(shared_dma)[1].__dict__,
                             "shared": ("the HBM port (no bandwidth shares)" if not shared_dma else
                                        f"the HBM port and all {cfg.dma_count} DMA engines")}}


def plot(results, path, shared_dma=False):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vnames = list(results)
    policies = [p for p in POLICIES if p in results[vnames[0]]]
    hostile = [nb for nb in HOSTILE if nb in results[vnames[0]][policies[0]]]
    fig, axes = plt.subplots(2, len(vnames), figsize=(6.5 * len(vnames), 8), squeeze=False)
    width = 0.8 / len(hostile)
    colors = plt.get_cmap("tab10")
    for col, vname in enumerate(vnames):
        top, bottom = axes[0][col], axes[1][col]
        for j, nb in enumerate(hostile):
            xs = [i + (j - (len(hostile) - 1) / 2) * width for i in range(len(policies))]
            p50 = [results[vname][p][nb]["slowdown_p50"] for p in policies]
            p99 = [results[vname][p][nb]["slowdown_p99"] for p in policies]
            top.bar(xs, p50, width, color=colors(j), label=nb)
            top.scatter(xs, p99, marker="_", s=160, color="black", zorder=3,
                        label="p99" if j == 0 else None)
            reclaim = [results[vname][p][nb]["reclaim_max_cycles"] or np.nan for p in policies]  # 0: no bar
            bottom.bar(xs, reclaim, width, color=colors(j), label=nb)
        alone = ", ".join(f"{p} {results[vname][p]['alone']['p50']:.0f}" for p in policies)
        top.set_title(f"victim '{vname}': latency next to the neighbour / alone (same policy, neighbour idle);\n"
                      f"bar p50, tick p99; alone p50 cycles: {alone}", fontsize=9)
        top.axhline(1.0, color="grey", linewidth=1)
        top.axhline(1.5, color="grey", linestyle="--", linewidth=1)
        top.set_yscale("log")
        top.set_ylabel("slowdown (log; dashed: 1.5x)")
        bottom.set_title(f"victim '{vname}': longest single wait for an owned engine another context held "
                         f"(RECLAIM_MAX)", fontsize=9)
        bottom.set_yscale("log")
        bottom.set_ylim(bottom=10)
        bottom.set_ylabel("cycles (log; no bar: 0)")
        for ax in (top, bottom):
            ax.set_xticks(range(len(policies)), policies)
            ax.set_xlim(-0.5, len(policies) - 0.5)
            ax.grid(axis="y", which="major", alpha=0.3)
        top.legend(fontsize=7, ncol=2)
    dma = "both DMA engines and the HBM port shared" if shared_dma else "1 DMA engine each, the HBM port shared"
    fig.suptitle(f"Victim next to hostile neighbours on one 'small' pNPU (Verilator RTL, {HBM_LATENCY}-cycle HBM); "
                 f"victim and neighbour each own 2 MEs + 1 VE, {dma}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def print_table(results):
    print("\nslowdown vs alone (p50 / p99), longest reclaim wait in cycles:")
    for vname, per_policy in results.items():
        print(f"victim {vname}")
        print(f"  {'policy':9}" + "".join(f"{nb:>24}" for nb in HOSTILE if nb in per_policy[next(iter(per_policy))]))
        for policy, per_nb in per_policy.items():
            cells = [f"{r['slowdown_p50']:.2f}/{r['slowdown_p99']:.2f} ({r['reclaim_max_cycles']})"
                     for nb, r in per_nb.items() if nb != "alone"]
            print(f"  {policy:9}" + "".join(f"{c:>24}" for c in cells))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, help=f"victim runs per scenario (default {DEFAULT_RUNS}, "
                                                 f"quick {QUICK_RUNS})")
    parser.add_argument("--quick", action="store_true", help="smaller victims and neighbour uTOps (CI smoke run)")
    parser.add_argument("--shared-dma", action="store_true",
                        help="victim and neighbour share both DMA engines instead of owning one each")
    parser.add_argument("--out")
    parser.add_argument("--plot")
    args = parser.parse_args(argv)
    name = "interference_shared_dma" if args.shared_dma else "interference"
    runs = args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    if runs < 1:
        parser.error("--runs must be at least 1")
    start = time.perf_counter()
    recorded = conditions(runs, args.quick, args.shared_dma)  # before measuring: sources may change meanwhile
    vics, results = measure(runs, args.quick, shared_dma=args.shared_dma)
    summary = summarize(results, args.shared_dma)
    elapsed = round(time.perf_counter() - start, 1)
    print_table(results)
    print()
    worst = summary.get("harvest_worst_case")
    if worst:
        print(f"harvest worst case: victim {worst['victim']} next to {worst['neighbour']}: "
              f"p50 {worst['slowdown_p50']}x, p99 {worst['slowdown_p99']}x, "
              f"reclaim max {worst['reclaim_max_cycles']} cycles")
    for key, value in summary.items():
        if key != "harvest_worst_case":
            print(f"{key}: {value}")
    print(f"total {elapsed} s")
    write(name, {
        "conditions": recorded,
        "victims": {name: what for name, (_, _, _, what) in vics.items()},
        "neighbours": NEIGHBOUR_DESCRIPTIONS,
        "summary": summary,
        "wall_seconds": elapsed,
        "results": results}, args.out)
    try_plot(plot, results, args.plot or str(RESULTS / f"{name}.png"), args.shared_dma)
    return summary


if __name__ == "__main__":
    main()
