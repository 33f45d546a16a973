"""The tcloud command line: every command, its --help, and its errors."""

import fcntl
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest

from tcloud.isa import INSTRUCTIONS, FaultCode, ProgramImage
from tcloud.runtime.cli import build_parser, main
from tcloud.runtime.backends import verilator as verilator_device
from tcloud.runtime.progress import Progress
from tcloud.runtime.backends.verilator import fst_supported

EXAMPLES = Path(__file__).parent.parent / "examples"


def commands(parser, prefix=()):
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from commands(sub, prefix + (name,))


@pytest.mark.parametrize("argv", [()] + list(commands(build_parser())), ids=" ".join)
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    assert "usage: tcloud" in capsys.readouterr().out


def test_isa_doc_lists_every_instruction_and_fault(capsys):
    assert main(["isa", "doc"]) == 0
    text = capsys.readouterr().out
    for spec in INSTRUCTIONS:
        assert f"`{spec.mnemonic}`" in text
    for code in FaultCode:
        assert code.name in text


def test_isa_doc_is_markdown_without_restructuredtext(capsys):
    assert main(["isa", "doc"]) == 0
    text = capsys.readouterr().out
    assert "## Host CSRs" in text and "`CMD_ERROR`" in text
    assert not re.search(r":\w+:`", text) and "``" not in text


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.s")), ids=lambda p: p.name)
def test_asm_disasm_run_on_examples(example, tmp_path, capsys):
    image_path = tmp_path / "prog.tcimg"
    assert main(["asm", str(example), "-o", str(image_path)]) == 0
    text_path = tmp_path / "prog.s"
    assert main(["disasm", str(image_path), "-o", str(text_path)]) == 0
    again = tmp_path / "again.tcimg"
    assert main(["asm", str(text_path), "-o", str(again)]) == 0
    assert again.read_bytes() == image_path.read_bytes()
    assert main(["run", str(image_path), "--save", str(tmp_path / "out")]) == 0
    assert "context 0: DONE" in capsys.readouterr().out


def test_vector_example_computes_what_it_says(tmp_path):
    x = np.arange(-16, 16, dtype=np.int32).reshape(4, 8) * 37
    np.save(tmp_path / "x.npy", x)
    image = tmp_path / "v.tcimg"
    assert main(["asm", str(EXAMPLES / "vector_tiny.s"), "-o", str(image)]) == 0
    assert main(["run", str(image), "--input", f"X={tmp_path / 'x.npy'}", "--save", str(tmp_path)]) == 0
    bias = np.array([-100, -50, 0, 50, 100, 150, 200, 250])
    expected = np.clip(np.round(np.maximum(x + bias, 0) / 8) - 3, -128, 127)
    assert np.load(tmp_path / "Y.npy").tolist() == expected.tolist()
    assert np.load(tmp_path / "Z.npy").tolist() == expected.max(axis=1).tolist()


def test_gemm_command_then_run(tmp_path, capsys):
    image = tmp_path / "g.tcimg"
    assert main(["gemm", "--m", "5", "--k", "6", "--n", "7", "--config", "tiny", "--bias", "-o", str(image)]) == 0
    assert ProgramImage.from_bytes(image.read_bytes()).config_name == "tiny"
    assert main(["run", str(image)]) == 0


@pytest.mark.parametrize("argv, message", [
    (["disasm", "/nonexistent.tcimg"], "cannot read /nonexistent.tcimg"),
    (["asm", "/nonexistent.s"], "cannot read /nonexistent.s"),
    (["run", str(EXAMPLES / "vector_tiny.s")], "not a TCloud program image"),
    (["gemm", "--m", "1", "--k", "5000000", "--n", "1", "-o", "/tmp/x"], "exceeds the largest DMA stride"),
])
def test_errors_exit_nonzero_with_a_message(argv, message, capsys):
    assert main(argv) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after any "... has begun" line
    assert last.startswith("tcloud: error:") and message in last


