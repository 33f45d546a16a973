"""The cluster layer: workload and traces, placement, the batch simulator against the per-request
reference, policies, metrics and the command line."""

import json

import numpy as np
import pytest

from tcloud.cluster.placement import Cluster, check_fits
from tcloud.cluster.simulate import CLUSTER_RULES
from tcloud.cluster.service import Shape, ServiceTable, default_path, load_table
from tcloud.cluster.workload import (AZURE_SAMPLE, DEFAULT_MODELS, Arrivals, ClusterError, ModelSpec, make_trace,
                                     read_azure)
from tcloud.runtime.cli import main as tcloud


@pytest.fixture(scope="module")
def table():
    return load_table(build=False)


# --- workload and traces -------------------------------------------------------------------------

def test_unknown_model_and_bad_fields_are_named():
    with pytest.raises(ClusterError, match="field builder: no model 'resnet9000'"):
        ModelSpec("x", "resnet9000")
    with pytest.raises(ClusterError, match="field settings: 'depth=3'"):
        ModelSpec("x", "dlrm_mlp", ("depth=3",))
    with pytest.raises(ClusterError, match="field slo_factor must be a positive finite number"):
        ModelSpec("x", "ncf", slo_factor=0)


@pytest.mark.parametrize("kind", ["poisson", "mmpp", "diurnal", str(AZURE_SAMPLE)])
def test_traces_have_mean_one_and_differ_in_shape(kind):
    trace = make_trace(kind, DEFAULT_MODELS, 60, seed=1)
    assert trace.multipliers.shape == (6, 600)
    assert trace.multipliers.mean() == pytest.approx(1, rel=0.35)
    spread = trace.multipliers.std()
    assert (spread == 0) == (kind == "poisson")


def test_azure_sample_is_read_busiest_first():
    counts = read_azure(AZURE_SAMPLE)
    assert counts.shape == (8, 60) and counts.min() >= 0
    trace = make_trace(str(AZURE_SAMPLE), DEFAULT_MODELS[:2], 120, seconds_per_minute=1.0)
    busiest = counts[np.argsort(-counts.sum(axis=1))[0]]
    assert trace.at(0, 5.05) == pytest.approx(busiest[5] / busiest[:60].mean(), rel=1e-9)


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    ("Owner,HashApp,HashFunction,Trigger,1\n", ":1: header must start with HashOwner"),
    ("HashOwner,HashApp,HashFunction,Trigger,1,3\n", ":1: column 6 must be minute 2"),
    ("HashOwner,HashApp,HashFunction,Trigger,1,2\na,b,c,http,4\n", ":2: 5 fields, the header has 6"),
    ("HashOwner,HashApp,HashFunction,Trigger,1,2\na,b,c,http,4,5\na,b,d,http,x,5\n",
     r":3: field '1' \(column 5\) must be a non-negative integer, got 'x'"),
    ("HashOwner,HashApp,HashFunction,Trigger,1,2\na,b,c,http,0,0\n", "no function has any invocation"),
])
def test_malformed_azure_files_name_file_line_and_field(tmp_path, text, message):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(ClusterError, match=message) as info:
        make_trace(str(path), DEFAULT_MODELS[:1], 10)
    assert str(path) in str(info.value)


def test_unknown_trace_kind():
    with pytest.raises(ClusterError, match="neither one of poisson, mmpp, diurnal nor an existing file"):
        make_trace("bursty", DEFAULT_MODELS, 10)


def test_arrivals_do_not_depend_on_the_window_length():
    trace = make_trace("mmpp", DEFAULT_MODELS[:2], 4, seed=3)
    whole = Arrivals(trace, [1000, 300], seed=5).until(4.0)
    pieces = Arrivals(trace, [1000, 300], seed=5)
    parts = [pieces.until(t) for t in (1.0, 2.0, 3.0, 4.0)]
    for m in range(2):
        assert np.array_equal(whole[m], np.concatenate([p[m] for p in parts]))
        assert np.all(np.diff(whole[m]) >= 0)
    assert whole[0].size == pytest.approx(4000 * trace.multipliers[0, :40].mean(), rel=0.1)


# --- placement with the hypervisor's allocator -----------------------------------------------------

def test_placement_follows_the_allocator():
    cluster = Cluster(1, 2, "small")
    half = Shape(2, 1, 128, 32)
    for _ in range(4):
        cluster.place(0, half)
    assert cluster.engines_used() == (8, 4)
    with pytest.raises(ClusterError, match="allocation does not fit.*0 free MEs"):
        cluster.place(0, Shape(1, 1, 16, 4))
    cluster.remove(cluster.replicas[0])
    assert cluster.place(1, Shape(1, 1, 16, 4)).pnpu == 0


def test_placement_prefers_the_models_own_pnpus_then_empty_ones_then_the_least_slowed_neighbours():
    one = Shape(1, 1, 16, 4)  # two fit a small pNPU (it has two VEs)
    cluster = Cluster(1, 2, "small")
    assert [cluster.place(m, one).pnpu for m in (0, 0, 1)] == [0, 0, 1]  # its own first, then an empty one
    for factors, chosen in ((None, 0), (np.array([[1, 3.0, 1.2], [1, 1, 1], [1, 1, 1]]), 1),
                            (np.array([[1, 1, 1.2], [3.0, 1, 1], [1, 1, 1]]), 1)):
        cluster = Cluster(1, 2, "small")
        cluster.neighbour_slowdown = factors
        cluster.place(1, one), cluster.place(2, one)
        assert cluster.place(0, one).pnpu == chosen  # next to model 2, which slows it (or it slows) least
    cluster.remove(cluster.replicas[0]), cluster.remove(cluster.replicas[0])  # models 1 and 2 leave
    assert cluster.place(0, one).pnpu == 1  # model 0's own pNPU, not the emptied one


def test_a_shape_larger_than_a_pnpu_is_refused_with_the_allocators_reason():
    with pytest.raises(ClusterError, match=r"does not fit a small pNPU: pNPU 0: 4 free MEs \(asked 5\)"):
        check_fits("small", Shape(5, 1, 64, 16))
    with pytest.raises(ClusterError, match="largest free scratchpad window 256 KiB"):
        check_fits("small", Shape(1, 1, 512, 16))


# --- service-time table --------------------------------------------------------------------------

def test_shipped_table_covers_the_default_models(table):
    assert {m.name for m in DEFAULT_MODELS} == {key[0] for key in table.entries}
    assert [s.label for s in table.shapes] == ["m1v1", "m2v1", "m4v2"]
    assert table.batches == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("model, batch, label", [("ncf", 1, "m1v1"), ("resnet50_block", 2, "m2v1"),
                                                 ("dlrm_mlp", 4, "m4v2")])
def test_table_entries_match_fresh_runs(table, model, batch, label):
    from tcloud.cluster.service import measure
    from tcloud.cluster.workload import model_by_name

    fresh = measure(model_by_name(DEFAULT_MODELS, model), table.config, batch, table.shape(label),
                    backend=table.backend)
    assert table.entries[(model, label, "static", batch)] == fresh


