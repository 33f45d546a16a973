"""Formal proofs of isolation and scheduling (issue 14), run through SymbiYosys and Boolector.

One test per proof of :data:`tcloud.verif.formal.PROOFS`, and for each kind of proof a planted
bug (a bounds check widened by one word, a policy rule or a property that is wrong) that the prover
must catch, so that each kind of proof is known to be able to fail. The proofs selected run two at
a time (a machine has two cores), the first time a test asks for their results.
"""

import shutil

import pytest
from amaranth.hdl import Mux

from tcloud.isa.table import Policy
from tcloud.rtl.dma import DmaEngine
from tcloud.verif import formal

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("formal")]  # formal proofs: minutes, one fixture runs them all


class WideDma(DmaEngine):
    """A DMA engine whose bounds checks let an access end one word past the window."""

    def sram_fits(self, end):
        return end <= self._sram_size + 1

    def hbm_fits(self, end):
        return end <= self._hbm_size + 1


def harvest_as_static(view, c, e):
    """A wrong rule: under ``harvest`` only owned engines (the RTL harvests others)."""
    return Mux(view.policy == Policy.HARVEST, view.owns(c, e), formal.policy_allows(view, c, e))


class CostNeverReached(formal.CostEnforced):
    """A wrong claim: a uTOp never uses all of its declared cost (it may, exactly)."""

    def claim(self, used, declared):
        return used < declared


PLANTED = [
    formal.Proof("cost_never_reached", "Claims a uTOp never uses exactly its declared cost.", "prove", 1,
                 lambda: CostNeverReached(DmaEngine(formal.ENGINE_CONFIG))),
    formal.Proof("wide_sram_translation", "A scratchpad bounds check one word too wide.", "prove", 1,
                 lambda: formal.TranslationLemma(formal.ENGINE_CONFIG, "sram", WideDma)),
    formal.Proof("wide_hbm_translation", "An HBM bounds check one word too wide.", "prove", 1,
                 lambda: formal.TranslationLemma(formal.ENGINE_CONFIG, "hbm", WideDma)),
    formal.Proof("wide_dma_isolation", "A DMA engine whose bounds checks are one word too wide.", "bmc",
                 formal.ENGINE_BMC_DEPTH, lambda: formal.EngineIsolation(WideDma(formal.ENGINE_CONFIG))),
    formal.Proof("wrong_policy_rule", "A harvest rule that forbids what the scheduler rightly does.", "prove", 1,
                 lambda: formal.SchedulerPolicy(formal.SCHEDULER_CONFIG, rule=harvest_as_static)),
    formal.Proof("wrong_fault_isolation", "Claims that killing context 1 leaves context 1 unchanged.", "bmc", 8,
                 lambda: formal.FaultIsolation(formal.ENGINE_CONFIG, culprit=0,
                                               spared=(1 << formal.ENGINE_CONFIG.contexts) - 1)),
]
"""Proofs of wrong claims: each must fail with a counterexample."""

BY_NAME = {proof.name: proof for proof in formal.PROOFS + PLANTED}


@pytest.fixture(scope="module")
def results(request):
    """Results of every proof the selected tests of this module ask for, run in parallel."""
    names = [item.callspec.params["proof"].name for item in request.session.items
             if item.module is request.module and hasattr(item, "callspec")]
    return formal.run_proofs([BY_NAME[name] for name in names], jobs=2)


def _params(proofs):
    return [pytest.param(proof, id=proof.name) for proof in proofs]


@pytest.mark.parametrize("proof", _params(formal.PROOFS))
def test_proof(proof, results):
    result = results[proof.name]
    assert result.passed, f"{result.name} failed ({result.mode}, depth {result.depth}):\n{result.log}"


@pytest.mark.parametrize("proof", _params(PLANTED))
def test_planted_bug_is_caught(proof, results):
    result = results[proof.name]
    assert not result.passed, f"the planted bug {proof.name!r} was not caught: {result.workdir}"
    assert "failed assertion" in result.log, result.log
    shutil.rmtree(result.workdir, ignore_errors=True)