def test_bad_assembly_reports_file_and_line(tmp_path, capsys):
    source = tmp_path / "bad.s"
    source.write_text(".config tiny\nnop\nme.loadw w=3 k=1 n=1\n")
    assert main(["asm", str(source)]) == 1
    assert f"{source}:3: me.loadw: field 'w'=3 is not a multiple of 4" in capsys.readouterr().err


def test_wrong_input_file_for_run(tmp_path, capsys):
    image = tmp_path / "g.tcimg"
    main(["gemm", "--m", "2", "--k", "2", "--n", "2", "--config", "tiny", "-o", str(image)])
    np.save(tmp_path / "a.npy", np.zeros((3, 3), np.int8))
    assert main(["run", str(image), "--input", f"A={tmp_path / 'a.npy'}"]) == 1
    assert "input 'A' must have shape (2, 2)" in capsys.readouterr().err


@pytest.mark.slow  # the multi-tenant part runs on the 'small' Verilator model (minutes to build when cold)
def test_console_script_demo_runs():
    for backend in ("functional", "verilator"):
        result = subprocess.run([sys.executable, "-m", "tcloud", "demo", "--config", "tiny",
                                 "--backend", backend, "--m", "9", "--k", "11", "--n", "6"],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "PASS" in result.stdout and "identical: True" in result.stdout
    assert "cycles" in result.stdout and "engine busy" in result.stdout


@pytest.mark.parametrize("argv", [["gemm", "--m", "0", "--k", "1", "--n", "1", "-o", "/tmp/x"],
                                  ["demo", "--k", "-3"], ["demo", "--n", "many"]])
def test_bad_dimensions_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "is not a positive integer" in err or "is not an integer" in err


# --- output paths, interrupts and closed pipes (issue 11, items 2 and 6), as a user runs them ---------


def tcloud(*argv, cwd=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "tcloud", *argv], capture_output=True, text=True,
                          cwd=cwd, **kwargs)


def test_output_files_get_their_missing_directories(tmp_path):
    source = str(EXAMPLES / "vector_tiny.s")
    result = tcloud("asm", source, "-o", "build/deeper/v.tcimg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ProgramImage.from_bytes((tmp_path / "build/deeper/v.tcimg").read_bytes()).config_name == "tiny"
    result = tcloud("isa", "doc", "-o", "docs/isa.md", cwd=tmp_path)
    assert result.returncode == 0 and "## Work units" in (tmp_path / "docs/isa.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["asm", str(EXAMPLES / "vector_tiny.s"), "-o", "."], "image file . is a directory"),
    (["gemm", "--m", "4", "--k", "4", "--n", "4", "--config", "tiny", "-o", "."], "image file . is a directory"),
    (["isa", "doc", "-o", "."], "output . is a directory"),
    (["asm", str(EXAMPLES / "vector_tiny.s"), "-o", "/proc/nope/v.tcimg"], "cannot create the directory"),
])
def test_bad_output_targets_are_clean_errors(argv, message, tmp_path):
    result = tcloud(*argv, cwd=tmp_path)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_run_checks_its_save_directory_before_running(tmp_path):
    image = tmp_path / "v.tcimg"
    assert tcloud("asm", str(EXAMPLES / "vector_tiny.s"), "-o", str(image)).returncode == 0
    (tmp_path / "taken").write_text("a file, not a directory")
    result = tcloud("run", str(image), "--backend", "functional", "--save", str(tmp_path / "taken"))
    assert result.returncode == 1 and "exists and is not a directory" in result.stderr
    assert "context 0" not in result.stdout, "the program ran before the target was checked"
    result = tcloud("run", str(image), "--backend", "functional", "--save", str(tmp_path / "new/outs"))
    assert result.returncode == 0 and list((tmp_path / "new/outs").glob("*.npy"))


