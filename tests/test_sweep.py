"""``tcloud sweep``: spec checking with errors that name the field, and a small sweep on a local Ray
with 2 CPUs writing its CSV table and plot."""

import csv

import pytest

from tcloud.runtime.cli import main
from tcloud.runtime.sweep import COLUMNS, SweepError, check_spec, points

SPEC = """
models: [gemm 32x32x32, elementwise 8x32 passes=2 block=64]
configs: [small]
policies: [static, harvest]
tenants: [1, 2]
loads: [2]
hbm_latency: [100]
"""


@pytest.mark.parametrize("change, message", [
    ({"policies": ["fastest"]}, "policies: unknown policy 'fastest'"),
    ({"configs": ["huge"]}, "configs: unknown preset 'huge'"),
    ({"configs": [["small"]]}, r"configs: unknown preset \['small'\]"),
    ({"tenants": [0]}, "tenants must be positive integers, got 0"),
    ({"tenants": [9]}, "9 tenants, but a pNPU of small has 4 contexts"),
    ({"loads": ["many"]}, "loads must be positive integers, got 'many'"),
    ({"hbm_latency": [-5]}, "hbm_latency must be positive integers"),
    ({"hbm_latency": [10 ** 20]}, r"hbm_latency 100000000000000000000 on small: .* out of range \[1, 100000\]"),
    ({"loads": list(range(1, 201)), "hbm_latency": list(range(1, 101))},
     "20,000 points .* a sweep runs at most 10,000: split it"),
    ({"models": ["gemm 1024x2048x1024"], "tenants": [4]},
     "models: 'gemm 1024x2048x1024' needs 57344 B of scratchpad .* 4 tenants on small get 65536"),
    ({"models": ["gemm 8x8"]}, "models: 'gemm 8x8' on small"),
    ({"models": ["gemm 8x8x8x8"]}, "program 'gemm 8x8x8x8': expected 'gemm MxKxN' with positive integers"),
    ({"models": ["elementwise 8x32 passes=-1"]}, "program 'elementwise 8x32 passes=-1': expected 'elementwise RxC"),
    ({"models": ["gemm 100000x100000x100000"]}, "GEMM 100000x100000x100000 needs 7918309.6 MiB of HBM"),
    ({"models": ["elementwise 100000x100000"]}, "elementwise 100000x100000: needs 114515.4 MiB of HBM"),
    ({"models": ["elementwise 8x32 passes=100000000"]}, "passes must be at most 2047"),
    ({"colour": "red"}, "unknown field(s) colour"),
    ({"data": "yes"}, "data must be true or false"),
])
def test_bad_fields_are_named(change, message):
    spec = {"models": ["gemm 8x8x8"], "configs": ["small"], "policies": ["static"], "tenants": [1], "loads": [1],
            **change}
    with pytest.raises(SweepError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_spec(spec)


def test_the_spec_check_sizes_kernels_without_building_them(monkeypatch):
    """The driver checks that ``gemm``/``elementwise`` models fit from their footprints alone (a large
    GEMM took about 20 s to build only to be refused); the Ray workers build them."""
    import tcloud.runtime.tenants as tenants

    def never(*args, **kwargs):
        raise AssertionError("the spec check built a kernel's code")

    monkeypatch.setattr(tenants, "gemm", never)
    monkeypatch.setattr(tenants, "elementwise", never)
    spec = {"models": ["gemm 1024x2048x1024"], "configs": ["small"], "policies": ["static"], "tenants": [4],
            "loads": [1]}
    with pytest.raises(SweepError, match="needs 57344 B of scratchpad .* 4 tenants on small get 65536"):
        check_spec(spec)
    assert check_spec({**spec, "models": ["gemm 1024x2048x1024", "elementwise 8x32 passes=2"], "tenants": [1]})


def test_missing_fields_and_points():
    with pytest.raises(SweepError, match="missing field.*loads"):
        check_spec({"models": ["gemm 8x8x8"], "configs": ["small"], "policies": ["static"], "tenants": [1]})
    spec = check_spec({"models": ["gemm 8x8x8"], "configs": ["small", "tiny"], "policies": ["static", "harvest"],
                       "tenants": [1, 2], "loads": 1})
    assert len(points(spec)) == 2 * 2 * 2


def test_cli_reports_a_bad_spec_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("models: [gemm 8x8x8]\nconfigs: [small]\npolicies: [static]\ntenants: [1]\nloads: [0]\n")
    assert main(["sweep", str(path)]) == 1
    err = capsys.readouterr().err
    assert "loads must be positive integers, got 0" in err and "Traceback" not in err
    path.write_text("models: [gemm\n")
    assert main(["sweep", str(path)]) == 1
    assert "not valid YAML" in capsys.readouterr().err
    path.write_text("models: [gemm 8x8x8]\nconfigs: [small]\npolicies: [static]\ntenants: [1]\nloads: [1]\n"
                    "loads: [2]\n")
    assert main(["sweep", str(path)]) == 1
    assert "found key 'loads' again (first given on line 5)" in capsys.readouterr().err
    json_path = tmp_path / "spec.json"
    json_path.write_text('{"models": ["gemm 8x8x8"], "models": ["gemm 4x4x4"]}')
    assert main(["sweep", str(json_path)]) == 1
    assert "not valid JSON: key 'models' given twice in one object" in capsys.readouterr().err


BAD_PROGRAM = """
.config small
.footprint hbm=0x400 sram=0x200
.entry 0x200
utop cls=dma
  dma.load sram=0x0 hbm=0xf0000000 rows=1 row_bytes=16
halt
"""


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::tcloud.isa.AsmWarning")
def test_a_small_sweep_on_a_local_ray(tmp_path, capsys):
    """Eight points run; the four of a program that faults (found without data) fail with their fault and
    their rows say so, and the sweep ends with an error naming the first once the table is written."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("models: [", "models: [bad.s, "))
    (tmp_path / "bad.s").write_text(BAD_PROGRAM)
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--num-cpus", "2"]) == 1
    err = capsys.readouterr().err
    assert "4 of 12 points failed (the first: point bad.s / small / static / 1 tenants / load 2 / hbm latency 100: " \
           "tenant 0 " \
           "stopped with FAULTED HBM_BOUNDS at pc 0x210: hbm access [0xf0000000, 0xf0000010)" in err, err
    with open(out / "sweep.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 * 2 * 2 and set(rows[0]) == set(COLUMNS)
    assert (out / "sweep.png").stat().st_size > 0
    failed = [row for row in rows if row["error"]]
    assert [row["model"] for row in failed] == ["bad.s"] * 4 and all(row["jobs"] == "" for row in failed)
    rows = [row for row in rows if not row["error"]]
    for row in rows:
        assert int(row["jobs"]) == 2 * int(row["tenants"]) and int(row["hbm_latency"]) == 100
        assert float(row["jobs_per_mcycle"]) > 0 and 0 < float(row["me_utilization"]) + float(row["ve_utilization"])
    by = {(r["model"], r["policy"], r["tenants"]): r for r in rows}
    # two tenants sharing one pNPU finish more jobs per cycle than one alone, and each waits longer
    for model in ("gemm 32x32x32", "elementwise 8x32 passes=2 block=64"):
        one, two = by[(model, "harvest", "1")], by[(model, "harvest", "2")]
        assert float(two["jobs_per_mcycle"]) > float(one["jobs_per_mcycle"])


def test_bad_outputs_and_an_address_without_ray_are_named_before_ray_starts(tmp_path, capsys):
    import ray

    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    (tmp_path / "afile").write_text("kept")
    (tmp_path / "out" / "sweep.csv").mkdir(parents=True)
    for argv, message in ((["--out", str(tmp_path / "afile")], "sweep output directory"),
                          (["--out", str(tmp_path / "out")], "results " + str(tmp_path / "out" / "sweep.csv")
                           + " is a directory"),
                          (["--address", "127.0.0.1:1", "--out", str(tmp_path / "ok")], "no Ray cluster at 127.0.0.1:1")):
        assert main(["sweep", str(spec), *argv]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not ray.is_initialized()
    assert (tmp_path / "afile").read_text() == "kept"


@pytest.fixture
def stale_ray(monkeypatch):
    """Ray as a process sees it after a Ray started by earlier code lost its raylet: still
    initialised, its node marked dead (no CPUs left), a submitted task lost. Nothing is started."""
    import types

    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", lambda *a, **k: calls.append("init"))
    monkeypatch.setattr(ray, "shutdown", lambda *a, **k: calls.append("shutdown"))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"memory": 1e9})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": False, "NodeManagerAddress": "192.0.2.2"}])
    monkeypatch.setattr(ray, "remote", lambda **options: lambda f: types.SimpleNamespace(remote=lambda point: point))

    def get(future):
        raise ray.exceptions.LocalRayletDiedError()

    monkeypatch.setattr(ray, "get", get)
    return ray, calls


def test_a_ray_whose_raylet_died_is_named_not_counted_as_zero_cpus(stale_ray, tmp_path, monkeypatch):
    from tcloud.runtime.sweep import run_sweep

    ray, calls = stale_ray
    spec = check_spec({"models": ["gemm 8x8x8"], "configs": ["small"], "policies": ["static"], "tenants": [1],
                       "loads": [1]})
    with pytest.raises(SweepError, match=r"the Ray this process was already connected to has no live node: its "
                                         r"raylet died \(node 192\.0\.2\.2 is marked dead\).*ray\.shutdown\(\)"):
        run_sweep(spec, tmp_path, log=lambda line: None)
    # its CPUs back but the raylet dying under a point: the point and the cause are named
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(SweepError, match=r"point gemm 8x8x8 / small / static / 1 tenants / load 1 was lost: the Ray "
                                         r"this process was already connected to failed \(LocalRayletDiedError: "
                                         r"The task's local raylet died"):
        run_sweep(spec, tmp_path, log=lambda line: None)
    assert calls == []  # a Ray it did not start is neither restarted nor stopped


@pytest.mark.parametrize("second", ["lost", "interrupted", "killed"])
def test_points_that_ended_are_written_when_ray_fails_or_the_sweep_is_interrupted(stale_ray, tmp_path, monkeypatch,
                                                                                  second):
    """Ray lost under a point or Ctrl-C: the points that ended are written, then it stops; a point whose worker
    Ray killed (out of memory) fails alone."""
    from tcloud.runtime.sweep import run_point, run_sweep

    ray, calls = stale_ray
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    spec = check_spec({"models": ["gemm 8x8x8"], "configs": ["small"], "policies": ["static"], "tenants": [1, 2],
                       "loads": [1]})
    failure = {"lost": ray.exceptions.LocalRayletDiedError(), "interrupted": KeyboardInterrupt(),
               "killed": ray.exceptions.OutOfMemoryError("Task was killed due to the node running low on memory.")}

    def get(point):
        if point["tenants"] == 2:
            raise failure[second]
        return run_point(point)

    monkeypatch.setattr(ray, "get", get)
    expected = {"lost": (SweepError, r"2 tenants / load 1 was lost: .*; the 1 point\(s\) that ended are in "),
                "interrupted": (KeyboardInterrupt, None),
                "killed": (SweepError, r"1 of 2 points failed \(the first: point gemm 8x8x8 / small / static / 2 "
                                       r"tenants / load 1: OutOfMemoryError: Task was killed")}[second]
    with pytest.raises(expected[0], match=expected[1]):
        run_sweep(spec, tmp_path, log=lambda line: None)
    with open(tmp_path / "sweep.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["tenants"], row["error"][:16]) for row in rows][0] == ("1", "") and int(rows[0]["jobs"]) == 1
    assert len(rows) == (2 if second == "killed" else 1)


def test_a_sweep_whose_every_point_fails_writes_its_table_and_no_plot(stale_ray, tmp_path, monkeypatch):
    from tcloud.runtime.sweep import run_sweep

    ray, calls = stale_ray
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "get", lambda point: (_ for _ in ()).throw(ray.exceptions.WorkerCrashedError()))
    (tmp_path / "sweep.png").write_bytes(b"an earlier plot")
    spec = check_spec({"models": ["gemm 8x8x8"], "configs": ["small"], "policies": ["static"], "tenants": [1],
                       "loads": [1]})
    lines = []
    with pytest.raises(SweepError, match="1 of 1 points failed .*WorkerCrashedError: The worker died"):
        run_sweep(spec, tmp_path, log=lines.append)
    assert not (tmp_path / "sweep.png").exists() and "no point ran: no plot" in lines[-1]
    assert "WorkerCrashedError" in (tmp_path / "sweep.csv").read_text()


@pytest.mark.parametrize("text, path, message", [
    ("a: 1\nb: {c: 1, c: 2}\n", "s.yaml", "found key 'c' again (first given on line 2)"),
    ("base: &b {x: 1}\nother: {<<: *b, x: 2}\n", "s.yaml", None),  # a merged key may be overridden
    ("a: !!map [x, y]\n", "s.yaml", "expected a mapping node, but found sequence"),
    ("[" * 3000, "s.yaml", "not valid YAML: nested too deeply"),
    ("[" * 100000, "s.json", "not valid JSON: nested too deeply"),
    ('{"a": {"b": 1, "b": 2}}', "s.json", "key 'b' given twice in one object"),
])
def test_documents_with_repeated_keys_or_odd_structure_are_refused_cleanly(text, path, message):
    from tcloud.runtime.files import parse_document

    if message is None:
        assert parse_document(text, path)["other"] == {"x": 2}
        return
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_document(text, path)