def test_shipped_tpu_like_table_covers_the_full_size_models():
    from tcloud.cluster.workload import TPU_MODELS, default_models

    tpu = load_table(config="tpu_like", build=False)
    assert default_models("tpu_like") == TPU_MODELS and tpu.models == TPU_MODELS
    assert {m.name for m in TPU_MODELS} == {key[0] for key in tpu.entries}
    assert tpu.batches == [1, 2, 4, 8, 16, 32] and tpu.timing_only and tpu.backend == "perf"
    assert len(tpu.entries) == len(TPU_MODELS) * len(tpu.shapes) * len(tpu.batches)


@pytest.mark.parametrize("model, batch, label", [("ncf", 32, "m1v1"), ("dlrm", 8, "m2v1"), ("dlrm_mlp", 1, "m4v2")])
def test_tpu_like_entries_match_fresh_timing_only_perf_runs(model, batch, label):
    """The full-size CNNs and BERT-base take seconds to minutes per entry; the recommenders stand
    in for them (same code path: compile, place the vNPU, run on perf without data)."""
    from tcloud.cluster.service import measure
    from tcloud.cluster.workload import TPU_MODELS, model_by_name

    tpu = load_table(config="tpu_like", build=False)
    fresh = measure(model_by_name(TPU_MODELS, model), "tpu_like", batch, tpu.shape(label), backend="perf",
                    timing_only=True)
    assert tpu.entries[(model, label, "static", batch)] == fresh


def test_a_simulation_on_tpu_like_serves_its_full_size_models():
    from tcloud.cluster.cli import run_simulation
    from tcloud.cluster.workload import TPU_MODELS

    results, sim, _ = run_simulation(1, 4, "static", "poisson", 0.3, 2.0, config="tpu_like")
    assert list(results["models"]) == [m.name for m in TPU_MODELS]
    assert results["overall"]["throughput"] == pytest.approx(results["overall"]["offered"], rel=0.02)
    assert {r.shape.label for g in sim.groups for r in g.replicas} == {"m2v1"}


def test_entries_are_measured_next_to_busy_neighbours():
    """A vNPU smaller than the pNPU shares its HBM bandwidth and DMA engines with the neighbours
    the cluster packs next to it; the whole-pNPU shape has none."""
    from tcloud.cluster.service import measure
    from tcloud.cluster.workload import TPU_MODELS, model_by_name

    tpu = load_table(config="tpu_like", build=False)
    assert tpu.neighbours == "same-model"
    ncf, mlp = model_by_name(TPU_MODELS, "ncf"), model_by_name(TPU_MODELS, "dlrm_mlp")
    options = {"backend": "perf", "timing_only": True}
    alone = measure(ncf, "tpu_like", 32, tpu.shape("m1v1"), neighbours=False, **options)
    assert measure(ncf, "tpu_like", 32, tpu.shape("m1v1"), **options) > 1.1 * alone
    whole = tpu.shape("m4v2")
    assert measure(mlp, "tpu_like", 1, whole, **options) == measure(mlp, "tpu_like", 1, whole, neighbours=False,
                                                                      **options)


def test_a_neighbour_that_runs_out_of_runs_is_an_error():
    """A neighbour shorter than the measured run must be given enough runs to stay busy to its end."""
    from tcloud.cluster.service import compile_for, run_next_to
    from tcloud.cluster.workload import TPU_MODELS, model_by_name

    tpu = load_table(config="tpu_like", build=False)
    shape, ncf = tpu.shape("m2v1"), model_by_name(TPU_MODELS, "ncf")
    long, short = compile_for(ncf, "tpu_like", 32, shape), compile_for(ncf, "tpu_like", 1, shape)
    options = {"backend": "perf", "timing_only": True}
    with pytest.raises(ClusterError, match="a neighbour finished its 1 runs before the measured run ended"):
        run_next_to(long, short, "tpu_like", shape, runs=1, **options)
    with pytest.raises(ClusterError, match="a neighbour needs at least one run, got runs=0"):
        run_next_to(long, short, "tpu_like", shape, runs=0, **options)
    twin = run_next_to(long, long, "tpu_like", shape, runs=1, **options)  # ends in the measured run's step
    assert twin[1] == 1
    busy, neighbours = run_next_to(long, short, "tpu_like", shape, runs=64, **options)
    assert neighbours == 1 and busy > run_next_to(long, None, "tpu_like", shape, **options)[0]


def test_a_table_file_without_neighbours_was_measured_alone(tmp_path):
    from tcloud.cluster.service import default_path

    data = json.loads(default_path("small", "perf").read_text())
    data.pop("neighbours")
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    assert ServiceTable.load(path).neighbours == "none"


def test_the_reference_shape_is_the_most_efficient_on_tpu_like():
    """Static (and the capacity that defines load 1.0) serve every model on the reference shape
    because, measured next to busy neighbours, it serves the most requests per pNPU for every model."""
    from tcloud.cluster.policies import reference_shape
    from tcloud.cluster.simulate import best_batch, make_context

    tpu = load_table(config="tpu_like", build=False)
    context = make_context(tpu.models, tpu, 4, 1.0)
    reference = reference_shape(context).label
    for curves, slo in zip(context.curves, context.slos):
        per_pnpu = {}
        for shape in tpu.shapes:
            b = best_batch(curves[shape.label], slo)
            per_pnpu[shape.label] = context.per_pnpu[shape.label] * b / curves[shape.label][b] if b else 0.0
        assert per_pnpu[reference] == max(per_pnpu.values())  # m1v1 ties it for the recommenders


def test_timing_only_needs_the_perf_backend():
    from tcloud.cluster.service import measure
    from tcloud.cluster.workload import TPU_MODELS

    tpu = load_table(config="tpu_like", build=False)
    with pytest.raises(ClusterError, match="timing-only measurement needs the perf backend, not 'verilator'"):
        measure(TPU_MODELS[4], "tpu_like", 1, tpu.shapes[0], backend="verilator", timing_only=True)


def test_interpolation_is_linear_between_measured_batches(table):
    curve = table.curve("bert_tiny", "m2v1")
    assert curve[0] == 0 and np.all(np.diff(curve) >= 0)
    assert curve[3] == pytest.approx((curve[2] + curve[4]) / 2)
    assert curve[4] == table.entries[("bert_tiny", "m2v1", "static", 4)] / (table.clock_mhz * 1e6)
    with pytest.raises(ClusterError, match="no entry for model 'gpt'"):
        table.curve("gpt", "m2v1")