def test_a_closed_pipe_ends_quietly():
    """The reader is gone before tcloud writes (as `tcloud config | head` once it has its line)."""
    process = subprocess.Popen([sys.executable, "-m", "tcloud", "isa", "doc"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=60) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_ctrl_c_exits_130_without_a_traceback(tmp_path):
    """Interrupting a long command (lowering a 1024^3 GEMM takes several seconds)."""
    process = subprocess.Popen([sys.executable, "-m", "tcloud", "gemm", "--config", "small", "--m", "1024",
                                "--k", "1024", "--n", "1024", "-o", str(tmp_path / "g.tcimg")],
                               stderr=subprocess.PIPE, text=True,
                               # as from a terminal: a shell's background job (CI) would ignore SIGINT
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = process.stderr.readline()  # the work has begun (imports can take seconds on a cold venv)
    assert started.startswith("lowering GEMM"), started
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err


# --- errors that used to be tracebacks (issue 11, item 7), as a user runs them --------------------


def scenario_text(top="", tenant=""):
    """A valid one-tenant scenario on tiny/functional, with a line added (or replacing the line of its key) at
    the top or to the tenant."""
    config = "" if top.startswith("config:") else "config: tiny\n"
    name = "" if tenant.startswith("name:") else "  - name: a\n    "
    return (f"{config}backend: functional\n{top}\ntenants:\n{name or '  - '}"
            f"vnpu: {{mes: 1, ves: 1, sram_kib: 4, hbm_mib: 1}}\n    program: gemm 4x4x4\n    {tenant}\n")


@pytest.mark.parametrize("top, tenant, message", [
    ("", "", None),  # the valid scenario runs
    ("policy: fastest", "", "policy must be one of static, harvest, temporal, operator, got 'fastest'"),
    ("policy: 7", "", "policy must be one of static, harvest, temporal, operator, got 7"),
    ("policy: [1]", "", "policy must be one of static, harvest, temporal, operator, got [1]"),
    ("pnpus: 0", "", "pnpus must be a positive integer, got 0"),
    ("pnpus: two", "", "pnpus must be a positive integer, got 'two'"),
    ("oversubscribe: maybe", "", "oversubscribe must be true or false, got 'maybe'"),
    ("config: huge", "", "config must be one of tiny, small, tpu_like, tpu_v4_like, got 'huge'"),
    ("", "seed: -1", "tenant 0: seed must be an integer >= 0, got -1"),
    ("", "seed: abc", "tenant 0: seed must be an integer >= 0, got 'abc'"),
    ("", "name: [1]", "tenant 0: name must be a string, got [1]"),
])
def test_malformed_scenarios_are_clean_errors(top, tenant, message, tmp_path):
    (tmp_path / "s.yaml").write_text(scenario_text(top, tenant))
    result = tcloud("vnpu", "s.yaml", cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    if message is None:
        assert result.returncode == 0 and "all match" in result.stdout, result.stderr
    else:
        assert result.returncode == 1, result.stdout
        assert result.stderr.strip().splitlines()[-1] == f"tcloud: error: s.yaml: {message}"


def test_bad_run_and_asm_inputs_are_clean_errors(tmp_path):
    image = tmp_path / "v.tcimg"
    assert tcloud("asm", str(EXAMPLES / "vector_tiny.s"), "-o", str(image)).returncode == 0
    result = tcloud("run", str(image), "--seed", "-5")
    assert result.returncode == 2 and "argument --seed: -5 is not a valid seed" in result.stderr
    (tmp_path / "x.txt").write_text("1 2 3\n")
    result = tcloud("run", str(image), "--input", f"X={tmp_path / 'x.txt'}")
    assert result.returncode == 1 and "x.txt is not a .npy file" in result.stderr and "pickle" not in result.stderr
    result = tcloud("run", str(image), "--save", "/proc/nope")
    assert result.returncode == 1 and "cannot create --save directory /proc/nope" in result.stderr
    (tmp_path / "bin.s").write_bytes(bytes(range(128, 256)))
    result = tcloud("asm", str(tmp_path / "bin.s"))
    assert result.returncode == 1 and "bin.s is not an assembly file (byte 0 is not UTF-8 text)" in result.stderr


# --- GEMM images that cannot fit (issue 11, item 8) ------------------------------------------------


def test_gemm_refuses_a_shape_the_hbm_cannot_hold_before_lowering_it(tmp_path):
    start = time.perf_counter()
    result = tcloud("gemm", "--config", "small", "--m", "4096", "--k", "4096", "--n", "4096", "-o", "g.tcimg",
                    cwd=tmp_path)
    assert result.returncode == 1 and not (tmp_path / "g.tcimg").exists()
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"tcloud: error: GEMM 4096x4096x4096 needs \d+\.\d MiB of HBM \(96\.0 MiB of operands and "
                        r"result, \d+\.\d MiB of code\), but config 'small' has 64 MiB", last), last
    assert time.perf_counter() - start < 15, "refused only after lowering"


def test_gemm_requant_options_need_mult(tmp_path):
    for option in ("--shift", "--zp"):
        result = tcloud("gemm", "--m", "4", "--k", "4", "--n", "4", "--config", "tiny", option, "3", "-o", "g.tcimg",
                        cwd=tmp_path)
        assert result.returncode == 1 and "give --mult too" in result.stderr and not (tmp_path / "g.tcimg").exists()
    result = tcloud("gemm", "--m", "4", "--k", "4", "--n", "4", "--config", "tiny", "--mult", "1073741824", "--shift",
                    "38", "-o", "g.tcimg", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ProgramImage.from_bytes((tmp_path / "g.tcimg").read_bytes()).symbol("C").dtype == "i8"


# --- tcloud vnpu: engine classes checked at load, faults reported as faults, JSON (issue 11, item 10)


def test_vnpu_refuses_a_tenant_whose_spec_cannot_run_its_program(tmp_path):
    (tmp_path / "s.yaml").write_text(scenario_text().replace("ves: 1", "ves: 0").replace("gemm 4x4x4",
                                                                                         "elementwise 4x8"))
    result = tcloud("vnpu", "s.yaml", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "tcloud: error: tenant 0 (a): the program runs VE uTOps but a has no VE (ves=0); under the harvest policy "
        "they would fault NO_ENGINE")


def test_vnpu_reports_a_fault_as_a_fault_and_as_json(tmp_path):
    from tcloud.isa import EngineClass, Instr, encode_stream

    code = encode_stream([Instr("utop", cls=int(EngineClass.VE), len=1), Instr("ve.fill", dst=0x10000, n=1),
                          Instr("halt")])
    (tmp_path / "bad.tcimg").write_bytes(ProgramImage.for_config("tiny", code, hbm_bytes=len(code),
                                                                 sram_bytes=64).to_bytes())
    bad = "  - name: bad\n    vnpu: {mes: 0, ves: 1, sram_kib: 4, hbm_mib: 1}\n    program: bad.tcimg\n    runs: 2\n"
    (tmp_path / "s.yaml").write_text(scenario_text("oversubscribe: true") + bad)
    result = tcloud("vnpu", "s.yaml", cwd=tmp_path)
    assert result.returncode == 1 and "MISMATCH" not in result.stdout, result.stdout
    assert "run 0 FAULTED SRAM_BOUNDS: context 1 faulted with SRAM_BOUNDS" in result.stdout
    assert "runs: 2, none completed" in result.stdout and "runs: 1, 1 completed; outputs vs golden model alone: " \
                                                         "all match" in result.stdout
    result = tcloud("vnpu", "s.yaml", "--json", cwd=tmp_path)
    assert result.returncode == 1 and "tcloud: error: a tenant faulted" in result.stderr
    report = json.loads(result.stdout)
    good, bad = report["tenants"]
    assert not report["ok"] and good["ok"] and good["matches_golden_model"] == [True] and not good["faults"]
    assert not bad["ok"] and [f["fault"] for f in bad["faults"]] == ["SRAM_BOUNDS"] * 2
    assert bad["bill"]["total"] >= 0 and bad["usage"]["runs"] == 0 and report["pnpus"] == [{"backend": "functional"}]


# --- tcloud run on the RTL: cycles, utilization, the golden-model check (issue 11, item 3) --------


@pytest.mark.parametrize("backend", ["verilator", pytest.param("amaranth", marks=pytest.mark.slow)])
def test_run_on_the_rtl_prints_cycles_utilization_and_the_golden_check(backend, tmp_path):
    image = tmp_path / "g.tcimg"
    assert tcloud("asm", str(EXAMPLES / "gemm_tiny.s"), "-o", str(image)).returncode == 0
    result = tcloud("run", str(image), "--backend", backend, "--print-outputs", "--save", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\d+ cycles; engine busy: DMA \d+\.\d%, ME \d+\.\d%, VE \d+\.\d% "
                     r"\(dma0 \d+\.\d%, me0 \d+\.\d%, ve0 \d+\.\d%\)$", result.stdout, re.M), result.stdout
    assert "outputs vs golden model: all match" in result.stdout
    with np.printoptions(threshold=10**6, linewidth=120):
        assert str(np.load(tmp_path / "out" / "C.npy")) in result.stdout


def test_run_help_names_the_default_backend_and_functional_runs_print_no_cycles(tmp_path):
    assert "default: functional" in " ".join(tcloud("run", "--help").stdout.split())
    image = tmp_path / "g.tcimg"
    assert tcloud("asm", str(EXAMPLES / "gemm_tiny.s"), "-o", str(image)).returncode == 0
    result = tcloud("run", str(image))
    assert result.returncode == 0 and "context 0: DONE" in result.stdout
    assert "cycles" not in result.stdout and "golden model" not in result.stdout


# --- waveforms (issue 11, item 4) ---------------------------------------------------------------


@pytest.mark.parametrize("backend, name", [
    ("verilator", "waves/run.vcd"),
    pytest.param("amaranth", "waves/run.vcd", marks=pytest.mark.slow),
    pytest.param("verilator", "waves/run.fst", marks=pytest.mark.skipif(
        not fst_supported(), reason="no lz4 headers for Verilator's FST writer")),
])
def test_run_writes_a_waveform(backend, name, tmp_path):
    image = tmp_path / "g.tcimg"
    assert tcloud("asm", str(EXAMPLES / "gemm_tiny.s"), "-o", str(image)).returncode == 0
    result = tcloud("run", str(image), "--backend", backend, "--vcd", name, cwd=tmp_path)
    assert result.returncode == 0 and f"waveform: {name}" in result.stdout, result.stderr
    data = (tmp_path / name).read_bytes()
    if name.endswith(".vcd"):  # complete: the header, then a time step for every one of the run's 1,113 cycles
        assert b"$enddefinitions" in data and len(re.findall(rb"\n#\d+", data)) > 1113
    else:
        assert data[0] == 0 and len(data) > 10_000  # an FST header block first


def test_waveform_errors_are_clean(tmp_path):
    image = tmp_path / "g.tcimg"
    assert tcloud("asm", str(EXAMPLES / "gemm_tiny.s"), "-o", str(image)).returncode == 0
    for argv, message in ((["--vcd", "w.vcd"], "the functional backend has no signals to trace"),
                          (["--backend", "amaranth", "--vcd", "w.fst"], "Amaranth's simulator writes VCD only"),
                          (["--backend", "amaranth", "--vcd", "."], "waveform file . is a directory")):
        result = tcloud("run", str(image), *argv, cwd=tmp_path)
        assert result.returncode == 1 and message in result.stderr.splitlines()[-1], result.stderr


def test_vnpu_writes_one_waveform_per_pnpu(tmp_path):
    (tmp_path / "s.yaml").write_text(scenario_text("pnpus: 2").replace("functional", "verilator"))
    result = tcloud("vnpu", "s.yaml", "--vcd", "w.vcd", cwd=tmp_path)
    assert result.returncode == 0 and "all match" in result.stdout, result.stderr
    for index in (0, 1):
        assert b"$enddefinitions" in (tmp_path / f"w.pnpu{index}.vcd").read_bytes()


@pytest.mark.slow
@pytest.mark.xdist_group("hbm_player_runs")  # its child run uses the run directories of test_hbm_models' bench
def test_cocotb_benches_write_waves_when_asked(tmp_path):
    from conftest import BUILD

    for stale in BUILD.glob("hbm_player-*/run-*/dump.vcd"):
        stale.unlink()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(Path(__file__).with_name("test_hbm_models.py")), "-k",
                             "test_cocotb_responder_follows_the_reference and not 3"],
                            capture_output=True, text=True, env={**os.environ, "TCLOUD_WAVES": "1"})
    assert result.returncode == 0, result.stdout[-3000:]
    waves = list(BUILD.glob("hbm_player-*/run-*/dump.vcd"))
    assert len(waves) == 1 and b"$enddefinitions" in waves[0].read_bytes()[:100_000]


# --- conventions (issue 11, item 11) --------------------------------------------------------------


def test_python_m_tcloud_and_version(tmp_path):
    from importlib.metadata import version

    for argv in ([sys.executable, "-m", "tcloud", "--version"],
                 [Path(sys.executable).with_name("tcloud"), "--version"]):
        result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)  # outside the source tree
        assert result.returncode == 0 and result.stdout == f"tcloud {version('tcloud-npu')}\n", result.stderr


