"""The cluster layer: workload and traces, placement, the batch simulator against the per-request
reference, policies, metrics and the command line."""

import json

import numpy as np
import pytest

from tcloud.cluster.placement import Cluster, check_fits
from tcloud.cluster.service import Shape, ServiceTable, load_table
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
    with pytest.raises(ClusterError, match="field slo_factor must be a positive number"):
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


def test_a_shape_larger_than_a_pnpu_is_refused_with_the_allocators_reason():
    with pytest.raises(ClusterError, match=r"does not fit a small pNPU: pNPU 0: 4 free MEs \(asked 5\)"):
        check_fits("small", Shape(5, 1, 64, 16))
    with pytest.raises(ClusterError, match="largest free scratchpad window 256 KiB"):
        check_fits("small", Shape(1, 1, 512, 16))
