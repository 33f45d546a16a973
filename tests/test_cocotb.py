"""cocotb + Verilator on the generated Verilog of the whole pNPU (driver, HBM BFM with random
latency and backpressure, monitor feeding the scoreboard and the functional coverage, protocol
checker), on the ``tiny`` and ``small`` configurations."""

import json
import os
import xml.etree.ElementTree as ElementTree

import pytest
import yaml

from tcloud.isa import Policy, get_config
from tcloud.isa.table import UTOP_CLASSES
from tcloud.rtl.pnpu import PNPU
from tcloud.runtime import run_image
from tcloud.runtime.backends.verilator import VerilatorDevice
from tcloud.runtime.backends.verilator import _design_digest as design_digest  # the Verilator cache's key
from tcloud.runtime.backends.verilator import pnpu_verilog
from tcloud.verif.functional_coverage import EXCLUDED, FAULTS, HBM_KINDS, STALLS, TOKEN_PATTERNS
from tcloud.verif.hbm_spec import timing_programs

from conftest import BUILD, COCOTB_WAVES, cocotb_build

pytestmark = pytest.mark.slow  # cocotb simulations of whole pNPUs: minutes

CASES = {"tiny": "4" if os.environ.get("CI") else "8", "small": "2" if os.environ.get("CI") else "4"}
TESTS = ["constrained_random_gemm", "random_programs", "multi_tenant", "planted_faults",
         "token_patterns_under_backpressure", "wrong_write_is_caught_at_the_transaction", "host_command_timeout",
         "spec_timing", "coverage_report"]

KEY_BINS = {
    "coverage.program.opcode": ["utop", "halt", "nop", "fence", "dma.load", "dma.store", "dma.gather", "me.loadw",
                                "me.matmul", "ve.fill", "ve.lutload", "ve.lut"],
    "coverage.context.policy": [p.name.lower() for p in Policy],
    "coverage.utop.class_x_tokens": [str((cls.name.lower(), tokens)) for cls in UTOP_CLASSES
                                     for tokens in TOKEN_PATTERNS],
    "coverage.hbm.kind_x_backpressure": [str((kind, stall)) for kind in HBM_KINDS for stall in STALLS],
}
"""Bins the cocotb run must cover besides the fault bins: what its generators and planted cases are
built to reach (not every opcode, for instance)."""

PLANTED = {"tiny": "once" if os.environ.get("CI") else "all", "small": "once"}
"""Every planted case under every policy, or each once (see ``tcloud.verif.cocotb_pnpu.planted_rounds``;
``small`` simulates several times slower)."""
FAULT_ITEMS = {mode: ["coverage.context.fault"] + (["coverage.context.fault_x_policy"] if mode == "all" else [])
               for mode in ("all", "once")}
"""Items whose every bin (but those :data:`~tcloud.verif.functional_coverage.EXCLUDED`, with their
reason) the planted cases reach: every fault code, and under every policy when all are planted."""


def verilator_run_cycles(config):
    """``RUN_CYCLES`` of each of :func:`timing_programs` on the Verilator backend (the C++ HBM model,
    which the Amaranth backend's Python model matches cycle for cycle)."""
    device = VerilatorDevice(config)
    try:
        return [run_image(device, image, inputs)[1].timing["run_cycles"] for image, inputs in timing_programs(config)]
    finally:
        device.close()


def failed_tests(results):
    """Name -> failure message of the failed test cases in a cocotb ``results.xml``."""
    cases = ElementTree.parse(results).getroot().iter("testcase")
    return {case.get("name"): case.find("failure").get("message") for case in cases
            if case.find("failure") is not None}


@pytest.mark.parametrize("config", ["tiny", "small"])
def test_pnpu_cocotb(verilator_on_path, config):
    with cocotb_build(lambda: PNPU(get_config(config)), "pnpu", BUILD / config,
                      key=design_digest(get_config(config)),
                      verilog=lambda: pnpu_verilog(config, "pnpu")[0]) as (runner, build_dir, run_root):
        check_pnpu_run(runner, build_dir, run_root, config)


def check_pnpu_run(runner, build_dir, run_root, config):
    """Run the cocotb bench on a built ``config`` pNPU and check its results, coverage and timing."""
    seed = os.environ.get("TCLOUD_SEED", "3")
    test_dir = run_root / "run"
    coverage = test_dir / "coverage.yml"
    results, timing = test_dir / "results.xml", test_dir / "timing.json"
    for stale in (coverage, results, timing):
        stale.unlink(missing_ok=True)
    try:  # under pytest the runner exits on a failed test; the results file says which and why
        runner.test(hdl_toplevel="pnpu", test_module="tcloud.verif.cocotb_pnpu", build_dir=build_dir,
                    test_dir=test_dir, results_xml=str(results), waves=COCOTB_WAVES,
                    extra_env={"TCLOUD_CONFIG": config, "TCLOUD_CASES": CASES[config], "TCLOUD_SEED": seed,
                               "TCLOUD_PLANTED": PLANTED[config],
                               "TCLOUD_COVERAGE": str(coverage), "TCLOUD_TIMING": str(timing)})
    except SystemExit:
        assert results.exists(), "the simulation ended without results"
    cases = [case.get("name") for case in ElementTree.parse(results).getroot().iter("testcase")]
    assert cases == TESTS
    failed = failed_tests(results)
    assert not failed, f"replay with TCLOUD_SEED={seed}: {failed}"
    report = yaml.safe_load(coverage.read_text())
    print(f"{config}: " + "; ".join(f"{name} {item['coverage']}/{item['size']}"
                                    + (f" (uncovered: {', '.join(item['uncovered'])})" if item["uncovered"] else "")
                                    for name, item in sorted(report.items()) if "uncovered" in item))
    missing = {name: [b for b in bins if not report[name]["bins:_hits"].get(b)] for name, bins in KEY_BINS.items()}
    assert not any(missing.values()), f"key coverage bins missed: {missing}"
    for name in FAULT_ITEMS[PLANTED[config]]:
        assert report[name]["excluded"] == {str(b): reason for b, reason in EXCLUDED[name].items()}
        assert not report[name]["uncovered"], f"{name}: reachable bins missed: {report[name]['uncovered']}"
    assert set(report["coverage.context.fault"]["bins:_hits"]) == set(FAULTS) - set(EXCLUDED["coverage.context.fault"])
    assert json.loads(timing.read_text()) == verilator_run_cycles(get_config(config)), \
        "the cocotb responder (fixed latency, no pauses) and the C++ HBM model time the same programs differently"