def test_table_builds_on_ray_with_two_cpus(table, tmp_path):
    from tcloud.cluster.service import build_table
    from tcloud.cluster.workload import model_by_name

    seen = []
    small = build_table([model_by_name(DEFAULT_MODELS, "ncf")], "small", table.backend, batches=(1, 2),
                        shapes=table.shapes[:2], num_cpus=2, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (5, 5)  # 4 entries and the one pair of colocation_cycles
    for key, cycles in small.entries.items():
        assert table.entries[key] == cycles
    assert set(small.load_bytes) == {("ncf", s.label) for s in table.shapes[:2]}
    assert small.neighbour_slowdown == {}  # one model: no pair of two
    again = ServiceTable.load(small.save(tmp_path / "t.json"))
    assert again.entries == small.entries and again.shapes == small.shapes and again.load_bytes == small.load_bytes


def test_a_corrupt_table_file_is_named(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"config": "small"')
    with pytest.raises(ClusterError, match="t.json:1: not JSON"):
        ServiceTable.load(path)
    path.write_text('{"config": "small", "backend": "verilator", "clock_mhz": 1000, "shapes": []}')
    with pytest.raises(ClusterError, match="missing field 'entries'"):
        ServiceTable.load(path)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["entries"][3].update(cycles="fast"), r"field entries\[3\].cycles must be a positive integer, got 'fast'"),
    (lambda d: d["entries"][0].update(cycles=0), r"field entries\[0\].cycles must be a positive integer, got 0"),
    (lambda d: d["entries"][0].update(batch=0), r"field entries\[0\].batch must be a positive integer, got 0"),
    (lambda d: d["shapes"][1].update(mes="two"), r"field shapes\[1\].mes must be a positive integer, got 'two'"),
    (lambda d: d.update(clock_mhz=-1), "field clock_mhz must be a positive finite number, got -1"),
    (lambda d: d.update(neighbours="some"), "field neighbours must be 'same-model' or 'none', got 'some'"),
    (lambda d: d.update(entries=[e for e in d["entries"] if e["batch"] != 1 or e["model"] != "ncf"]),
     "model 'ncf' on shape 'm1v1' \\(static\\) has no batch-1 entry"),
])
def test_table_fields_out_of_range_are_named(tmp_path, change, message):
    from tcloud.cluster.service import default_path

    data = json.loads(default_path("small", "perf").read_text())
    data["entries"].sort(key=lambda e: (e["model"], e["shape"], e["batch"]))
    change(data)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ClusterError, match=message):
        ServiceTable.load(path)


# --- the batch simulator against the per-request reference -----------------------------------------

def _simulator(table, models, policy, trace, load, duration, pnpus=4, seed=2):
    from tcloud.cluster.policies import make_policy
    from tcloud.cluster.simulate import Simulator, make_context

    context = make_context(models, table, pnpus, load)
    shape = make_trace(trace, models, duration, seed)
    sim = Simulator(context, Cluster(1, pnpus, table.config), make_policy(policy) if isinstance(policy, str) else policy,
                    Arrivals(shape, context.rates, seed))
    return sim, Arrivals(shape, context.rates, seed).until(duration)


def _assert_same_schedule(rows, duration, rate):
    """``compare``'s rows: each model served more than ``rate`` requests/s, throughput and p99
    within 2 %, the same dropped requests and every request in the same latency bin; the
    throughputs differ exactly by the batches the reference has not finished at the end."""
    for row in rows:
        assert row["request_throughput"] > rate, row
        assert row["throughput_error"] < 0.02, row
        assert row["p99_error"] < 0.02, row
        assert row["batch_dropped"] == row["request_dropped"], row
        assert row["histogram_difference"] == 0, row
        assert row["batch_throughput"] * duration == row["request_throughput"] * duration + row["request_in_flight"], row


@pytest.mark.parametrize("names, policy, trace, load", [
    (("ncf", "resnet50_block"), "static", "poisson", 0.9),
    (("dlrm_mlp", "mobilenetv2_block", "resnet50_block"), "triton", "mmpp", 0.6),
    (("ncf", "resnet50_block"), "static", "poisson", 1.4),
])
def test_batch_simulation_matches_the_per_request_simulation(table, names, policy, trace, load):
    from tcloud.cluster.reference import compare
    from tcloud.cluster.workload import model_by_name

    sim, arrivals = _simulator(table, [model_by_name(DEFAULT_MODELS, n) for n in names], policy, trace, load, 2.0)
    assert any(len(g.replicas) > 1 for g in sim.groups)
    rows = compare(sim, 2.0, arrivals)
    _assert_same_schedule(rows, 2.0, 5000)
    if load > 1:
        assert any(row["request_dropped"] > 0 for row in rows)


class _Fixed:
    """A hand-made plan for every model: replicas of ``labels`` (in that order), each shape's cap
    its largest batch with 2 × latency within the SLO, a queue delay of ``delay`` × SLO."""

    name = "fixed"

    def __init__(self, labels, delay=0.0):
        self.labels, self.delay = labels, delay

    def reset(self, context):
        from tcloud.cluster.simulate import Plan, best_batch

        models = range(len(context.models))
        return Plan(replicas={m: list(self.labels) for m in models},
                    batch={m: {label: max(best_batch(context.curves[m][label], context.slos[m]), 1)
                               for label in self.labels} for m in models},
                    delay={m: self.delay * context.slos[m] for m in models})

    def decide(self, observation):
        return None


@pytest.mark.parametrize("names, policy, trace, load", [
    (("resnet50", "ncf"), "nexus", "poisson", 0.5),  # the residual m1v1 among m2v1 replicas
    (("resnet50", "ncf"), "nexus", "mmpp", 0.7),  # the residual last; p99 was 8.5 % off
    (("resnet50",), _Fixed(["m1v1", "m4v2", "m1v1", "m4v2"]), "poisson", 0.4),  # the slow ones numbered first
    (("resnet50",), _Fixed(["m1v1", "m4v2", "m1v1", "m4v2"]), "mmpp", 0.4),
    (("resnet50",), _Fixed(["m4v2", "m1v1", "m4v2", "m1v1"], delay=0.2), "mmpp", 0.6),  # caps 6 and 5, delayed
    (("resnet50",), _Fixed(["m1v1", "m4v2", "m1v1", "m4v2"], delay=0.2), "poisson", 0.8),  # overloaded
])
def test_mixed_shapes_run_the_same_schedule_in_both_simulators(names, policy, trace, load):
    """Replicas of different vNPU shapes (Nexus's residual replica, a hand-made plan) under the
    cluster's dispatch rule: the batcher hands a batch to the lowest-numbered free replica, so both
    simulators give every request the same latency bin. The old reference woke free replicas in the
    order they went idle and differed by up to 8.5 % in p99 here."""
    from tcloud.cluster.policies import Nexus
    from tcloud.cluster.reference import compare
    from tcloud.cluster.workload import TPU_MODELS, model_by_name

    tpu = load_table(config="tpu_like", build=False)
    policy = Nexus(epoch=10**6) if policy == "nexus" else policy  # compare needs the first plan kept
    sim, arrivals = _simulator(tpu, [model_by_name(TPU_MODELS, n) for n in names], policy, trace, load, 2.0)
    shapes = {r.shape.label for r in sim.groups[0].replicas}
    assert len(shapes) > 1, shapes
    rows = compare(sim, 2.0, arrivals)
    _assert_same_schedule(rows, 2.0, 500)  # ResNet-50 alone on 4 pNPUs at MMPP 0.4: about 850/s
    if load == 0.8 and trace == "poisson":
        assert rows[0]["request_dropped"] > 0


