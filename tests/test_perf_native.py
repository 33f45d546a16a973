"""The perf backend's compiled core (timing only) against its Python event loop, the reference: the
same state after every run, over random DAG programs of 1-4 tenants under all four policies (with
random policy registers), random HBM timing, injected faults, kills and watchdog budgets, run whole
and in slices, and over harvest runs built to make owners wait to reclaim their engines."""

import copy
import math

import numpy as np
import pytest

from tcloud.firmware import gemm
from tcloud.isa import ContextStatus, EngineClass, FaultCode, Instr, decode_stream, encode_stream, get_config
from tcloud.isa.table import TOKEN_MAX_COUNT
from tcloud.runtime import DeviceError
from tcloud.runtime.backends.perf import PerfDevice
from tcloud.runtime.backends import perf_native
from tcloud.runtime.backends import perf_timing as timing
from tcloud.runtime.execute import Placement, load_image, plan_load
from tcloud.runtime.tenants import random_inputs
from tcloud.verif.random_programs import random_program

POLICIES = ("static", "harvest", "temporal", "operator")
FAULTS = (None, "privileged", "wrong class", "bad body word", "no halt", "never signalled", "no engine")


def _state(device):
    """Everything the event loop keeps, comparable across the two implementations (the reports also
    as the compiled core gives them before its state goes back to Python objects)."""
    reports_before_sync = [device.context(i) for i in range(len(device.contexts))], device.stats()
    device._sync()

    def utop_key(utop):
        return None if utop is None else (int(utop.cls), utop.length, utop.signal, utop.need, utop.busy, utop.cost)

    contexts = []
    for ctx in device.contexts:
        fields = {k: v for k, v in vars(ctx).items() if k not in ("head", "native_program")}
        fields["head"] = utop_key(ctx.head) if ctx.state == "issue" else None
        contexts.append(fields)
    engines = []
    for engine in device.engines:
        fields = {name: getattr(engine, name) for name in engine.__slots__ if name not in ("ctx", "utop")}
        fields["ctx"] = None if engine.ctx is None else engine.ctx.index
        fields["utop"] = None if engine.utop is None else (utop_key(engine.utop[0]), *engine.utop[1:])
        engines.append(fields)
    events = sorted((time, sequence, handler.__name__, payload) for time, sequence, handler, payload in device._events)
    scalars = {name: getattr(device, name) for name in (
        "now", "_sequence", "_fetch_free", "_fetch_last", "_dispatch_last", "_dispatched_at", "_flows_at",
        "_flows_version", "_holder", "_slice_end", "_class_holder", "_class_since", "_utops_dispatched")}
    golden = [(g.status, g.fault, g.fault_pc, g.fault_detail) for g in device.machine.contexts]
    reports = [device.context(i) for i in range(len(device.contexts))]
    return copy.deepcopy({"scalars": scalars, "contexts": contexts, "engines": engines, "events": events,
            "flows": list(device._flows.items()), "golden": golden, "reports": reports, "stats": device.stats(),
            "reports_before_sync": reports_before_sync})


def _inject(code, fault, rng):
    """``code`` with one fault of kind ``fault``."""
    instrs = decode_stream(code)
    heads = [i for i, instr in enumerate(instrs) if instr.mnemonic == "utop"]
    words = [bytes(code[i:i + 16]) for i in range(0, len(code), 16)]
    at = int(rng.choice(heads))
    if fault == "privileged":
        words[at] = encode_stream([Instr("ctx.kill", ctx=1)])
    elif fault == "wrong class":
        words[at] = encode_stream([Instr("ve.fill", dst=0, n=4, value=1)])
    elif fault == "bad body word":
        length = instrs[at]["len"]
        words[at + int(rng.integers(1, length + 1))] = b"\xff" * 16
    elif fault == "no halt":
        words[-1] = encode_stream([Instr("nop")])
    elif fault == "never signalled":
        words[at] = encode_stream([Instr("utop", **{**instrs[at].values, "wait2": 15, "count2": 3})])
    return b"".join(words)


