"""The attack suite (``tcloud.verif.attacks``): every attack under every policy, on the golden model
and on the Verilator RTL. Timed guarantees are not applicable to the untimed golden model."""

import pytest

from tcloud.isa import EngineClass, FaultCode, Instr
from tcloud.verif import attacks

pytestmark = pytest.mark.slow  # the attack suite on the Verilator RTL

CASES = [(a.name, backend, policy) for a in attacks.CATALOGUE for backend in attacks.BACKENDS
         for policy in attacks.POLICIES]


@pytest.mark.parametrize("name, backend, policy", CASES, ids=["-".join(case) for case in CASES])
def test_attack_is_contained(name, backend, policy):
    outcome = attacks.run_attack(name, backend, policy)
    assert outcome.held is not False, outcome.detail
    timed = name in ("harvest_at_the_limit", "watchdog_long_utop", "kill_long_utop", "starving_hog")
    assert (outcome.held is None) == (timed and (backend == "functional" or (
        name == "harvest_at_the_limit" and policy != "harvest"))), outcome


def test_the_suite_reports_a_guarantee_that_does_not_hold():
    """An 'attack' that faults nothing is reported broken, not passed over."""
    harmless = attacks._utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=1)])
    fake = attacks.Attack("harmless", "expects a fault that never comes",
                          attacks._faulting_program(harmless, FaultCode.HBM_BOUNDS))
    outcome = attacks.run_attack(fake, "functional", "static")
    assert outcome.held is False and "finished" in outcome.detail


def test_the_command_line_lists_results(capsys):
    assert attacks.main(["--backend", "functional", "--policy", "static", "--only", "cost_lie"]) == 0
    assert "cost_lie" in capsys.readouterr().out
