"""The planted cases of the cocotb bench's functional coverage (``tcloud.verif.planted``) on the
golden model: each raises the fault it is built for, at least one per fault code the coverage counts,
and the token program reaches every token pattern of every engine class (the RTL runs them in
``tests/test_cocotb.py``)."""

import numpy as np
import pytest
import yaml

from tcloud.isa import ContextStatus, EngineClass, FaultCode, Policy, decode
from tcloud.isa.table import INSTRUCTION_BYTES, UTOP_CLASSES
from tcloud.runtime import FunctionalDevice, Placement, load_image
from tcloud.verif import functional_coverage
from tcloud.verif.functional_coverage import EXCLUDED, FAULTS, STALLS, TOKEN_PATTERNS, WAIT_SLOTS, token_pattern
from tcloud.verif.planted import fault_cases, run_golden, token_program


def golden(case, policy):
    device = run_golden(case, FunctionalDevice(case.image.config_name), Placement(**case.masks), policy)
    if case.host:
        assert device.machine.contexts[0].pc == case.stop_at  # where the pNPU waits for the long uTOp
    return device.context(0)


@pytest.mark.parametrize("config", ["tiny", "small"])
def test_every_counted_fault_code_has_a_planted_case_that_raises_it(config):
    planted = set()
    for long_class in (EngineClass.DMA, EngineClass.ME, EngineClass.VE):
        for case in fault_cases(config, long_class):
            info = golden(case, Policy.STATIC)
            expected = case.fault
            status = ContextStatus.FAULTED if expected else ContextStatus.DONE
            assert (info.status, info.fault) == (status, expected), f"{case.name}: {info.detail}"
            planted.add(case.fault.name.lower())
    assert planted == set(FAULTS) - set(EXCLUDED["coverage.context.fault"])


@pytest.mark.parametrize("policy", [Policy.TEMPORAL, Policy.OPERATOR])
def test_no_engine_is_excluded_exactly_where_the_golden_model_cannot_raise_it(policy):
    case = next(case for case in fault_cases("tiny") if case.fault == FaultCode.NO_ENGINE)
    assert golden(case, policy).status == ContextStatus.DONE
    assert ("no_engine", policy.name.lower()) in EXCLUDED["coverage.context.fault_x_policy"]
    assert golden(case, Policy.HARVEST).fault == FaultCode.NO_ENGINE


@pytest.mark.parametrize("config", ["tiny", "small"])
def test_the_token_program_has_every_token_pattern_of_every_class_and_completes(config):
    image, inputs = token_program(config, WAIT_SLOTS)
    device = FunctionalDevice(config)
    load_image(device, image, inputs)
    device.run()
    assert device.context(0).status == ContextStatus.DONE
    output = np.frombuffer(device.read_hbm(image.symbol("Y").offset, image.symbol("Y").nbytes), np.int8)
    assert np.array_equal(output, inputs["X"])
    patterns = set()
    for offset in range(0, len(image.code), INSTRUCTION_BYTES):
        instr = decode(image.code[offset:offset + INSTRUCTION_BYTES])
        if instr.mnemonic == "utop":
            patterns.add((EngineClass(instr["cls"]), token_pattern(instr)))
    assert patterns == {(cls, tokens) for cls in UTOP_CLASSES for tokens in TOKEN_PATTERNS}


@pytest.mark.parametrize("config", ["tiny", "small"])
def test_the_every_opcode_program_runs_every_opcode_under_every_policy(config):
    case = next(case for case in fault_cases(config) if case.fault == FaultCode.NONE)
    for policy in Policy:
        info = golden(case, policy)
        assert info.status == ContextStatus.DONE, info.detail
    ran = {instr.mnemonic for instr in functional_coverage.executed(case.image, info.status, 0)}
    assert ran == set(functional_coverage.OPCODES)


def test_stall_levels():
    assert [functional_coverage.stall_level(c) for c in (0, 1, 3, 4, 15, 16, 500)] == \
        [STALLS[0], STALLS[1], STALLS[1], STALLS[2], STALLS[2], STALLS[3], STALLS[3]]


def test_the_report_lists_uncovered_and_excluded_bins(tmp_path):
    path = tmp_path / "coverage.yml"
    functional_coverage.write_report(path, lambda line: None)
    report = yaml.safe_load(path.read_text())
    cross = report["coverage.context.fault_x_policy"]
    assert cross["size"] == len(FAULTS) * len(Policy) - 2
    assert set(cross["excluded"]) == {str(("no_engine", "temporal")), str(("no_engine", "operator"))}
    assert str(("watchdog", "static")) in cross["uncovered"]  # nothing sampled in this process
    assert report["coverage.context.fault"]["excluded"] == {}