def _scenario(seed):
    rng = np.random.default_rng(seed)
    config = "small" if seed % 4 else "tiny"
    cfg = get_config(config)
    tenants = int(rng.integers(1, min(cfg.contexts, 4) + 1))
    return {"config": config, "policy": POLICIES[seed % 4], "hbm_latency": int(rng.integers(20, 200)),
            "hbm_jitter": int(rng.choice([0, 0, 8, 24])), "hbm_accept_probability": float(rng.choice([1.0, 1.0, 0.7])),
            "programs": [random_program(config, 1000 * seed + t, utops=int(rng.integers(4, 24)))[0]
                         for t in range(tenants)],
            "faults": [FAULTS[int(rng.integers(len(FAULTS)))] if rng.random() < 0.5 else None for _ in range(tenants)],
            "budgets": [int(rng.integers(500, 6000)) if rng.random() < 0.2 else 0 for _ in range(tenants)],
            "priorities": [int(rng.integers(0, 3)) for _ in range(tenants)],
            "kill": (int(rng.integers(0, tenants)), int(rng.integers(200, 5000))) if rng.random() < 0.3 else None,
            "slice": int(rng.integers(300, 3000)) if rng.random() < 0.4 else None, "seed": seed,
            "registers": {"quantum": int(rng.integers(64, 2048)), "starvation": int(rng.integers(16, 1024)),
                          "harvest_cost": int(rng.integers(1, 1 << 12)), "harvest_grace": int(rng.integers(0, 2048))}
            if rng.random() < 0.5 else {}}