def test_make_bench_writes_to_a_fresh_directory(tmp_path):
    root = Path(__file__).parent.parent
    dry = subprocess.run(["make", "-n", "bench"], cwd=root, capture_output=True, text=True).stdout
    assert re.search(r"TCLOUD_BENCH_RESULTS=build/bench/\d{8}-\d{6} ", dry), dry
    probe = "from benchmarks.common import write; write('probe', {})"
    result = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True,
                            env={**os.environ, "TCLOUD_BENCH_RESULTS": str(tmp_path / "fresh")})
    assert result.returncode == 0 and json.loads((tmp_path / "fresh/probe.json").read_text())["benchmark"] == "probe"


def test_benchmark_json_is_standard_with_nulls_for_non_finite_numbers(tmp_path):
    """A cluster run whose p99 falls among dropped requests is infinite; the JSON says null (and what
    null means) instead of the non-standard ``Infinity``."""
    from benchmarks.common import NULLS, write

    def strict(text):
        return json.loads(text, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))

    path = write("probe", {"runs": [{"p99": float("inf"), "p50": 0.002}], "ratio": np.float64("nan")},
                 tmp_path / "probe.json")
    saved = strict(path.read_text())
    assert saved["runs"] == [{"p99": None, "p50": 0.002}] and saved["ratio"] is None and saved["nulls"] == NULLS
    assert "nulls" not in strict(write("probe", {"p99": 0.01}, tmp_path / "finite.json").read_text())


