"""The interference benchmark's quick mode (CI size, ~20 s on a warm Verilator cache): every policy
and neighbour runs, victims stay exact, and the report has the fields the full run is read for."""

import json

import pytest

from benchmarks import interference

pytestmark = pytest.mark.slow  # a benchmark run on the Verilator RTL


def test_interference_benchmark_quick(tmp_path):
    summary = interference.main(["--quick", "--out", str(tmp_path / "i.json"), "--plot", str(tmp_path / "i.png")])
    report = json.loads((tmp_path / "i.json").read_text())
    results = report["results"]
    assert set(results) == {"gemm", "vector"}
    for per_policy in results.values():
        assert set(per_policy) == set(interference.POLICIES)
        for per_neighbour in per_policy.values():
            assert set(per_neighbour) == set(interference.NEIGHBOURS)
    assert summary["victim_runs_wrong_failed_or_hung"] == []
    assert next(iter(report["summary"])) == "harvest_worst_case"
    conditions = report["conditions"]
    assert conditions["config_fingerprint"] and conditions["hbm_timing"]["hbm_latency"] == interference.HBM_LATENCY
    for vname, per_policy in results.items():
        for policy, per_neighbour in per_policy.items():
            for neighbour, r in per_neighbour.items():
                label = f"{vname}/{policy}/{neighbour}"
                assert len(r["latencies"]) == conditions["runs_per_scenario"], label
                assert r["p50"] <= r["p99"], label
                if policy == "static":  # nobody runs on a victim's owned engines under static
                    assert r["reclaim_max_cycles"] == 0, label
            # the neighbours did what they are for while the victim ran
            assert per_policy[policy]["faulting"]["neighbour_outcomes"].get("HBM_BOUNDS", 0) >= 1
            assert per_policy[policy]["killed"]["kills"] >= 1
            assert set(per_policy[policy]["killed"]["neighbour_outcomes"]) <= {"KILLED"}
    # uTOps too long to declare a harvestable cost never run on the victim's engines; those at the
    # limit do, and the victim waits for them at most the reclaim bound
    harvest = {vname: per_policy["harvest"] for vname, per_policy in results.items()}
    assert all(h["long_utops"]["reclaim_max_cycles"] == 0 for h in harvest.values())
    assert any(h["at_the_limit"]["reclaim_max_cycles"] > 0 for h in harvest.values())
    within = summary["harvest_reclaim_within_bound"]
    assert within["holds"] and within["bound_cycles"] == conditions["reclaim_bound_cycles"], within
    assert summary["dma_flood_worst"]["slowdown_p50"] > 1.0
