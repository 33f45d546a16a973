"""The constrained-random programs are race-free DAGs, not chains: waits on several producers over
several wait slots, counts above one, fences, and independent uTOps of one context that run at the
same time on the RTL. Seeds start at ``TCLOUD_SEED`` (default 0)."""

import dataclasses
import os
from collections import Counter

import numpy as np
import pytest

from tcloud.isa import Instr, decode_stream, encode_stream
from tcloud.runtime import FunctionalDevice, plan_load, read_outputs, run_image
from tcloud.runtime.backends.verilator import VerilatorDevice
from tcloud.verif import find_races, happens_before
from tcloud.verif.random_programs import random_program, replay_hint, seeds

CI = bool(os.environ.get("CI"))
GOLDEN_PROGRAMS = 60 if CI else 200
RTL_PROGRAMS = 20 if CI else 60


def golden_trace(config, image, inputs):
    device = FunctionalDevice(config, trace=True)
    outputs, _ = run_image(device, image, inputs)
    return device.machine.trace, outputs


def unsynchronised(image):
    """``image`` with every wait, signal and fence removed."""
    code = []
    for instr in decode_stream(image.code):
        if instr.mnemonic == "fence":
            instr = Instr("nop")
        elif instr.mnemonic == "utop":
            instr = Instr("utop", **{**instr.values, "signal": 0, "count0": 0, "count1": 0, "count2": 0})
        code.append(instr)
    return dataclasses.replace(image, code=encode_stream(code))


def shape(trace):
    """Dependency statistics of one program's golden-model trace."""
    headers = [e.instr for e in trace if e.instr.mnemonic == "utop"]
    counts = [[h[f"count{slot}"] for slot in range(3) if h[f"count{slot}"]] for h in headers]
    before = happens_before(trace)
    return Counter({
        "utops": len(headers),
        "waits": sum(map(len, counts)),
        "waits counting several producers": sum(c > 1 for waits in counts for c in waits),
        "uTOps waiting on several tokens": sum(len(waits) > 1 for waits in counts),
        "uTOps signalling several tokens": sum(bin(h["signal"]).count("1") > 1 for h in headers),
        "programs with a fence": any(e.instr.mnemonic == "fence" for e in trace),
        "programs with concurrent neighbours": any(not before[j] >> (j - 1) & 1 and head["cls"] != headers[j - 1]["cls"]
                                                   for j, head in enumerate(headers) if j),
    })


@pytest.mark.parametrize("config", ["tiny", "small"])
def test_programs_are_race_free_dags(config):
    stats = Counter()
    for seed in seeds(GOLDEN_PROGRAMS):
        with replay_hint(seed):
            image, inputs = random_program(config, seed)
            trace, outputs = golden_trace(config, image, inputs)
            assert find_races(trace) == [], f"seed {seed}"
            stats += shape(trace)
            bare_trace, bare_outputs = golden_trace(config, unsynchronised(image), inputs)
            assert np.array_equal(bare_outputs["Y"], outputs["Y"]), f"seed {seed}"
            assert find_races(bare_trace), f"seed {seed}: no race once synchronisation is removed"
    assert stats["waits counting several producers"] >= 0.05 * stats["waits"], stats
    assert stats["uTOps waiting on several tokens"] >= 0.03 * stats["utops"], stats
    assert stats["uTOps signalling several tokens"] >= 0.05 * stats["utops"], stats
    assert stats["programs with a fence"] >= 0.1 * GOLDEN_PROGRAMS, stats
    assert stats["programs with concurrent neighbours"] >= 0.5 * GOLDEN_PROGRAMS, stats


def test_utops_of_one_context_overlap_in_time_on_the_rtl():
    """More engine-busy cycles than cycles from ``ctx.start`` to idle: two engines worked at once."""
    device = VerilatorDevice("tiny", hbm_latency=5, hbm_jitter=4, hbm_accept_probability=0.6, seed=5)
    overlapping = 0
    try:
        for seed in seeds(RTL_PROGRAMS):
            with replay_hint(seed):
                image, inputs = random_program("tiny", seed)
                plan = plan_load(device.config, image, inputs)
                for command in plan.setup:
                    device.host(command)
                for address, data in plan.writes:
                    device.write_hbm(address, data)
                busy, cycles = sum(device.stats()["engine_busy_cycles"].values()), device.cycles
                device.host(plan.start)
                assert device.run()
                busy = sum(device.stats()["engine_busy_cycles"].values()) - busy
                overlapping += busy > device.cycles - cycles
                expected, _ = run_image(FunctionalDevice("tiny"), image, inputs)
                assert np.array_equal(read_outputs(device, image)["Y"], expected["Y"]), f"seed {seed}"
    finally:
        device.close()
    assert overlapping >= 0.5 * RTL_PROGRAMS, f"{overlapping} of {RTL_PROGRAMS} programs overlap"


def test_seeds_come_from_the_environment_and_failures_name_them(monkeypatch):
    monkeypatch.setenv("TCLOUD_SEED", "7")
    assert list(seeds(3)) == [7, 8, 9]
    monkeypatch.delenv("TCLOUD_SEED")
    assert list(seeds(2)) == [0, 1]
    assert random_program("tiny", 7)[0] == random_program("tiny", 7)[0]
    with pytest.raises(AssertionError) as caught, replay_hint(7):
        raise AssertionError("boom")
    assert caught.value.__notes__ == ["random seed 7: replay with TCLOUD_SEED=7"]