def test_a_queue_delay_carries_across_control_intervals():
    """A free replica waiting for a fuller batch at the end of an interval takes it as soon as
    the next interval's arrivals fill it, as in one long interval (it used to sit out until the
    oldest request's delay had passed)."""
    from tcloud.cluster.events import serve
    from tcloud.cluster.simulate import _LOG_FIRST_EDGE, _LOG_STEP, EDGES

    latency = np.array([[0.0, 0.001, 0.001, 0.001, 0.001]])
    arrivals = np.array([0.0049, 0.0051, 0.0052, 0.0053])

    def histogram(ends):
        queue, head, start = np.empty(0), 0, 0.0
        free, hist = np.zeros(1), np.zeros(len(EDGES) + 1, dtype=np.int64)
        for end in ends:
            queue = np.concatenate((queue[head:], arrivals[(arrivals >= start) & (arrivals < end)]))
            head, *_ = serve(queue, 0, free, np.array([4]), latency, 0.030, end, 1.0, hist, _LOG_FIRST_EDGE,
                             _LOG_STEP, np.zeros(1), np.zeros(1))
            start = end
        return hist

    whole = histogram([0.05])
    assert whole.sum() == 4
    assert np.array_equal(histogram([0.005 * k for k in range(1, 11)]), whole)


def test_an_impossible_slo_names_the_model_and_field(table):
    from tcloud.cluster.simulate import make_context

    tight = ModelSpec("ncf", "ncf", slo_factor=0.5)
    with pytest.raises(ClusterError, match="model 'ncf': impossible SLO: field slo_factor=0.5 gives 7.2 us, below "
                                           "its fastest batch-1 latency 14.4 us"):
        make_context([tight], table, 4, 0.5)


def test_an_allocation_that_does_not_fit_is_refused(table):
    with pytest.raises(ClusterError, match="allocation does not fit: 6 models need at least one replica each, the "
                                           "cluster holds 2"):
        _simulator(table, DEFAULT_MODELS, "static", "poisson", 0.5, 1.0, pnpus=1)


# --- policies and metrics --------------------------------------------------------------------------

THREE = ("dlrm_mlp", "resnet50_block", "decoder_block")


def _run(table, policy, load, trace="poisson", duration=4.0, pnpus=8):
    from tcloud.cluster.workload import model_by_name

    sim, _ = _simulator(table, [model_by_name(DEFAULT_MODELS, n) for n in THREE], policy, trace, load, duration, pnpus)
    return sim.run(duration), sim


def test_static_meets_the_slo_at_low_load_and_not_when_overloaded(table):
    low, _ = _run(table, "static", 0.3)
    assert low["overall"]["slo_attainment"] > 0.99
    assert low["overall"]["throughput"] == pytest.approx(low["overall"]["offered"], rel=0.02)
    high, _ = _run(table, "static", 2.0)
    assert high["overall"]["slo_attainment"] < 0.8 and high["overall"]["dropped"] > 0
    assert high["overall"]["utilization"] > low["overall"]["utilization"]
    for m in high["models"].values():
        assert m["p50"] <= m["p99"]
    assert low["overall"]["cost"] == pytest.approx(high["overall"]["cost"])
    assert low["overall"]["cost_per_1000"] > high["overall"]["cost_per_1000"]


def test_clipper_steps_aimd_once_per_batch_and_settles_at_its_latency_target(table):
    from tcloud.cluster.policies import Clipper
    from tcloud.cluster.simulate import best_batch

    _, sim = _run(table, "clipper", 2.0, duration=4.0)
    assert np.all(np.array(sim.timeline[0]["batch"]) == 1)
    for g, slo in zip(sim.groups, sim.context.slos):
        for replica, cap in zip(g.replicas, g.batch):
            largest = best_batch(g.curves[replica.shape.label], slo, 1 / sim.policy.target)
            assert int(0.9 * (largest + 1)) <= cap <= min(largest + 1, sim.context.max_batch)
    clipper = Clipper()
    clipper.context = sim.context
    assert clipper.aimd(np.array([4, 16, 1]), np.array([False, True, True])).tolist() == [5, 14, 1]


def test_triton_waits_for_fuller_batches(table):
    static, s_sim = _run(table, "static", 0.3)
    triton, t_sim = _run(table, "triton", 0.3)
    assert triton["overall"]["p50"] > static["overall"]["p50"]
    assert triton["overall"]["utilization"] < static["overall"]["utilization"]


def test_nexus_replans_with_the_measured_rate(table):
    _, sim = _run(table, "nexus", 0.6, trace="diurnal", duration=8.0)
    counts = np.array([e["replicas"] for e in sim.timeline])
    assert (counts.max(axis=0) > counts.min(axis=0)).any()
    steady, sim = _run(table, "nexus", 0.8, duration=6.0)
    assert steady["overall"]["slo_attainment"] > 0.99
    used = {r.shape.label for g in sim.groups for r in g.replicas}
    assert used <= {"m1v1", "m2v1", "m4v2"}


def test_nexus_over_subscribed_keeps_a_margin_for_every_model():
    """At 0.9 of a 1000-pNPU tpu_like cluster, 15 % headroom over-subscribes the engines; the plan
    still fits, gives single-replica DLRM a second replica (one would be 86 % busy) and starves no
    model."""
    from tcloud.cluster.policies import Nexus
    from tcloud.cluster.simulate import make_context

    tpu = load_table(config="tpu_like", build=False)
    context = make_context(tpu.models, tpu, 1000, 0.9)
    plan = Nexus().reset(context)
    shapes = {s.label: s for s in tpu.shapes}
    assert sum(shapes[l].ves for ls in plan.replicas.values() for l in ls) <= 2 * 1000
    assert sum(shapes[l].mes for ls in plan.replicas.values() for l in ls) <= 4 * 1000
    dlrm = [m.name for m in tpu.models].index("dlrm")
    assert len(plan.replicas[dlrm]) >= 2
    for m, labels in plan.replicas.items():
        capacity = sum(b / context.curves[m][l][b] for l in labels for b in [plan.batch[m][l]])
        assert capacity > context.rates[m], tpu.models[m].name


# --- command line ----------------------------------------------------------------------------------

def test_cli_simulate_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert tcloud(["cluster", "simulate", "--nodes", "2", "--pnpus-per-node", "4", "--policy", "triton",
                   "--trace", str(AZURE_SAMPLE), "--load", "0.3", "--duration", "2", "--seed", "1",
                   "--json", str(out), "--plot", str(tmp_path / "plots")]) == 0
    results = json.loads(out.read_text())
    for part in [results["overall"], *results["models"].values()]:
        for key in ("throughput", "goodput", "slo_attainment", "p50", "p99", "utilization"):
            assert key in part
    assert {"cost", "cost_per_1000"} <= set(results["overall"])
    assert results["setup"]["policy"] == "triton" and len(results["models"]) == 6
    assert (tmp_path / "plots" / "allocation_triton.png").stat().st_size > 1000
    assert "SLO att" in capsys.readouterr().out