def test_the_multitenant_plot_explains_its_dashed_line(tmp_path):
    import matplotlib.pyplot as plt

    from benchmarks import multitenant_rtl
    from benchmarks.common import COMMITTED

    saved = json.loads((COMMITTED / "multitenant_rtl.json").read_text())
    multitenant_rtl.plot(saved["results"], tmp_path / "p.png")
    legend = plt.gcf().axes[2].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["target: no tenant slower than 1.1x alone"]
    assert saved["targets"]["max_slowdown_vs_alone"] == multitenant_rtl.MAX_SLOWDOWN
    plt.close("all")


# --- progress on long work (issue 11, item 5) -----------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_a_bar_on_a_terminal_and_two_lines_elsewhere():
    terminal = Terminal()
    with Progress("counting", unit="instr", stream=terminal) as progress:
        for done in range(1, 4):
            time.sleep(0.15)  # longer than tqdm's shortest interval between two draws
            progress.update(done, 3)
    assert "counting: 100%|" in terminal.getvalue() and "3.00/3.00" in terminal.getvalue(), terminal.getvalue()
    assert terminal.getvalue().endswith("counting: done in 0.5 s\n")
    terminal = Terminal()
    with Progress("building", estimate=1.0, stream=terminal):
        time.sleep(0.6)
    assert re.search(r"building:  *\d+%\|.*\| 00:00 of about 1 s", terminal.getvalue()), terminal.getvalue()
    log = io.StringIO()
    with pytest.raises(KeyError), Progress("failing", estimate=90, stream=log):
        raise KeyError
    assert log.getvalue() == "failing (about 90 s) ...\n", "no 'done' line after a failure: the error stays last"