def start_scenario(device, scenario):
    """Set a device's policy, load a scenario's tenants (their masks, priorities, budgets and faults)
    and start them (any backend: tests/test_perf_backend.py runs some on Verilator)."""
    cfg = device.config
    device.set_policy(scenario["policy"], **scenario["registers"])
    rng = np.random.default_rng(scenario["seed"])
    count = len(scenario["programs"])
    starts = []
    for index, image in enumerate(scenario["programs"]):
        me = ((1 << cfg.me_count) - 1) if count == 1 else 1 << (index % cfg.me_count)
        ve = 1 << (index % cfg.ve_count)
        if "masks" in scenario:
            me, ve = scenario["masks"][index]
        if scenario["faults"][index] == "no engine":
            me = 0
        placement = Placement(context=index, hbm_base=index * (cfg.hbm_bytes // 4), sram_base=index * (cfg.sram_bytes // 4),
                              me_mask=me, ve_mask=ve, dma_mask=(1 << cfg.dma_count) - 1)
        plan = plan_load(cfg, image, random_inputs(image, rng), placement)
        for command in plan.setup:
            device.host(command)
        device.host(Instr("ctx.prio", ctx=index, priority=scenario["priorities"][index]))
        if scenario["budgets"][index]:
            device.host(Instr("ctx.budget", ctx=index, cycles=scenario["budgets"][index]))
        for address, data in plan.writes:
            device.write_hbm(address, data)
        fault = scenario["faults"][index]
        if fault not in (None, "no engine"):
            device.write_hbm(placement.hbm_base + image.entry, _inject(image.code, fault, rng))
        starts.append(plan.start)
    for start in starts:
        device.host(start)


def _run(scenario, native):
    """Run a scenario; the states after each step."""
    cfg = get_config(scenario["config"])
    device = PerfDevice(cfg, hbm_latency=scenario["hbm_latency"], hbm_jitter=scenario["hbm_jitter"],
                        hbm_accept_probability=scenario["hbm_accept_probability"], data=False, native=native)
    start_scenario(device, scenario)
    states = [_state(device)]
    if scenario["kill"]:
        victim, at = scenario["kill"]
        device.run(at)
        device.host(Instr("ctx.kill", ctx=victim))
        states.append(_state(device))
    while not device.run(scenario["slice"]):
        if scenario["slice"] and scenario["seed"] % 2:
            states.append(_state(device))  # a full sync between slices, else the core keeps the state
    states.append(_state(device))
    assert (device._native is not None) is bool(native)  # no silent fallback: Python against Python
    return states


@pytest.mark.parametrize("seed", range(64))
def test_the_compiled_core_gives_the_reference_state(seed):
    scenario = _scenario(seed)
    reference, native = _run(scenario, native=False), _run(scenario, native=True)
    assert len(reference) == len(native)
    for step, (expected, got) in enumerate(zip(reference, native)):
        for key in expected:
            assert got[key] == expected[key], (scenario["policy"], step, key)


def _reclaim_scenario(seed):
    """Harvest with a short grace: context 0 owns three MEs it leaves idle between its phases, context 1
    owns one and runs a GEMM whose uTOps harvest the others, so context 0 waits to reclaim them."""
    rng = np.random.default_rng(seed)
    owner = random_program("small", 9000 + seed, utops=24)[0]
    return {"config": "small", "policy": "harvest", "hbm_latency": int(rng.integers(40, 160)), "hbm_jitter": 0,
            "hbm_accept_probability": 1.0, "programs": [owner, gemm("small", 64, 128, 64)], "faults": [None, None],
            "budgets": [0, 0], "priorities": [0, 0], "kill": None, "slice": None, "seed": seed,
            "registers": {"harvest_grace": int(rng.choice([0, 4, 32, 256]))}, "masks": [(0b1101, 1), (0b0010, 2)]}


@pytest.mark.parametrize("seed", range(8))
def test_reclaim_waits_match(seed):
    scenario = _reclaim_scenario(seed)
    reference, native = _run(scenario, native=False), _run(scenario, native=True)
    assert reference == native


def test_the_reclaim_scenarios_reclaim():
    waits = [_run(_reclaim_scenario(seed), native=True)[-1]["reports"][0].timing["reclaim_wait_cycles"]
             for seed in range(8)]
    assert sum(wait > 0 for wait in waits) >= 2, waits


def test_the_corpus_covers_every_policy_fault_kill_and_watchdog():
    scenarios = [_scenario(seed) for seed in range(64)]
    faults = {fault for s in scenarios for fault in s["faults"]}
    assert faults == set(FAULTS)
    assert {s["policy"] for s in scenarios} == set(POLICIES)
    assert any(s["kill"] for s in scenarios) and any(any(s["budgets"]) for s in scenarios)
    assert any(s["registers"] for s in scenarios) and any(s["slice"] for s in scenarios)
    codes = set()
    for scenario in scenarios:
        codes |= {report.fault for report in _run(scenario, native=True)[-1]["reports"]}
    assert {FaultCode.PRIVILEGED, FaultCode.WRONG_CLASS, FaultCode.ILLEGAL_OPCODE, FaultCode.FETCH_BOUNDS,
            FaultCode.TOKEN_DEADLOCK, FaultCode.NO_ENGINE, FaultCode.KILLED, FaultCode.WATCHDOG} <= codes


def test_a_watchdog_in_a_long_run_and_runs_in_slices_match():
    image = gemm("small", 128, 256, 128)
    inputs = random_inputs(image, np.random.default_rng(3))
    results = []
    for native in (False, True):
        device = PerfDevice("small", data=False, native=native)
        device.host(Instr("ctx.budget", ctx=0, cycles=7000))
        load_image(device, image, inputs)
        steps = []
        while not device.run(997):
            steps.append((device.cycles, device.context(0), device.stats()))
        steps.append(_state(device))
        results.append(steps)
    assert results[0] == results[1]
    assert results[1][-1]["reports"][0].fault == FaultCode.WATCHDOG


def test_the_core_is_built_from_generated_constants_and_refuses_data():
    header = perf_native.layout_header()
    assert f"constexpr int kNumTokens = " in header and "struct Context" in header
    for name in perf_native.CONTEXT_FIELDS:
        assert f"    {'int64_t' if name in perf_native.COUNTER_FIELDS else 'double'} {name};" in header
    with pytest.raises(DeviceError, match="native=True needs data=False"):
        PerfDevice("small", native=True)
    device = PerfDevice("small", data=False)
    assert device._native is not None and PerfDevice("small", data=False, native=False)._native is None
    assert device.context(0).status == ContextStatus.IDLE


def test_tenants_loaded_while_others_run_and_code_written_under_a_run_match():
    """Host commands between runs (a tenant loaded while another runs, a finished context restarted)
    and a program rewritten while its context runs (the device then goes on with the Python loop)."""
    cfg = get_config("small")
    programs = [random_program("small", 7000 + i, utops=16) for i in range(3)]
    gemm_image = gemm("small", 64, 64, 64)
    results = []
    for native in (False, True):
        device = PerfDevice(cfg, hbm_latency=90, data=False, native=native)
        device.set_policy("harvest")
        states = []

        def load(index, image, inputs):
            load_image(device, image, inputs, Placement(context=index, hbm_base=index * (cfg.hbm_bytes // 4),
                                                        sram_base=index * (cfg.sram_bytes // 4), me_mask=1 << index,
                                                        ve_mask=1 << (index % cfg.ve_count), dma_mask=1))

        load(0, *programs[0])
        device.run(700)
        states.append(_state(device))
        load(1, gemm_image, random_inputs(gemm_image, np.random.default_rng(1)))
        device.run(1500)
        load(2, *programs[1])
        assert (device._native is not None) == native  # other tenants' writes leave the core in use
        assert device.run()
        states.append(_state(device))
        load(0, *programs[2])
        device.run(300)
        halt = programs[2][0].entry + len(programs[2][0].code) - 16
        device.write_hbm(halt, encode_stream([Instr("nop")]))  # context 0 now runs off its window
        assert device._native is None
        assert device.run()
        states.append(_state(device))
        assert states[-1]["reports"][0].fault == FaultCode.FETCH_BOUNDS
        load(1, *programs[0])  # nothing ran: the core is back
        assert (device._native is not None) == native
        assert device.run()
        states.append(_state(device))
        results.append(states)
    assert results[0] == results[1]


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A process that has not built or loaded the core yet, with its cache in ``tmp_path``."""
    monkeypatch.setenv("TCLOUD_CACHE", str(tmp_path))
    for name, value in (("_LIBRARY", None), ("_BUILD_ERROR", None), ("_WARNED", False)):
        monkeypatch.setattr(perf_native, name, value)
    return tmp_path


def test_without_a_compiler_timing_only_warns_once_and_runs_on_the_python_loop(fresh_build, monkeypatch):
    monkeypatch.setenv("CXX", str(fresh_build / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="Python event loop") as warned:
        devices = [PerfDevice("small", data=False) for _ in range(3)]
    assert len(warned) == 1 and all(device._native is None for device in devices)
    monkeypatch.delenv("CXX")  # the failure is remembered: no second try in this process
    with pytest.raises(perf_native.NativeBuildError, match="cannot build the perf backend's core"):
        PerfDevice("small", data=False, native=True)


def test_without_python_headers_timing_only_warns_naming_them_and_runs_on_the_python_loop(fresh_build, monkeypatch):
    monkeypatch.setattr(perf_native.sysconfig, "get_paths", lambda: {"include": str(fresh_build)})
    with pytest.warns(RuntimeWarning, match=r"development headers are not installed \(no Python.h in"):
        device = PerfDevice("small", data=False)
    assert device._native is None


def test_a_cached_core_loads_without_python_headers(fresh_build, monkeypatch):
    perf_native._build()

    def removed():
        raise perf_native.NativeBuildError("the headers were removed")

    monkeypatch.setattr(perf_native, "_python_headers", removed)  # only compiling needs them
    assert PerfDevice("small", data=False)._native is not None


def test_a_cache_that_is_a_file_warns_and_runs_on_the_python_loop(fresh_build, monkeypatch):
    (fresh_build / "file").write_text("")
    monkeypatch.setenv("TCLOUD_CACHE", str(fresh_build / "file"))
    with pytest.warns(RuntimeWarning, match="Python event loop"):
        device = PerfDevice("small", data=False)
    assert device._native is None


def test_a_cached_core_that_does_not_load_is_built_again(fresh_build):
    path = perf_native._build()
    path.write_bytes(b"not a shared library")
    device = PerfDevice("small", data=False)
    assert device._native is not None and path.stat().st_size > 1000


def test_the_cache_key_names_the_machine_and_the_compiler_version(monkeypatch):
    header, compiler = perf_native.layout_header(), "c++"
    first = perf_native._target(header, compiler)
    monkeypatch.setattr(perf_native.platform, "machine", lambda: "other-machine")
    assert perf_native._target(header, compiler) != first
    monkeypatch.undo()
    monkeypatch.setattr(perf_native, "_compiler_version", lambda compiler: "another version")
    assert perf_native._target(header, compiler) != first


def test_a_dma_utop_whose_first_body_word_does_not_decode_faults_only_its_context():
    """A hostile tenant's DMA uTOp with an undecodable first body word: ILLEGAL_OPCODE at that word (as
    the golden model gives), in both loops, and the other tenant runs to its halt."""
    bad = encode_stream([Instr("utop", cls=int(EngineClass.DMA), len=1)]) + b"\xff" * 16 + encode_stream([Instr("halt")])
    image, inputs = random_program("small", 4242, utops=12)
    cfg = get_config("small")
    results = []
    for native in (False, True):
        device = PerfDevice(cfg, data=False, native=native)
        device.host(Instr("ctx.hbm", ctx=0, base=0, size=0x1000))
        device.host(Instr("ctx.engines", ctx=0, me_mask=1, ve_mask=1, dma_mask=1))
        device.write_hbm(0, bad)
        device.host(Instr("ctx.start", ctx=0, pc=0))
        load_image(device, image, inputs, Placement(context=1, hbm_base=cfg.hbm_bytes // 2, sram_base=cfg.sram_bytes // 2,
                                                    me_mask=2, ve_mask=2, dma_mask=2))
        assert device.run()
        assert (device._native is not None) == native
        results.append(_state(device))
    assert results[0] == results[1]
    hostile, other = results[1]["reports"][:2]
    assert (hostile.status, hostile.fault, hostile.fault_pc) == (ContextStatus.FAULTED, FaultCode.ILLEGAL_OPCODE, 16)
    assert other.status == ContextStatus.DONE


@pytest.mark.parametrize("seed", range(0, 64, 9))
def test_pending_events_outgrowing_the_core_s_buffer_grow_it(seed, monkeypatch):
    """The core's output buffer starts at one row here, so every run needs more: it grows, and the
    state still equals the reference's (the reviewer's temporal run at priority 255 piles 100k events)."""
    monkeypatch.setattr(perf_native, "EVENT_CAPACITY", 1)
    scenario = _scenario(seed)
    assert _run(scenario, native=True) == _run(scenario, native=False)


def _gemm_runs(native, steps):
    """A GEMM on ``small``, loaded; ``steps(device)`` then runs it; the final state."""
    image = gemm("small", 64, 128, 64)
    device = PerfDevice("small", hbm_latency=60, data=False, native=native)
    load_image(device, image, random_inputs(image, np.random.default_rng(5)))
    steps(device)
    assert device.run()
    assert (device._native is not None) is native
    return _state(device)


@pytest.mark.parametrize("synced", [False, True])
def test_a_failed_core_run_leaves_the_state_it_started_from(synced):
    """The core fails (no memory for its events) after a slice whose state it holds (or that went
    back to Python): the run raises, and the state is the one before it, so the device goes on to the
    reference's result (it used to mix the core's half-run arrays with the older Python state). The
    reports read after the failure are those of that state (after a sync, and a change to a context's
    counters, the core's buffers were packed but not run, so they hold no report of it)."""
    reports = []

    def steps(device):
        device.run(500)
        if synced:
            device._sync()
            device.contexts[0].counters["macs"] += 7
            device._native.touch(0)
        core = device._native
        core.event_buffers[1 - core.current] = perf_native._doubles(len(perf_native.EVENT_FIELDS))  # the output
        core._events_changed()
        core.set_grow_events(perf_native._GROW_EVENTS(lambda rows: None))
        with pytest.raises(DeviceError, match="no memory"):
            device.run(1000)
        assert core.holds_state and core.reported is not synced
        reports.append((device.context(0), device.stats()))
        core.set_grow_events(perf_native._GROW_EVENTS(core._grow_events))

    def reference_steps(device):
        device.run(500)
        if synced:
            device.contexts[0].counters["macs"] += 7
        reports.append((device.context(0), device.stats()))

    assert _gemm_runs(True, steps) == _gemm_runs(False, reference_steps)
    assert reports[0] == reports[1] and reports[0][0].status == ContextStatus.RUNNING


def _changed_between_runs(native):
    """Two tenants run in slices; between them the device's registers, a context's fields and its
    golden context, a third tenant's start and HBM data change: the states after each slice."""
    cfg = get_config("small")
    device = PerfDevice(cfg, hbm_latency=70, data=False, native=native)
    device.set_policy("harvest", harvest_grace=8)
    for index in range(2):
        image, inputs = random_program("small", 8100 + index, utops=20)
        load_image(device, image, inputs, Placement(context=index, hbm_base=index * (cfg.hbm_bytes // 4),
                                                    sram_base=index * (cfg.sram_bytes // 4), me_mask=3 << (2 * index),
                                                    ve_mask=1 << index, dma_mask=1 << index))
    states = []
    device.run(600)
    device.set_policy("operator", quantum=64, starvation=32)  # the device's registers
    device.run(600)
    states.append(_state(device))
    device.run(300)
    device._sync()  # what a host-side tool may change by hand: a context's tokens, counters, priority
    device.contexts[1].counters["macs"] += 12345
    device.machine.contexts[1].priority = 3
    if device._native is not None:
        device._native.touch(1)
    device.run(300)
    states.append(_state(device))
    device.write_hbm(3 * (cfg.hbm_bytes // 4), b"\x01" * 4096)  # data, not code: the core goes on
    assert (device._native is not None) is native
    image, inputs = random_program("small", 8102, utops=8)
    load_image(device, image, inputs, Placement(context=2, hbm_base=2 * (cfg.hbm_bytes // 4),
                                                sram_base=2 * (cfg.sram_bytes // 4), me_mask=1, ve_mask=1, dma_mask=1))
    device.set_policy("temporal", quantum=128)
    device.run(500)
    states.append(_state(device))
    assert device.run()
    states.append(_state(device))
    return states


def test_changes_between_runs_reach_the_core():
    """Whatever changes between two runs (registers, a context's fields, a new tenant) is packed again:
    the core's buffers keep the last state, and a stale field would give other cycles."""
    reference = _changed_between_runs(False)
    assert _changed_between_runs(True) == reference
    assert reference[1]["reports"][1].counters["macs"] >= 12345


def _host_commands_around_the_core(native):
    """A GEMM run in slices, a write over its running code (the core pauses and the Python loop
    finishes the run), then host commands on the finished context with the core back: a scrub, a
    restart run to the end, a priority change and another restart."""
    image = gemm("small", 64, 128, 64)
    device = PerfDevice("small", hbm_latency=60, data=False, native=native)
    load_image(device, image, random_inputs(image, np.random.default_rng(5)), Placement(context=0))
    device.run(300)
    device.write_hbm(image.entry, device.read_hbm(image.entry, 16))
    assert device.run()
    states = []
    for command in (Instr("ctx.scrub", ctx=0), Instr("ctx.start", ctx=0, pc=image.entry), None,
                    Instr("ctx.prio", ctx=0, priority=3), Instr("ctx.start", ctx=0, pc=image.entry), None):
        if command is None:
            assert device.run()
        else:
            device.host(command)
        states.append((_state(device), device.context(0).counters, device.context(0).timing))
    return states


def test_host_commands_after_the_core_pauses_and_between_core_runs_reach_it():
    """A host command right after the core comes back from a pause (it used to be packed before the
    command and to overwrite it: a scrub undone, a restart lost) and between two core runs."""
    assert _host_commands_around_the_core(True) == _host_commands_around_the_core(False)


def test_programs_sharing_their_first_words_are_told_apart():
    """The process's program cache is keyed by a program's first words: two programs that share them but
    differ further on (here a uTOp's cost and its body) each run as decoded from their own bytes."""
    image, inputs = random_program("small", 8200, utops=12)
    words = bytearray(image.code)
    last_utop = max(i for i in range(0, len(words), 16)
                    if decode_stream(bytes(words[i:i + 16]))[0].mnemonic == "utop")
    instr = decode_stream(bytes(words[last_utop:last_utop + 16]))[0]
    words[last_utop:last_utop + 16] = encode_stream([Instr("utop", **{**instr.values, "cost": instr["cost"] ^ 5})])
    assert last_utop >= perf_native._PROBE_BYTES
    variants = [image.code, bytes(words)]
    results = []
    for native in (True, False):
        states = []
        for code in variants:
            device = PerfDevice("small", data=False, native=native)
            device.set_policy("harvest", harvest_cost=int(instr["cost"]) | 1)
            plan = plan_load(device.config, image, inputs, Placement())
            for command in plan.setup:
                device.host(command)
            for address, data in plan.writes:
                device.write_hbm(address, data)
            device.write_hbm(image.entry, code)
            device.host(plan.start)
            assert device.run()
            states.append(_state(device))
            if native:  # decoded from its own bytes, not the other program's
                assert device.contexts[0].native_program.snapshot[:len(code)] == code
        results.append(states)
    assert results[0] == results[1]


def _window_runs(native, first_size, second_size, max_cycles=None):
    """Four nops and no halt in a window, run off its end; then the window resized and run again."""
    device = PerfDevice("small", data=False, native=native)
    device.host(Instr("ctx.hbm", ctx=0, base=0, size=first_size))
    device.write_hbm(0, encode_stream([Instr("nop")] * 4))
    states = []
    for size in (first_size, second_size):
        device.host(Instr("ctx.hbm", ctx=0, base=0, size=size))
        device.host(Instr("ctx.start", ctx=0, pc=0))
        device.run(max_cycles)
        states.append(_state(device))
    return device, states


@pytest.mark.parametrize("sizes", [(0x1000, 0x2000), (0x2000, 0x1000)])
def test_a_program_is_decoded_again_when_its_window_changes(sizes):
    device, states = _window_runs(True, *sizes)
    assert device._native is not None
    assert states == _window_runs(False, *sizes)[1]
    assert states[-1]["reports"][0].fault == FaultCode.FETCH_BOUNDS


def test_a_program_without_halt_is_decoded_as_far_as_it_runs():
    """A 1 MiB window of nops run for a few thousand instructions decodes about those (in chunks that
    double), not the window's 65536."""
    results = []
    for native in (True, False):
        device = PerfDevice("small", data=False, native=native)
        device.host(Instr("ctx.hbm", ctx=0, base=0, size=1 << 20))
        device.write_hbm(0, encode_stream([Instr("nop")] * 4))
        device.host(Instr("ctx.start", ctx=0, pc=0))
        assert not device.run(400_000)
        results.append(_state(device))
        if native:
            assert device._native is not None
            decoded = len(device.contexts[0].native_program.index)
    assert results[0] == results[1]
    ran = results[0]["reports"][0].counters["instructions"]
    assert 2 * perf_native.CHUNK < ran < decoded <= 2 * ran + perf_native.CHUNK


def _edge_scenario(seed):
    """Scenarios at the scheduler's edges: four tenants with random engine masks on ``tpu_like`` or
    ``small`` contending under ``operator`` (and the others) with short quanta and starvation
    thresholds, so that waits often equal the threshold exactly when a wake-up looks again."""
    rng = np.random.default_rng(10_000 + seed)
    config = ("tpu_like", "small")[seed % 2]
    cfg = get_config(config)
    scenario = _scenario(seed)
    tenants = 4
    scenario.update(config=config, policy=("operator", "operator", "harvest", "temporal")[seed % 4],
                    programs=[random_program(config, 50_000 + 10 * seed + t, utops=int(rng.integers(8, 40)))[0]
                              for t in range(tenants)],
                    faults=[None] * tenants, budgets=[0] * tenants, kill=None,
                    priorities=[int(rng.integers(0, 4)) for _ in range(tenants)],
                    masks=[(int(rng.integers(1, 1 << cfg.me_count)), int(rng.integers(1, 1 << cfg.ve_count)))
                           for _ in range(tenants)],
                    registers={"quantum": int(rng.choice([1, 2, 4, 8, 16, 64])),
                               "starvation": int(rng.choice([1, 2, 3, 5, 8, 13, 40])),
                               "harvest_grace": int(rng.integers(0, 16))})
    if seed % 3 == 0:  # a GEMM keeps several MEs busy at once: its context holds the class while others wait
        scenario["programs"][0] = gemm(config, 64, 128, 64)
        scenario["masks"][0] = ((1 << cfg.me_count) - 1, 1)
    return scenario


@pytest.mark.parametrize("seed", range(24))
def test_scheduler_edges_match(seed):
    scenario = _edge_scenario(seed)
    assert _run(scenario, native=True) == _run(scenario, native=False)


def test_token_overflow_matches():
    """A uTOp signals a token nothing waits for, more than TOKEN_MAX_COUNT times: TOKEN_OVERFLOW."""
    body = [Instr("ve.fill", dst=0, n=4, value=1)]
    code = encode_stream(sum([[Instr("utop", cls=int(EngineClass.VE), len=1, signal=0b101)] + body
                              for _ in range(TOKEN_MAX_COUNT + 3)], []) + [Instr("halt")])
    states = []
    for native in (False, True):
        device = PerfDevice("small", data=False, native=native)
        device.host(Instr("ctx.hbm", ctx=0, base=0, size=0x4000))
        device.host(Instr("ctx.sram", ctx=0, base=0, size=0x1000))
        device.host(Instr("ctx.engines", ctx=0, me_mask=1, ve_mask=3, dma_mask=1))
        device.write_hbm(0, code)
        device.host(Instr("ctx.start", ctx=0, pc=0))
        assert device.run()
        states.append(_state(device))
    assert states[0] == states[1]
    assert states[1]["reports"][0].fault == FaultCode.TOKEN_OVERFLOW


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_a_watchdog_whose_abort_bound_equals_an_engine_s_end_matches(offset):
    """A watchdog budget timed so that an in-flight ME's end is exactly the abort bound away (and one
    cycle either side): the engine is cut short only past the bound."""
    image = gemm("small", 64, 128, 64)
    inputs = random_inputs(image, np.random.default_rng(7))
    probe = PerfDevice("small", data=False, native=False)
    load_image(probe, image, inputs)
    probe.run(3000)
    bound = math.ceil(probe.latency) + timing.FETCH_READY + timing.UTOP_TAIL
    end = max(engine.end for engine in probe.engines if engine.ctx is not None and engine.cls == EngineClass.ME)
    budget = end - bound - probe.contexts[0].start + offset
    states = []
    for native in (False, True):
        device = PerfDevice("small", data=False, native=native)
        device.host(Instr("ctx.budget", ctx=0, cycles=budget))
        load_image(device, image, inputs)
        assert device.run()
        states.append(_state(device))
    assert states[0] == states[1]
    assert states[1]["reports"][0].fault == FaultCode.WATCHDOG


def _long_fills(native, starvation):
    """Two contexts, each twelve long VE fills in a row on both VEs, under ``operator``."""
    device = PerfDevice("small", data=False, native=native)
    device.set_policy("operator", quantum=1, starvation=starvation)
    for ctx in (0, 1):
        fill = [Instr("utop", cls=int(EngineClass.VE), len=1), Instr("ve.fill", dst=0, n=512 + 64 * ctx, value=1)]
        device.host(Instr("ctx.hbm", ctx=ctx, base=ctx * 0x10000, size=0x4000))
        device.host(Instr("ctx.sram", ctx=ctx, base=ctx * 0x10000, size=0x4000))
        device.host(Instr("ctx.engines", ctx=ctx, me_mask=1, ve_mask=3, dma_mask=1))
        device.write_hbm(ctx * 0x10000, encode_stream(fill * 12 + [Instr("halt")]))
    for ctx in (0, 1):
        device.host(Instr("ctx.start", ctx=ctx, pc=0))
    assert device.run()
    return _state(device)


def test_operator_yields_at_the_starvation_threshold_match():
    """The class holder's next uTOp and the other context's wait, over a sweep of thresholds: at some
    the wait equals the threshold exactly when the holder could go on (the holder must yield)."""
    for starvation in range(120, 200):
        assert _long_fills(True, starvation) == _long_fills(False, starvation), starvation


def test_counters_stay_exact_past_2_to_the_53():
    """The core's activity counters are int64: a count past 2^53 (macs after many TPU-scale runs) gains
    each uTOp's exactly, as Python's ints do (doubles would round it)."""
    image = gemm("small", 64, 128, 64)
    inputs = random_inputs(image, np.random.default_rng(2))
    reports = []
    for native in (False, True):
        device = PerfDevice("small", data=False, native=native)
        load_image(device, image, inputs)
        device._sync()
        device.contexts[0].counters["macs"] = (1 << 53) + 1
        if native:
            device._native.touch(0)
        assert device.run()
        reports.append(device.context(0))
    assert reports[0] == reports[1]
    assert reports[1].counters["macs"] > 1 << 53 and reports[1].counters["macs"] % 2 == 1


def test_the_core_views_int64_words_in_the_shape_python_gives():
    """Reports are built by the core's ``view`` from a shape spec: ints index the words, dicts and tuples nest."""
    words = np.array([7, -3, 1 << 62, 0], dtype=np.int64)
    view = perf_native.library().view
    assert view({"a": 2, "b": (0, {"c": 1}), "d": {}}, words.ctypes.data) == {"a": 1 << 62, "b": (7, {"c": -3}), "d": {}}
    with pytest.raises(TypeError, match="an int, a dict or a tuple"):
        view([0], words.ctypes.data)
    with pytest.raises(ValueError, match="negative index"):
        view((-1,), words.ctypes.data)
    with pytest.raises(TypeError, match="takes 2 arguments"):
        view((0,))