def test_cli_simulate_provisions_for_the_traces_peaks_when_asked(tmp_path):
    """``--provision peak`` splits the pNPUs by each model's peak over 1-s windows of the run's trace
    (what the benchmark's ``static-peak`` gets), recorded in the JSON; a policy that plans from
    measured rates refuses it."""
    from tcloud.cluster.workload import make_trace

    runs = {}
    for provision in ("mean", "peak"):
        out = tmp_path / f"{provision}.json"
        assert tcloud(["cluster", "simulate", "--nodes", "2", "--pnpus-per-node", "4", "--policy", "static",
                       "--trace", str(AZURE_SAMPLE), "--load", "0.3", "--duration", "2", "--provision", provision,
                       "--json", str(out)]) == 0
        runs[provision] = json.loads(out.read_text())
    assert runs["mean"]["setup"]["provision"] == "mean"
    ratios = make_trace(str(AZURE_SAMPLE), DEFAULT_MODELS, 2.0, 0).peak_to_mean()
    assert runs["peak"]["setup"]["provision"] == pytest.approx(ratios.tolist()) and ratios.max() > 1.4
    assert runs["peak"]["overall"]["utilization"] != runs["mean"]["overall"]["utilization"]
    assert tcloud(["cluster", "simulate", "--nodes", "2", "--duration", "1", "--policy", "nexus",
                   "--provision", "peak"]) == 1


def test_a_traces_peak_to_mean_is_its_highest_window_mean():
    from tcloud.cluster.workload import RATE_STEP, Trace

    steps = round(3.0 / RATE_STEP)
    rows = np.ones((2, steps))
    rows[0, 12:14] = 6.0  # 0.2 s at 6 x inside the window [1 s, 2 s): that window's mean is 2
    rows[1, :] = 0.5
    assert Trace("t", rows).peak_to_mean().tolist() == pytest.approx([2.0, 0.5])
    assert Trace("t", rows).peak_to_mean(window=RATE_STEP).tolist() == pytest.approx([6.0, 0.5])
    assert Trace("t", rows[:, :3]).peak_to_mean().tolist() == pytest.approx([1.0, 0.5])  # shorter than a window