def test_gemm_shows_its_progress(tmp_path):
    result = tcloud("gemm", "--m", "64", "--k", "64", "--n", "64", "-o", "g.tcimg", cwd=tmp_path)
    assert result.returncode == 0
    assert re.fullmatch(r"lowering GEMM 64x64x64 for 'small' \.\.\.\nlowering GEMM 64x64x64 for 'small': done in "
                        r"\d+\.\d s\n", result.stderr), result.stderr
    main_fd, terminal_fd = os.openpty()  # as in a terminal of 100 columns: a bar counting instructions
    fcntl.ioctl(terminal_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "tcloud", "gemm", "--m", "512", "--k", "512", "--n", "256",
                                "-o", "g.tcimg"], cwd=tmp_path, stderr=terminal_fd, stdout=subprocess.DEVNULL)
    os.close(terminal_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    assert process.wait(timeout=120) == 0
    text = b"".join(chunks).decode()
    assert re.search(r"lowering GEMM 512x512x256 for 'small':  *\d+%\|.*\| [\d.]+k?/[\d.]+k \[.*instr/s\]", text), text


def test_a_verilator_build_and_tcloud_verilog_estimate_from_the_newest_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("TCLOUD_CACHE", str(tmp_path))
    build, verilog = verilator_device.BUILD_SECONDS, verilator_device.VERILOG_SECONDS
    assert verilator_device.recorded_seconds("tiny", build, False) is None
    for name, seconds, age in (("tiny-aaa", "50.0", 100), ("tiny-bbb", "40.5", 10), ("tiny-trace-vcd-ccc", "70", 0),
                               ("small-ddd", "99", 0)):
        entry = tmp_path / "verilator" / name
        entry.mkdir(parents=True)
        for record in (build, verilog):
            (entry / record).write_text(seconds)
            os.utime(entry / record, (time.time() - age,) * 2)
    assert verilator_device.recorded_seconds("tiny", build, False) == 40.5
    assert verilator_device.recorded_seconds("tiny", build, "vcd") == 70.0
    assert verilator_device.recorded_seconds("tiny", verilog) == 70.0  # the same Verilog, traced or not


@pytest.mark.slow  # generates the Verilog of tiny
def test_tcloud_verilog_announces_the_time_the_last_generation_took_and_caches_the_verilog(tmp_path):
    entry = tmp_path / "verilator" / "tiny-aaa"
    entry.mkdir(parents=True)
    (entry / verilator_device.VERILOG_SECONDS).write_text("70.0\n")
    older = tmp_path / "verilog"
    older.mkdir()
    for age, name in enumerate(("tiny-pnpu-old.v", "tiny-pnpu-older.v", "tiny-pnpu-oldest.v", "small-pnpu-other.v")):
        (older / name).write_text("// a design of before\n")
        os.utime(older / name, (time.time() - 1000 * (age + 1),) * 2)
    env = {**os.environ, "TCLOUD_CACHE": str(tmp_path)}
    result = tcloud("verilog", "--config", "tiny", "--no-lint", "-o", str(tmp_path / "t.v"), env=env)
    assert result.returncode == 0 and result.stderr.startswith("generating Verilog for 'tiny' (about 70 s) ...\n")
    again = tcloud("verilog", "--config", "tiny", "--no-lint", "-o", str(tmp_path / "again.v"), env=env)
    assert again.returncode == 0 and "generating" not in again.stderr and "from the cache" in again.stdout
    assert (tmp_path / "again.v").read_text() == (tmp_path / "t.v").read_text()
    kept = sorted(path.name for path in older.glob("*.v"))
    assert len(kept) == 4 and "tiny-pnpu-oldest.v" not in kept and "small-pnpu-other.v" in kept  # 3 per design


@pytest.mark.parametrize("top", ["a/b", "../../x", "a b", "1x", ""])
def test_tcloud_verilog_refuses_a_top_name_that_is_not_a_verilog_identifier(top, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TCLOUD_CACHE", str(tmp_path / "cache"))
    assert main(["verilog", "--config", "tiny", "--no-lint", "--top", top, "-o", str(tmp_path / "t.v")]) == 1
    err = capsys.readouterr().err
    assert err == f"tcloud: error: top module name {top!r} is not a Verilog identifier (a letter or _, then letters, " \
                  "digits, _ or $)\n"
    assert not (tmp_path / "t.v").exists() and not (tmp_path / "cache").exists()  # nothing generated or cached


@pytest.mark.slow  # collects the whole suite; the quick subset need not check itself
def test_the_quick_subset_leaves_out_the_long_runs():
    """`pytest -m "not slow"` (under a minute on 2 cores with the tiny Verilator model cached) skips the RTL
    simulations, builds, proofs and benchmarks, and keeps the golden model, ISA, firmware and CLI."""
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow", "-p",
                             "no:cacheprovider", str(Path(__file__).parent)], capture_output=True, text=True)
    files = {line.split("::")[0].rsplit("/", 1)[-1] for line in result.stdout.splitlines() if "::" in line}
    slow = {"test_cocotb.py", "test_formal.py", "test_rtl_pnpu.py", "test_multitenant.py", "test_me_hazards.py"}
    assert slow.isdisjoint(files)
    assert {"test_cli.py", "test_golden_ops.py", "test_isa_asm.py", "test_hypervisor.py"} <= files