@pytest.mark.parametrize("args, message", [
    (["--trace", "no/such.csv"], "trace 'no/such.csv' is neither one of poisson, mmpp, diurnal nor an existing file"),
    (["--load", "-1"], "--load must be a positive fraction of capacity"),
    (["--nodes", "1", "--pnpus-per-node", "1"], "allocation does not fit"),
    (["--table", "missing.json"], "no service-time table at missing.json"),
    (["--load", "inf"], "--load must be a positive fraction of capacity, at most 100, got inf"),
    (["--load", "1e6"], "--load must be a positive fraction of capacity, at most 100, got 1000000.0"),
    (["--duration", "1e12"], "--warmup + --duration must be at most 86400 simulated seconds (a day), got 1e+12"),
    (["--interval", "1e-300"], "(--warmup + --duration) / --interval must be at most 1,000,000 policy decisions"),
    (["--pnpus-per-node", "100000000"], "nodes x pnpus_per_node must be at most 10,000 pNPUs, got 2 x 100000000"),
    (["--trace", "/dev/zero"], "cannot read /dev/zero: not a regular file"),
    (["--json", "/dev/null"], "results /dev/null exists and is not a regular file"),
    (["--duration", "inf"], "--duration must be a positive finite number, got inf"),
    (["--warmup", "nan"], "--warmup must be a finite number of seconds >= 0, got nan"),
    (["--warmup", "-1"], "--warmup must be a finite number of seconds >= 0, got -1.0"),
    (["--warmup", "0.5"], "--warmup 0.5 must be a whole number of control intervals (--interval 1 s)"),
    (["--interval", "3"], "--duration 1.0 must be a whole number of control intervals (--interval 3 s), at least one"),
    (["--interval", "0.3"], "--duration 1.0 must be a whole number of control intervals"),
])
def test_cli_errors_are_messages_not_tracebacks(capsys, args, message):
    assert tcloud(["cluster", "simulate", "--nodes", "2", "--duration", "1", *args]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_negative_seed_is_refused_as_the_arguments_are_read(capsys):
    with pytest.raises(SystemExit) as exc:
        tcloud(["cluster", "simulate", "--seed", "-1"])
    assert exc.value.code == 2 and "--seed: -1 is not a valid seed (an integer >= 0)" in capsys.readouterr().err


def _azure_with(tmp_path, count):
    rows = AZURE_SAMPLE.read_text().splitlines()
    fields = rows[1].split(",")
    fields[5] = count
    path = tmp_path / "trace.csv"
    path.write_text("\n".join([rows[0], ",".join(fields), *rows[2:]]) + "\n")
    return path


def test_a_binary_or_overflowing_trace_is_named(tmp_path):
    binary = tmp_path / "binary.csv"
    binary.write_bytes(AZURE_SAMPLE.read_bytes()[:100] + b"\xd3\x00\xff")
    with pytest.raises(ClusterError, match=r"binary.csv is not a trace \(CSV text\) \(byte 100 is not UTF-8 text\)"):
        read_azure(binary)
    with pytest.raises(ClusterError, match=r"trace.csv:2: field '2' must be an invocation count in 0..1e\+12, got 9{23}"):
        read_azure(_azure_with(tmp_path, "9" * 23))
    assert read_azure(_azure_with(tmp_path, str(10 ** 12)))[0][1] == 10 ** 12
    with pytest.raises(ClusterError, match="field '2' \\(column 6\\) must be a non-negative integer, got '²'"):
        read_azure(_azure_with(tmp_path, "²"))  # a digit to str.isdigit, not to int


def _table_with(tmp_path, change):
    data = json.loads(default_path("small", "perf").read_text())
    change(data)
    path = tmp_path / "table.json"
    path.write_text(json.dumps(data))
    return path


def _set(key, value):
    return lambda data: data.__setitem__(key, value)


def _every_slo(factor):
    return lambda data: [model.__setitem__("slo_factor", factor) for model in data["models"]]


@pytest.mark.parametrize("change, message", [
    (_set("shapes", []), "field shapes is empty"),
    (_set("clock_mhz", float("inf")), "field clock_mhz must be a positive finite number, got inf"),
    (_set("config", "tpu_like"), "is a service-time table for tpu_like/perf, not small/perf: pass --config tpu_like"),
    (lambda data: data["models"][1].__setitem__("name", data["models"][0]["name"]),
     "field models names a model twice (dlrm_mlp)"),
    (_every_slo(float("inf")), "field models: model 'dlrm_mlp': field slo_factor must be a positive finite number"),
    (_every_slo(1e-6), "model 'dlrm_mlp': impossible SLO"),  # the table's own models, not the defaults, are run
])
def test_cli_simulate_refuses_a_bad_table_by_name(tmp_path, capsys, change, message):
    path = _table_with(tmp_path, change)
    assert tcloud(["cluster", "simulate", "--nodes", "1", "--duration", "1", "--table", str(path)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if "impossible SLO" in message:
        assert f"in service-time table {path}" in err


def test_a_table_with_a_key_given_twice_is_named(tmp_path):
    path = tmp_path / "table.json"
    text = default_path("small", "perf").read_text()
    path.write_text(text.replace('"clock_mhz":', '"clock_mhz": 1, "clock_mhz":', 1))
    with pytest.raises(ClusterError, match=r"table.json: not a service-time table \(key 'clock_mhz' given twice"):
        ServiceTable.load(path)


def test_a_binary_table_is_named(tmp_path):
    path = tmp_path / "table.json"
    path.write_bytes(b"\x93\xff{}")
    with pytest.raises(ClusterError, match=r"table.json is not a service-time table \(JSON text\) \(byte 0"):
        ServiceTable.load(path)


def test_cli_table_refuses_an_unknown_backend_before_starting_ray(tmp_path, capsys):
    import ray

    assert tcloud(["cluster", "table", "--cpus", "1", "--out", str(tmp_path / "t.json"), "--backend", "nope"]) == 1
    err = capsys.readouterr().err
    assert "unknown timed backend 'nope'; choose one of" in err and "Traceback" not in err
    assert not ray.is_initialized() and not (tmp_path / "t.json").exists()


# --- the policy benchmark's traces -----------------------------------------------------------------

def test_azure_replay_can_start_at_any_minute():
    counts = read_azure(AZURE_SAMPLE)
    busiest = counts[np.argsort(-counts.sum(axis=1), kind="stable")[0]]
    trace = make_trace(str(AZURE_SAMPLE), DEFAULT_MODELS[:1], 10, seconds_per_minute=2.0, start_minute=58)
    row = trace.multipliers[0] * np.concatenate([busiest[58:60], busiest[:3]]).repeat(20).mean()
    assert np.allclose(row, np.concatenate([busiest[58:60], busiest[:3]]).repeat(20)[:100])


def test_the_policy_benchmark_runs_diurnal_and_azure_and_picks_the_better_static(tmp_path):
    """The benchmark's path for the traces where dynamic allocation matters, at a tiny scale: every
    policy on diurnal and the Azure sample, static provisioned by mean and by peak rates, and the
    better static as the reference; ``--merge`` keeps the other rows."""
    from benchmarks import cluster_policies as bench
    from tcloud.cluster.workload import TPU_MODELS

    small = load_table(config="small", build=False)
    flat = bench.allocation_bound("poisson", small, 1.0, 4.0, 0)
    assert flat["oracle"] == flat["static"] == flat["static_peak"] == flat["gain"] == 1.0
    day = bench.allocation_bound("diurnal", small, 5.0, 20.0, 0, window=0.1)
    assert day["static"] == pytest.approx(1 / 1.5, rel=0.01) and 1 < day["gain"] < 1.5
    args = type("Args", (), {"warmup": 5.0, "duration": 20.0})
    triton = bench.make("triton-peak", "azure", 0, args, load_table(config="small", build=False))
    assert triton.name == "triton-peak" and np.array_equal(triton.provision,
                                                           bench.peak_to_mean("azure", DEFAULT_MODELS, 25.0, 0))
    rl = bench.make("rl-peak", "azure", 0, args, load_table(config="small", build=False))
    assert rl.name == "rl-peak" and np.array_equal(rl.provision, triton.provision)
    ratios = bench.peak_to_mean("azure", TPU_MODELS, 25.0, 0)
    assert ratios.min() > 1.2 and ratios.max() > 1.5 * ratios.min()  # the sample's models peak differently
    assert np.allclose(bench.peak_to_mean("poisson", TPU_MODELS, 25.0, 0), 1.0)
    assert np.allclose(bench.peak_to_mean("diurnal", TPU_MODELS, 25.0, 0), 1.5, rtol=0.01)
    out = tmp_path / "policies.json"
    common = ["--config", "small", "--nodes", "1", "--duration", "1", "--warmup", "1", "--seeds", "0",
              "--out", str(out)]
    bench.main([*common, "--policies", "static", "static-peak", "rl-floor", "--traces", "diurnal", "azure",
                "--loads", "0.3"])
    report = json.loads(out.read_text())
    assert report["setup"]["trace_options"]["diurnal"] == {"amplitude": 0.5, "period": 2.0}
    assert report["setup"]["trace_options"]["azure"] == {"seconds_per_minute": bench.AZURE_SECONDS_PER_MINUTE}
    assert all(r["load_average"] >= 0 and r["commit"] for r in report["runs"])
    assert {(r["policy"], r["trace"]) for r in report["runs"]} == {
        (p, t) for p in ("static", "static-peak", "rl-floor") for t in ("diurnal", "azure")}
    for trace in ("diurnal", "azure"):
        best = report["sustained"]
        static = max(best["static"][trace]["throughput"], best["static-peak"][trace]["throughput"])
        if static > 0:
            assert report["relative"][trace]["rl-floor"]["vs_static"] == pytest.approx(
                best["rl-floor"][trace]["throughput"] / static)
    bound = report["allocation_bound"]["diurnal"][0]
    assert bound["oracle"] >= bound["static_peak"] >= bound["static"] > 0
    assert bound["gain"] == pytest.approx(bound["oracle"] / max(bound["static"], bound["static_peak"]))
    assert all(0 <= r["mixed_pnpus"] <= 1 for r in report["runs"])
    late = json.loads(out.read_text())  # a run with too many drops has p99 null (infinitely late) in the file
    late["runs"][0]["p99"] = None
    next(iter(late["runs"][0]["models"].values()))["p99"] = None
    late["runs"].append({**late["runs"][0], "seed": 1})  # medians over two nulls used to raise TypeError
    out.write_text(json.dumps(late))
    bench.main([*common, "--policies", "triton", "--traces", "azure", "--loads", "0.3", "--merge"])
    merged = json.loads(out.read_text())
    assert len(merged["runs"]) == 8 and merged["setup"]["traces"] == ["diurnal", "azure"]
    assert merged["setup"]["policies"] == ["static", "static-peak", "triton", "rl-floor"]
    longer = [*common[:4], "--duration", "2", *common[6:]]
    with pytest.raises(SystemExit, match="the same setup; duration: the file has 1.0, this run 2.0"):
        bench.main([*longer, "--policies", "triton", "--traces", "azure", "--loads", "0.3", "--merge"])
    old = json.loads(out.read_text())  # made before loading and neighbours were charged: it records neither
    del old["setup"]["load_bandwidth"], old["setup"]["cluster_rules"]
    out.write_text(json.dumps(old))
    with pytest.raises(SystemExit, match="load_bandwidth: the file has inf, this run 12000000000.0; cluster_rules: "
                                         f"the file has 1, this run {CLUSTER_RULES}"):
        bench.main([*common, "--policies", "triton", "--traces", "azure", "--loads", "0.3", "--merge"])
    with pytest.raises(SystemExit, match=f"cluster_rules: the file has 1, this run {CLUSTER_RULES}"):
        bench.main([*common, "--policies", "triton", "--traces", "azure", "--loads", "0.3", "--merge",
                    "--load-bandwidth", "inf"])
    old["setup"]["cluster_rules"] = CLUSTER_RULES
    out.write_text(json.dumps(old))  # inf is written as null
    bench.main([*common, "--policies", "triton", "--traces", "azure", "--loads", "0.3", "--merge", "--load-bandwidth",
                "inf"])
    assert json.loads(out.read_text())["setup"]["load_bandwidth"] is None


# --- reallocation: loading a new replica, draining a removed one ----------------------------------

class _Scripted:
    """A policy that starts with ``first`` and then applies nothing (tests call ``apply``)."""

    name = "scripted"

    def __init__(self, first):
        self.first = first

    def reset(self, context):
        return self.first

    def decide(self, observation):
        return None


def _two_pnpus(table, first, load_bandwidth, names=("ncf", "resnet50_block")):
    """Two ``small`` pNPUs (each holds two m1v1 vNPUs) under a policy that keeps to ``first``."""
    from tcloud.cluster.simulate import Simulator, make_context
    from tcloud.cluster.workload import model_by_name

    models = [model_by_name(DEFAULT_MODELS, n) for n in names]
    context = make_context(models, table, 2, 0.5, load_bandwidth=load_bandwidth)
    arrivals = Arrivals(make_trace("poisson", models, 4.0, 0), context.rates, 0)
    return Simulator(context, Cluster(1, 2, table.config), _Scripted(first), arrivals)


def test_a_replica_added_during_a_run_serves_once_its_image_has_crossed_the_host_link(table):
    from tcloud.cluster.simulate import Plan

    bandwidth = 1e6  # bytes per second: the shipped small table's images take a fraction of a second
    sim = _two_pnpus(table, Plan(replicas={0: ["m1v1"], 1: ["m1v1"]}, batch={0: 4, 1: 4}), bandwidth)
    assert list(sim.groups[0].free) == [0.0]  # the initial plan is loaded before the run
    sim.step()
    now = sim.now
    load = table.replica_load_bytes("ncf", "m1v1") / bandwidth
    assert 0.1 < load < 0.5
    sim.apply(Plan(replicas={0: ["m1v1", "m1v1"]}))
    assert sim.groups[0].free[1] == pytest.approx(now + load)
    assert sim.added == 1 and sim.loading_seconds == pytest.approx(load)
    sim.step()
    busy_new = sim.observe_last["busy"][0][1]  # fraction of the interval
    assert 0 < busy_new <= 1 - load + 1e-9
    results = sim.run(1.0)
    assert results["overall"]["replicas_added"] == 0 and results["overall"]["replica_seconds_loading"] == 0


def test_replicas_added_to_one_pnpu_load_one_after_another(table):
    from tcloud.cluster.simulate import Plan

    sim = _two_pnpus(table, Plan(replicas={0: [], 1: ["m1v1"]}), 1e6)
    sim.step()
    now, load = sim.now, table.replica_load_bytes("ncf", "m1v1") / 1e6
    sim.apply(Plan(replicas={0: ["m1v1", "m1v1"]}))
    assert [r.pnpu for r in sim.groups[0].replicas] == [1, 1]
    assert list(sim.groups[0].free) == pytest.approx([now + load, now + 2 * load])


@pytest.mark.parametrize("bandwidth", [float("inf"), 1e6])
def test_a_removed_replica_finishes_its_batch_before_a_newcomer_loads_onto_its_pnpu(table, bandwidth):
    from tcloud.cluster.simulate import Plan

    sim = _two_pnpus(table, Plan(replicas={0: ["m4v2"], 1: ["m1v1"]}), bandwidth)
    assert [g.replicas[0].pnpu for g in sim.groups] == [0, 1]
    sim.step()
    now = sim.now
    sim.groups[0].free[0] = now + 0.25  # a batch still running on the replica the plan removes
    sim.apply(Plan(replicas={0: [], 1: ["m1v1", "m4v2", "m1v1"]}))
    pnpus = [r.pnpu for r in sim.groups[1].replicas]
    assert pnpus == [1, 0, 1]  # the whole-pNPU one takes the drained pNPU, the small one its model's own
    load = [table.replica_load_bytes("resnet50_block", label) / bandwidth for label in ("m4v2", "m1v1")]
    assert sim.groups[1].free[1] == pytest.approx(now + 0.25 + load[0])  # after the drain, then its load
    assert sim.groups[1].free[2] == pytest.approx(now + load[1])  # another pNPU: no wait for the drain
    assert sim.loading_seconds == pytest.approx(0.25 + load[0] + load[1])


def test_a_replica_removed_while_it_loads_frees_its_pnpu_at_once(table):
    from tcloud.cluster.simulate import Plan

    sim = _two_pnpus(table, Plan(replicas={0: ["m1v1"], 1: ["m1v1", "m1v1"]}), 1e6)
    sim.step()
    now = sim.now
    ncf, resnet = (table.replica_load_bytes(name, "m1v1") / 1e6 for name in ("ncf", "resnet50_block"))
    sim.apply(Plan(replicas={0: ["m1v1", "m1v1"]}))
    assert sim.groups[0].replicas[1].pnpu == 0 and sim.groups[0].free[1] == pytest.approx(now + ncf)
    sim.apply(Plan(replicas={0: ["m1v1"], 1: ["m1v1"] * 3}))  # cancelled before it ran a batch
    assert sim.draining == {}
    assert sim.groups[1].replicas[2].pnpu == 0  # its slot, at once; the cancelled load's link time stays spent
    assert sim.groups[1].free[2] == pytest.approx(now + ncf + resnet)
    assert sim.loading_seconds == pytest.approx(ncf + resnet)


@pytest.mark.parametrize("other, kept", [("dlrm_mlp", [0, 1]), ("resnet50_block", [1, 1])])
def test_a_shrinking_model_keeps_a_benign_pairing_and_leaves_a_harmful_one(table, other, kept):
    from tcloud.cluster.simulate import Plan

    sim = _two_pnpus(table, Plan(replicas={0: ["m1v1"], 1: ["m1v1"]}), float("inf"), names=("ncf", other))
    sim.step()
    sim.apply(Plan(replicas={1: ["m1v1"] * 3}))  # its own pNPU 1 first, then next to NCF on pNPU 0
    assert [r.pnpu for r in sim.groups[1].replicas] == [1, 1, 0]
    pairing = sim.cluster.pairing(sim.groups[1].replicas[2])
    assert pairing == max(table.slowdown_next_to("ncf", other), table.slowdown_next_to(other, "ncf"))
    assert sim.cluster.pairing(sim.groups[1].replicas[0]) == 1.0
    assert (pairing < 1) == (kept == [0, 1])  # the shipped small table's factors make one benign, one harmful
    sim.apply(Plan(replicas={1: ["m1v1"] * 2}))
    # next to the DLRM MLP (0.96 at worst) NCF keeps its neighbour; next to ResNet-50 (1.71) it is freed
    assert sorted(r.pnpu for r in sim.groups[1].replicas) == kept
    assert sim.groups[0].slowdown[0] == (1.0 if kept == [1, 1] else table.slowdown_next_to("ncf", other))


def test_with_an_infinite_host_link_reallocation_is_instant(table):
    from tcloud.cluster.simulate import Plan

    sim = _two_pnpus(table, Plan(replicas={0: ["m1v1"], 1: ["m1v1"]}), float("inf"))
    sim.step()
    sim.apply(Plan(replicas={0: ["m1v1", "m1v1"]}))
    assert sim.groups[0].free[1] == sim.now and sim.loading_seconds == 0


def test_load_bytes_are_the_images_code_and_data_at_the_largest_batch(table, tmp_path):
    from tcloud.cluster.service import compile_for, image_load_bytes
    from tcloud.cluster.workload import model_by_name

    ncf = model_by_name(DEFAULT_MODELS, "ncf")
    image = compile_for(ncf, "small", table.max_batch, table.shape("m2v1")).image
    assert table.replica_load_bytes("ncf", "m2v1") == image_load_bytes(image) == len(image.code) + sum(
        len(s.data) for s in image.segments)
    again = ServiceTable.load(table.save(tmp_path / "t.json"))
    assert again.load_bytes == table.load_bytes and len(again.load_bytes) == len(table.models) * len(table.shapes)


def test_a_table_without_load_bytes_is_named_and_can_be_filled(table, tmp_path):
    from tcloud.cluster.service import default_path, fill_load_bytes
    from tcloud.cluster.simulate import make_context

    data = json.loads(default_path("small", "perf").read_text())
    del data["load_bytes"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    old = ServiceTable.load(path)
    with pytest.raises(ClusterError, match="service-time table .*old.json has no load_bytes for model 'dlrm_mlp' on "
                                           "shape 'm1v1'; rebuild it"):
        make_context(old.models, old, 4, 0.5)
    assert make_context(old.models, old, 4, 0.5, load_bandwidth=float("inf")).load_seconds[0]["m1v1"] == 0
    ncf_only = ServiceTable(old.config, old.backend, old.entries, old.shapes, old.clock_mhz,
                            [m for m in old.models if m.name == "ncf"])
    assert fill_load_bytes(ncf_only) == len(old.shapes)
    assert ncf_only.load_bytes == {k: v for k, v in table.load_bytes.items() if k[0] == "ncf"}


@pytest.mark.parametrize("change, message", [
    (lambda d: d["load_bytes"][2].update(bytes=0), r"field load_bytes\[2\].bytes must be a positive integer, got 0"),
    (lambda d: d["load_bytes"][0].pop("shape"), r"field load_bytes\[0\] lacks 'shape'"),
    (lambda d: d["neighbour_slowdown"].__setitem__(1, 7), r"field neighbour_slowdown\[1\] must be an object with model, "
                                                           "neighbour, factor, got 7"),
])
def test_bad_load_bytes_are_named(tmp_path, change, message):
    from tcloud.cluster.service import default_path

    data = json.loads(default_path("small", "perf").read_text())
    change(data)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ClusterError, match=message):
        ServiceTable.load(path)


@pytest.mark.parametrize("value", ["0", "-3", "fast", "nan"])
def test_cli_refuses_a_bad_load_bandwidth(capsys, value):
    with pytest.raises(SystemExit) as exit_:
        tcloud(["cluster", "simulate", "--nodes", "2", "--duration", "1", "--load-bandwidth", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert f"--load-bandwidth: expected a positive number of GB/s or inf, got '{value}'" in err
    assert "Traceback" not in err


# --- neighbours of another model -------------------------------------------------------------------

def test_a_replica_next_to_another_model_runs_the_tables_factor_slower_until_the_other_leaves(table):
    from tcloud.cluster.simulate import Plan

    sim = _two_pnpus(table, Plan(replicas={0: ["m1v1"] * 3, 1: ["m1v1"]}), float("inf"))
    ncf, resnet = sim.groups
    assert [r.pnpu for r in ncf.replicas] == [0, 0, 1] and resnet.replicas[0].pnpu == 1  # no room elsewhere
    factor = table.slowdown_next_to("ncf", "resnet50_block")
    assert factor > 1.5  # NCF's DMA-bound batches share the pNPU with ResNet-50's transfers
    curve = table.curve("ncf", "m1v1")
    assert np.allclose(ncf.shape_curves(), [curve, curve, factor * curve])
    assert np.allclose(resnet.shape_curves()[0],
                       table.slowdown_next_to("resnet50_block", "ncf") * table.curve("resnet50_block", "m1v1"))
    sim.step()
    sim.apply(Plan(replicas={0: ["m1v1"] * 2}))  # the replica next to ResNet-50 goes
    assert [r.pnpu for r in ncf.replicas] == [0, 0]
    assert np.allclose(resnet.shape_curves()[0], table.curve("resnet50_block", "m1v1"))


def test_neighbours_are_charged_only_when_asked(table):
    from tcloud.cluster.simulate import make_context

    charged = make_context(table.models, table, 4, 0.5)
    free = make_context(table.models, table, 4, 0.5, charge_neighbours=False)
    names = [m.name for m in table.models]
    assert np.all(free.neighbour_slowdown == 1)
    assert np.all(np.diag(charged.neighbour_slowdown) == 1)
    assert charged.neighbour_slowdown[names.index("ncf"), names.index("resnet50_block")] == table.slowdown_next_to(
        "ncf", "resnet50_block")


def test_neighbour_slowdowns_are_measured_as_shipped(table):
    from tcloud.cluster.service import measure_neighbour_slowdowns

    two = ServiceTable(table.config, table.backend, table.entries, table.shapes, table.clock_mhz,
                       [m for m in table.models if m.name in ("ncf", "dlrm_mlp")], table.timing_only,
                       neighbours=table.neighbours, load_bytes=table.load_bytes)
    seen = []
    measure_neighbour_slowdowns(two, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (4, 4)  # both models next to each, their own included
    assert two.neighbour_slowdown == {k: table.neighbour_slowdown[k] for k in (("ncf", "dlrm_mlp"), ("dlrm_mlp", "ncf"))}
    with pytest.raises(ClusterError, match="has no neighbour_slowdown for model 'ncf' next to 'bert_tiny'; rebuild"):
        two.slowdown_next_to("ncf", "bert_tiny")


@pytest.mark.parametrize("factor", [0, -1.5, "slow", True, float("inf")])
def test_a_bad_neighbour_factor_is_named(tmp_path, factor):
    from tcloud.cluster.service import default_path

    data = json.loads(default_path("small", "perf").read_text())
    data["neighbour_slowdown"][4]["factor"] = factor
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ClusterError, match=r"field neighbour_slowdown\[4\].factor must be a positive number"):
        ServiceTable.load(path)