def test_a_preset_without_rtl_says_so_and_which_backends_run_it(tmp_path):
    """tpu_like's 128x128 MEs need 128-word scratchpad rows; its lines have 32 (issue 11 item 1)."""
    shown = tcloud("config", "tpu_like")
    assert shown.returncode == 0
    assert "backends        functional, perf (no RTL: a 128x128 array (me_rows, me_cols)" in shown.stdout
    assert "backends        functional, amaranth, verilator, perf" in tcloud("config", "small").stdout
    for argv in (("verilog", "--config", "tpu_like", "-o", str(tmp_path / "p.v")), ("demo", "--config", "tpu_like")):
        result = tcloud(*argv)
        assert result.returncode == 1, argv
        assert result.stderr.strip().splitlines()[-1].startswith("tcloud: error: config 'tpu_like' has no RTL")
        assert "Traceback" not in result.stderr


def test_an_interrupt_while_the_libraries_load_exits_130_without_a_traceback(monkeypatch):
    import builtins

    from tcloud.__main__ import run

    plain_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "tcloud.runtime.cli":
            raise KeyboardInterrupt
        return plain_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert run() == 130


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    import errno
    import os

    from tcloud.isa.errors import TcloudError
    from tcloud.runtime import files

    path = tmp_path / "results.json"
    path.write_text("the old results")

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(TcloudError, match=f"cannot write results {path}: No space left on device"):
        files.write_file(path, "new", "results")
    assert path.read_text() == "the old results" and sorted(tmp_path.iterdir()) == [path]
    with pytest.raises(TcloudError, match="exists and is not a regular file"):
        files.output_file("/dev/null", "results")


def test_a_file_error_no_check_named_is_one_line_and_others_are_not_hidden(monkeypatch, capsys):
    import argparse

    from tcloud.runtime import cli

    def failing(error):
        def command(args):
            raise error
        return command

    parser = argparse.ArgumentParser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser.set_defaults(func=failing(PermissionError(13, "Permission denied", "/x/y.json")))
    assert cli.main([]) == 1
    assert capsys.readouterr().err == "tcloud: error: cannot access /x/y.json: Permission denied\n"
    parser.set_defaults(func=failing(ConnectionRefusedError(111, "Connection refused")))
    with pytest.raises(ConnectionRefusedError):
        cli.main([])
