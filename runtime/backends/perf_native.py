"""The ``perf`` backend's compiled event loop (timing-only mode).

:class:`~tcloud.runtime.backends.perf.PerfDevice` with ``data=False`` hands each ``run()`` to
``perf_core.cpp``, a statement-for-statement port of its Python event loop, which stays the reference
(``native=False`` runs it; ``tests/test_perf_native.py`` checks that both give the same state; host
commands change the device's objects in Python and advance their cycles here). For a run the device's state is packed into
a flat buffer of doubles (the activity counters as int64) whose layout, and every constant the core
uses (ISA, fault codes, policies, timing constants, the run's argument, the reports), is generated
here from Python (:func:`layout_header`); the core is compiled with the machine's C++ compiler at first use, as
an extension module of this Python (so it needs its development headers: a call then costs less than
through ctypes, which matters to short runs), and cached under ``~/.cache/tcloud/perf`` keyed by the
digest of its source, that header, the compiler and its version, the flags, the machine and the
Python's headers and extension ABI.

What the core needs of a context's program is decoded in Python by the same code as the reference
(:class:`Program`): the top-level instructions from the context's start PC towards its first ``halt``
or front-end fault (timing-only mode changes no memory, and a program's control flow is
straight-line), with each uTOp's timing (:class:`~tcloud.runtime.backends.perf._Utop`), in chunks
that double: the core stops when a context starts to fetch past them and the run goes on after
Python decodes further. Programs are cached per process by their bytes and window sizes (a uTOp's faults depend on them). A write to
HBM over code a running context's program read sends the device to the Python loop until no context
runs (:meth:`NativeCore.code_written`).

The core runs on a copy of the state in a second buffer, which becomes the state only when it
succeeds, so a failed run leaves the state it started from; its pending events go to a buffer it asks
to grow when they outgrow it. The buffers, the run's argument and the program tables live as long as
the device's core, so a run costs a few stores, one call of the core's module and the re-packing of what Python
changed since the last one; after a run the core also leaves each context's report and each engine's
busy cycles (as ``perf.context_report`` and ``perf.PerfDevice.stats`` compute them), so that reading
them builds the objects and nothing else.
"""

import ctypes
import hashlib
import importlib.util
import math
import os
import platform
import struct
import subprocess
import sysconfig
import tempfile
import threading
import warnings
from array import array
from operator import attrgetter
from pathlib import Path

import numpy as np

from tcloud.isa import ContextStatus, DecodeError, EngineClass, FaultCode, decode
from tcloud.isa.body_faults import no_engine_detail, token_overflow_detail
from tcloud.isa.table import HARVESTED_CLASSES, INSTRUCTION_BYTES, NUM_TOKENS, TOKEN_MAX_COUNT, Policy

from . import perf_timing as timing
from .cache import cache_root
from .device import ContextInfo, DeviceError
from .perf import FAR_FUTURE, FLOW_DONE, FLOW_MIN_WORK, HELD_CLASSES, PerfDevice

SOURCE = Path(__file__).with_name("perf_core.cpp")
SOURCE_TEXT = SOURCE.read_text()
"""The core's source as this module was imported with (a process builds the core that matches its packing
code even if the file changes under it)."""
MODULE = "tcloud_perf_core"
"""The name of the Python extension module the core is built as (``perf_core.cpp`` defines its ``PyInit``)."""
LIBRARY = MODULE + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")

DEVICE_FIELDS = ("now", "sequence", "fetch_free", "fetch_last", "dispatch_last", "dispatched_at", "flows_at",
                 "flows_version", "policy", "quantum", "starvation", "harvest_cost", "harvest_grace", "holder",
                 "slice_end", "me_holder", "ve_holder", "me_since", "ve_since", "utops_dispatched", "latency",
                 "front_latency", "beat_stretch", "limit", "has_limit", "error_context", "error_pc")
CONTEXT_FIELDS = ("status", "state", "pc", "program_pc", "issue_from", "want_from", "decoded_at", "inflight",
                  "last_end", "start", "end", "active_before", "ready_since", "stop_code", "stop_pc", "stop_detail",
                  "epoch", "me_owned", "me_harvested", "ve_owned", "ve_harvested", "dma_cycles", "reclaim_wait",
                  "reclaim_max", "reclaim_since", "instructions", "hbm_bytes_read",
                  "hbm_bytes_written", "macs", "ve_elements", "utops_dma", "utops_me", "utops_ve", "mask_dma",
                  "mask_me", "mask_ve", "priority", "hbm_size", "abandoned", "abandoned_code", "abandoned_pc",
                  "abandoned_detail")
COUNTER_FIELDS = ("instructions", "hbm_bytes_read", "hbm_bytes_written", "macs", "ve_elements", "utops_dma",
                  "utops_me", "utops_ve")
"""The context fields that are int64 in the core (exact past 2^53), held in the doubles' array as their bits."""
ENGINE_FIELDS = ("cls", "slot", "ctx", "start", "end", "busy_total", "owned", "token", "phase", "utop_pc",
                 "fault_code", "fault_pc", "fault_detail", "owner_active", "harvested_until")
REPORT_FIELDS = ("status", "fault", "fault_pc", "detail", "active_cycles", "run_cycles", "me_owned", "me_harvested",
                 "ve_owned", "ve_harvested", "dma_cycles", "reclaim_wait_cycles", "reclaim_max_cycles", *COUNTER_FIELDS)
"""A context's report as the core leaves it after a run (int64: what ``perf.context_report`` makes of
the context's fields; ``detail`` indexes the fault details, :data:`NO_DETAIL` for none)."""
NO_DETAIL = -2
_DEVICE_WIDTH, _CONTEXT_WIDTH, _ENGINE_WIDTH = len(DEVICE_FIELDS), len(CONTEXT_FIELDS) + NUM_TOKENS, len(ENGINE_FIELDS)
"""8-byte words per device, context (its fields, then its tokens) and engine in a state buffer (which then
holds a flow per engine, a report per context (:data:`REPORT_FIELDS`) and each engine's busy cycles)."""
_REPORT_WIDTH = len(REPORT_FIELDS)
UTOP_FIELDS = ("kind", "cls", "length", "signal", "cost", "needs", "phases", "fault_code", "fault_offset",
               "fault_detail", "busy", "instructions", "bytes_read", "bytes_written", "macs", "ve_elements")
"""A uTOp entry of a :class:`Program`: these, then ``needs`` (token, count) pairs, then ``phases``
rows of :data:`PHASE_FIELDS`."""
PHASE_FIELDS = ("before", "after", "transfer")
STATES = ("idle", "fetch", "fetching", "issue", "halt", "fence", "stopping")
"""A context's front-end states (``_Context.state``)."""
EVENTS = ("_on_wake", "_on_fetched", "_on_engine_done", "_on_dma_transfer", "_on_flows", "_on_budget")
EVENT_FIELDS = ("time", "sequence", "kind", "a", "b", "c")
ENTRIES = ("utop", "halt", "fence", "ctrl", "fault", "invalid")
"""Kinds of program entries: a uTOp, ``halt``, ``fence``, another control instruction, a front-end
fault (code, detail), a uTOp the reference refuses with a :class:`DeviceError` (detail)."""
CALL_FIELDS = (("state_in", "const double*"), ("state_out", "double*"), ("context_count", "int64_t"),
               ("engine_count", "int64_t"), ("program_index", "const int32_t* const*"),
               ("program_slots", "const int64_t*"), ("program_data", "const double* const*"),
               ("program_detail_base", "const double*"), ("events_in", "const double*"), ("events_out", "double*"),
               ("event_count", "int64_t"), ("event_capacity", "int64_t"), ("grow", "GrowEvents"),
               ("flow_count", "int64_t"), ("running", "int64_t"))
"""The one argument of a run (``tcloud_perf_run``): 8-byte fields, an ``array("q")`` on the Python side,
kept for the core's life (only the buffers' addresses and the counts change between runs)."""
ERRORS = ("ok", "deadlock", "missing_entry", "invalid_utop", "event_overflow", "too_many_contexts", "need_code")
EVENT_CAPACITY = 1 << 10
"""Rows of pending events a device's output buffer starts with (the core asks for more when it needs it)."""
MAX_CONTEXTS = 1 << 8
"""Contexts the core handles (the ISA's context field allows fewer)."""


_FIXED_DETAILS = []
ENGINE_CLASSES = max(EngineClass) + 1
NO_ENGINE_POLICIES = (Policy.STATIC, Policy.HARVEST)
"""The policies under which a uTOp for a class the context owns no engine of faults (``NO_ENGINE``):
the core's fixed details hold one text per policy and class."""


def fixed_details():
    """Fault details the core can raise itself, in the order of its ``kDetail*`` indices (a new list)."""
    from . import perf

    if _FIXED_DETAILS:
        return list(_FIXED_DETAILS)
    _FIXED_DETAILS[:] = ([perf.TOKEN_DEADLOCK_DETAIL, perf.WATCHDOG_DETAIL]
            + [token_overflow_detail(token) for token in range(NUM_TOKENS)]
            + [no_engine_detail(EngineClass(cls), policy) if cls in [int(c) for c in perf._CLASSES] else ""
               for policy in NO_ENGINE_POLICIES for cls in range(ENGINE_CLASSES)])
    return list(_FIXED_DETAILS)


DETAIL_FETCH_BOUNDS = -1
"""Detail of a fetch-bounds fault, formatted from its PC and the context's window after the run."""


def _camel(name):
    return "".join(part.capitalize() for part in name.split("_"))


def layout_header():
    """The C++ header ``perf_core.cpp`` includes: state layouts and every constant, from Python."""
    lines = ["// Generated by tcloud.runtime.backends.perf_native; do not edit.", "#pragma once", "#include <cstdint>",
             ""]

    def struct(name, fields, extra=()):
        lines.append(f"struct {name} {{")
        lines.extend(f"    {'int64_t' if field in COUNTER_FIELDS else 'double'} {field};" for field in fields)
        lines.extend(f"    {line}" for line in extra)
        lines.append("};")

    lines.append("struct Event {")  # a pending event; a row of EVENT_FIELDS in the buffers
    lines.extend(f"    {'int' if field == 'kind' else 'double'} {field};" for field in EVENT_FIELDS)
    lines.append("};")
    lines.append("inline Event event_from_row(const double* row) {")
    lines.append("    return {" + ", ".join(f"static_cast<int>(row[{i}])" if field == "kind" else f"row[{i}]"
                                         for i, field in enumerate(EVENT_FIELDS)) + "};")
    lines.append("}")
    lines.append("inline void event_to_row(const Event& e, double* row) {")
    lines.extend(f"    row[{i}] = e.{field};" for i, field in enumerate(EVENT_FIELDS))
    lines.append("}")
    struct("Device", DEVICE_FIELDS)
    struct("Context", CONTEXT_FIELDS, [f"double tokens[{NUM_TOKENS}];"])
    struct("Engine", ENGINE_FIELDS)
    lines.append("// A buffer of at least ``rows`` event rows, in place of the one the core was given (nullptr: none).")
    lines.append("typedef double* (*GrowEvents)(int64_t rows);")
    lines.append("struct Call {")
    lines.extend(f"    {kind} {name};" for name, kind in CALL_FIELDS)
    lines.append("};")
    lines.append("struct ContextReport {")
    lines.extend(f"    int64_t {name};" for name in REPORT_FIELDS)
    lines.append("};")
    for name, words in (("Device", _DEVICE_WIDTH), ("Context", _CONTEXT_WIDTH), ("Engine", _ENGINE_WIDTH),
                        ("Call", len(CALL_FIELDS)), ("ContextReport", _REPORT_WIDTH)):
        lines.append(f"static_assert(sizeof({name}) == {8 * words}, \"{name}: 8-byte fields, no padding\");")
    constants = {"InstructionBytes": INSTRUCTION_BYTES, "NumTokens": NUM_TOKENS, "TokenMaxCount": TOKEN_MAX_COUNT,
                 "FetchReady": timing.FETCH_READY, "UtopTail": timing.UTOP_TAIL,
                 "DmaUtopExtra": timing.DMA_UTOP_EXTRA, "DmaUtopExtraHalf": timing.DMA_UTOP_EXTRA // 2,
                 "SharedAccessCycles": timing.SHARED_ACCESS_CYCLES, "FarFuture": FAR_FUTURE,
                 "FlowMinWork": FLOW_MIN_WORK, "FlowDone": FLOW_DONE, "ClassCount": ENGINE_CLASSES,
                 "MaxContexts": MAX_CONTEXTS, "DeviceWords": _DEVICE_WIDTH, "ContextWords": _CONTEXT_WIDTH,
                 "EngineWords": _ENGINE_WIDTH, "NoDetail": NO_DETAIL,
                 "ReportWords": _REPORT_WIDTH, "UtopFixed": len(UTOP_FIELDS), "PhaseFields": len(PHASE_FIELDS), "EventFields": len(EVENT_FIELDS),
                 "DetailTokenDeadlock": 0, "DetailWatchdog": 1, "DetailTokenOverflow": 2,
                 "DetailNoEngineStatic": 2 + NUM_TOKENS, "DetailNoEngineHarvest": 2 + NUM_TOKENS + ENGINE_CLASSES,
                 "DetailFetchBounds": DETAIL_FETCH_BOUNDS,
                 "HarvestedClasses": sum(1 << int(cls) for cls in HARVESTED_CLASSES),
                 "HeldClasses": sum(1 << int(cls) for cls in HELD_CLASSES)}
    for prefix, names in (("Utop", UTOP_FIELDS), ("Phase", PHASE_FIELDS), ("State", STATES),
                          ("Entry", ENTRIES)):
        constants.update({prefix + _camel(name): index for index, name in enumerate(names)})
    constants.update({_camel(name[4:]): index for index, name in enumerate(EVENTS)})
    constants.update({_camel(name): index for index, name in enumerate(ERRORS)})
    constants.update({"Status" + _camel(s.name.lower()): int(s) for s in ContextStatus})
    constants.update({"Policy" + _camel(p.name.lower()): int(p) for p in Policy})
    constants.update({"Class" + _camel(c.name.lower()): int(c) for c in EngineClass})
    constants.update({"Fault" + _camel(f.name.lower()): int(f) for f in FaultCode})
    for name, value in constants.items():
        kind = "double" if isinstance(value, float) else "int64_t" if abs(value) >= 1 << 31 else "int"
        lines.append(f"constexpr {kind} k{name} = {value!r};")
    return "\n".join(lines) + "\n"


class NativeBuildError(DeviceError):
    """The C++ compiler could not build the perf backend's core (the message ends with its output)."""


_LIBRARY = None
_BUILD_ERROR = None
"""The :class:`NativeBuildError` of this process's failed build (it is not tried again)."""
_WARNED = False
_LOCK = threading.Lock()


def library():
    """The compiled core (built into the cache on first use), as a Python extension module whose
    ``run(address)`` runs the event loop on a ``Call`` (:data:`CALL_FIELDS`) and returns its error code.

    A module in the cache that does not load (a truncated file, another machine's) is built again.

    Raises
    ------
    NativeBuildError
        If there is no C++ compiler or it fails, or the cache cannot be written; the process does
        not try again.
    """
    global _LIBRARY, _BUILD_ERROR
    with _LOCK:
        if _BUILD_ERROR is not None:
            raise _BUILD_ERROR
        if _LIBRARY is None:
            try:
                try:
                    _LIBRARY = _load(_build())
                except (OSError, ImportError):  # in the cache but does not load: build it again
                    _LIBRARY = _load(_build(again=True))
            except NativeBuildError as error:
                _BUILD_ERROR = error
                raise
            except (OSError, ImportError) as error:
                _BUILD_ERROR = NativeBuildError(f"cannot build or load the perf backend's core: {error}")
                raise _BUILD_ERROR from None
    return _LIBRARY


def warn_python_loop(error):
    """Warn (once a process) that timing only runs on the Python event loop because of ``error``."""
    global _WARNED
    if not _WARNED:
        _WARNED = True
        warnings.warn(f"perf: timing only runs on the Python event loop (~20-60x slower): {error}",
                      RuntimeWarning, stacklevel=3)


def _compiler_version(compiler):
    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NativeBuildError(f"cannot build the perf backend's core with {compiler!r}: {error}") from None
    return result.stdout


_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off")  # no FMA: doubles as in Python


def _python_headers():
    """The directory of this Python's ``Python.h`` (the core is built as its extension module)."""
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        raise NativeBuildError(f"cannot build the perf backend's core: this Python's development headers are "
                               f"not installed (no Python.h in {include}; on Debian or Ubuntu: python3-dev)")
    return include


def _target(header, compiler):
    """Where the core built from this source and ``header`` by ``compiler`` is cached: keyed by those,
    the compiler's version, the flags, the machine and this Python's headers and extension ABI."""
    digest = hashlib.sha256("\0".join([SOURCE_TEXT, header, compiler, _compiler_version(compiler),
                                       platform.machine(), *_FLAGS, sysconfig.get_paths()["include"],
                                       LIBRARY]).encode()).hexdigest()[:24]
    return cache_root() / "perf" / digest / LIBRARY


def _build(again=False):
    """The path of the core's library in the cache, compiled unless it is there (or ``again``)."""
    header = layout_header()
    source = SOURCE_TEXT
    compiler = os.environ.get("CXX", "c++")
    target = _target(header, compiler)
    if target.exists() and not again:
        return target
    flags = [*_FLAGS, "-I", _python_headers()]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        work = Path(tmp)
        (work / "perf_core_layout.h").write_text(header)
        (work / "perf_core.cpp").write_text(source)
        staged = work / LIBRARY
        try:
            result = subprocess.run([compiler, *flags, "-o", str(staged), str(work / "perf_core.cpp")],
                                    capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise NativeBuildError(f"cannot build the perf backend's core with {compiler!r}: {error}") from None
        if result.returncode != 0:
            raise NativeBuildError(f"{compiler} failed to build the perf backend's core:\n{result.stderr[-4000:]}")
        os.replace(staged, target)
    return target


_GROW_EVENTS = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int64)


def _load(path):
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        raise NativeBuildError("the perf backend's core needs a 64-bit platform")
    spec = importlib.util.spec_from_file_location(MODULE, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _number(value):
    """A double from the core as Python had it: an int when integral (every integral value is exact)."""
    return int(value) if value.is_integer() else value


def _optional(value):
    return None if math.isnan(value) else _number(value)


class Program:
    """The top-level instructions a context can fetch, from its start PC, as the core reads them,
    decoded in chunks: the core stops when a context starts to fetch past :attr:`index` and the device
    decodes further (:meth:`extended`), so a program without ``halt`` costs what it runs.

    Parameters
    ----------
    device : PerfDevice
        The device whose HBM holds the program.
    ctx : perf._Context
        The context whose window and start PC it is.
    previous : Program, optional
        A program of the same context decoded to fewer slots: its entries are kept, and decoding goes
        on from where it stopped.
    until : int, optional
        A PC the program must reach (if it does not end first); it decodes at least :data:`CHUNK`
        instructions, and at least as many as ``previous`` had.

    Attributes
    ----------
    start : int
        PC of the first instruction (the context's start PC).
    size : int
        The context's HBM window size the walk stopped at.
    sram_size : int
        The context's scratchpad window size (its uTOps' faults depend on both).
    snapshot : bytes
        The HBM bytes the walk read (from ``start``): the program is valid while they are unchanged.
    index : numpy.ndarray
        int32 per instruction slot from ``start``: offset of its entry in ``data``, ``-1`` for none.
    data : numpy.ndarray
        float64 entries (:data:`ENTRIES`; a uTOp's layout is :data:`UTOP_FIELDS`).
    details : list of str
        Fault details the entries refer to by index.
    utops : dict
        PC → :class:`~tcloud.runtime.backends.perf._Utop`.
    next_pc : int or None
        Where decoding stopped, ``None`` if the program ends (``halt``, a fault, the window's end).
    """

    def __init__(self, device, ctx, previous=None, until=None):
        from . import perf

        gctx = device.machine.contexts[ctx.index]
        base, size, hbm = gctx.hbm.base, gctx.hbm.size, device.machine.hbm
        self.start, self.size, self.sram_size = ctx.start_pc, size, gctx.sram.size
        if previous is None:
            pc, read_end, index, data, self.details, self.utops = self.start, self.start, [], [], [], {}
        else:
            pc, read_end = previous.next_pc, self.start + len(previous.snapshot)
            index, data = previous.index.tolist(), previous.data.tolist()
            self.details, self.utops = list(previous.details), dict(previous.utops)
        stop_at = max(until or 0, self.start + INSTRUCTION_BYTES * max(CHUNK, 2 * len(index)))

        def add(slot_pc, values):
            index.extend([-1] * ((slot_pc - self.start) // INSTRUCTION_BYTES + 1 - len(index)))
            index[-1] = len(data)
            data.extend(values)

        def detail(text):
            self.details.append(text)
            return len(self.details) - 1

        self.next_pc = None
        while pc + INSTRUCTION_BYTES <= size:
            if pc > stop_at:
                self.next_pc = pc
                break
            word = hbm[base + pc:base + pc + INSTRUCTION_BYTES].tobytes()
            read_end = max(read_end, pc + INSTRUCTION_BYTES)
            try:
                instr = perf._WORDS.get(word)
                if instr is None:
                    instr = perf._WORDS[word] = decode(word)
            except DecodeError as error:
                add(pc, (ENTRIES.index("fault"), int(error.fault), detail(str(error))))
                break
            name = instr.mnemonic
            if name == "utop":
                length = instr["len"]
                key = perf.utop_bytes(hbm, gctx.hbm, pc, length)
                read_end = max(read_end, pc + len(key))
                utop = device._cache.get(key)
                if utop is None:
                    try:
                        utop = device._decode_utop(pc, instr, key)
                    except DeviceError as error:
                        add(pc, (ENTRIES.index("invalid"), detail(str(error))))
                        break
                fault = utop.fault_in(self.sram_size, size)
                if fault is not None and fault[2] is None:
                    fault = (fault[0], fault[1], perf.fetch_bounds_detail(pc + fault[1], size))
                add(pc, self._utop_entry(device, utop, fault, detail))
                self.utops[pc] = utop
                pc += INSTRUCTION_BYTES * (length + 1)
                if fault is not None:
                    break
            elif name in ("halt", "fence"):
                add(pc, (ENTRIES.index(name),))
                if name == "halt":
                    break
                pc += INSTRUCTION_BYTES
            elif instr.engine == EngineClass.HOST:
                add(pc, (ENTRIES.index("fault"), int(FaultCode.PRIVILEGED), detail(perf.privileged_detail(name))))
                break
            elif instr.engine != EngineClass.CTRL:
                add(pc, (ENTRIES.index("fault"), int(FaultCode.WRONG_CLASS), detail(perf.wrong_class_detail(name))))
                break
            else:
                add(pc, (ENTRIES.index("ctrl"),))
                pc += INSTRUCTION_BYTES
        if self.next_pc is not None:  # the slots up to where decoding goes on are known to be no entry
            index.extend([-1] * ((self.next_pc - self.start) // INSTRUCTION_BYTES - len(index)))
        self.snapshot = hbm[base + self.start:base + read_end].tobytes()
        self.index = np.array(index or [-1], dtype=np.int32)
        self.data = np.array(data or [0.0], dtype=np.float64)
        self.index_address, self.data_address = self.index.ctypes.data, self.data.ctypes.data

    def extended(self, device, ctx, pc, bucket):
        """This program decoded on to ``pc`` (a new :class:`Program`: this one may be shared; ``bucket``
        as :func:`program`)."""
        if self.next_pc is None:
            return self
        made = Program(device, ctx, previous=self, until=pc)
        _remember(bucket, device, ctx, made, replacing=self)
        return made

    @staticmethod
    def _utop_entry(device, utop, fault, detail):
        fault = (math.nan, 0, 0) if fault is None else (int(fault[0]), fault[1], detail(fault[2]))
        counters = utop.counters
        values = [ENTRIES.index("utop"), int(utop.cls), utop.length, utop.signal, utop.cost, len(utop.need),
                  len(utop.phases or ()), *fault, math.nan if utop.busy is None else utop.busy,
                  counters["instructions"], counters["hbm_bytes_read"], counters["hbm_bytes_written"],
                  counters["macs"], counters["ve_elements"]]
        for token, count in utop.need:
            values += [token, count]
        for phase in utop.phases or ():
            values += [phase.before, phase.after, timing.transfer_cycles(device.config, device.latency, phase)]
        return values

    def valid(self, device, ctx):
        """Whether the program is still the one ``ctx`` runs: same start PC and window sizes, and the
        bytes it read unchanged (the window's base does not matter: the bytes are read from it)."""
        gctx = device.machine.contexts[ctx.index]
        begin = gctx.hbm.base + self.start
        return (self.start == ctx.start_pc and self.size == gctx.hbm.size and self.sram_size == gctx.sram.size
                and device.machine.hbm[begin:begin + len(self.snapshot)].tobytes() == self.snapshot)

    def nbytes(self):
        """Memory the program holds (its tables and snapshot)."""
        return self.index.nbytes + self.data.nbytes + len(self.snapshot)


CHUNK = 1 << 10
"""Instructions a program decodes at least at a time."""
_PROGRAMS = {}
"""utop cache key (config, latency, jitter) → ``(HBM and scratchpad window sizes, first bytes)`` → programs with those first
bytes (a sweep runs the same programs on many devices). A core looks its bucket up once
(:func:`programs_of`): hashing the config takes microseconds."""
_PROBE_BYTES = 4 * INSTRUCTION_BYTES
_CANDIDATES_LIMIT = 16
"""Programs kept per key (the oldest goes first)."""
_CACHE_BYTES_LIMIT = 512 << 20
"""The cache is emptied when its programs' tables and snapshots pass this size."""
_cached_bytes = 0


def programs_of(device):
    """The bucket of the process's program cache for the device's utop cache key."""
    return _PROGRAMS.setdefault(device._cache_key, {})


def _key(device, ctx):
    gctx = device.machine.contexts[ctx.index]
    begin = gctx.hbm.base + ctx.start_pc
    return gctx.hbm.size, gctx.sram.size, device.machine.hbm[begin:begin + _PROBE_BYTES].tobytes()


def _remember(bucket, device, ctx, made, replacing=None):
    """Keep ``made`` as the context's program and in the process's cache (in place of ``replacing``)."""
    global _cached_bytes
    ctx.native_program = made
    candidates = bucket.setdefault(_key(device, ctx), [])
    if replacing is not None and replacing in candidates:
        candidates.remove(replacing)
        _cached_bytes -= replacing.nbytes()
    if _cached_bytes + made.nbytes() > _CACHE_BYTES_LIMIT:
        for programs in _PROGRAMS.values():  # emptied in place: cores hold their buckets
            programs.clear()
        _cached_bytes = 0
        candidates = bucket.setdefault(_key(device, ctx), [])
    if len(candidates) >= _CANDIDATES_LIMIT:
        _cached_bytes -= candidates.pop(0).nbytes()
    candidates.append(made)
    _cached_bytes += made.nbytes()


def program(device, ctx, bucket):
    """The context's :class:`Program`: its own if still valid, else one from the process's cache
    (``bucket``: :func:`programs_of` the device), else decoded now (its first chunk)."""
    known = ctx.native_program
    if known is not None and known.valid(device, ctx):
        return known
    for candidate in bucket.get(_key(device, ctx), ()):
        if candidate.valid(device, ctx):
            ctx.native_program = candidate
            return candidate
    made = Program(device, ctx)
    _remember(bucket, device, ctx, made)
    return made


_NOW, _LIMIT, _HAS_LIMIT, _ERROR_CONTEXT, _ERROR_PC = (DEVICE_FIELDS.index(name) for name in (
    "now", "limit", "has_limit", "error_context", "error_pc"))
_STATUS = CONTEXT_FIELDS.index("status")
_ENGINE_CTX, _ENGINE_START, _ENGINE_END, _ENGINE_BUSY_TOTAL = (ENGINE_FIELDS.index(name) for name in (
    "ctx", "start", "end", "busy_total"))
_RUNNING = float(ContextStatus.RUNNING)
_STATE_INDEX = {state: index for index, state in enumerate(STATES)}
_CONTEXT_TIMES = attrgetter("pc", "start_pc", "issue_from", "want_from", "decoded_at", "inflight", "last_end", "start")
"""The run of CONTEXT_FIELDS from ``pc`` to ``start`` (``ctx.timing`` is in CONTEXT_FIELDS' order too)."""
_WAKE, _ENGINE_DONE, _FLOWS = (EVENTS.index(name) for name in ("_on_wake", "_on_engine_done", "_on_flows"))
_DETAILS_LIMIT = 10_000
"""Fault details a core may refer to before it packs the device afresh."""
(_STATE_IN, _STATE_OUT, _CONTEXT_COUNT, _ENGINE_COUNT, _PROGRAM_INDEX, _PROGRAM_SLOTS, _PROGRAM_DATA,
 _PROGRAM_DETAIL_BASE, _EVENTS_IN, _EVENTS_OUT, _EVENT_COUNT, _EVENT_CAPACITY, _GROW, _FLOW_COUNT,
 _CALL_RUNNING) = range(len(CALL_FIELDS))  # CALL_FIELDS
assert [name for name, _ in CALL_FIELDS][_CALL_RUNNING] == "running"


_STATUSES = {int(status): status for status in ContextStatus}
_NEW_TUPLE = tuple.__new__
"""Makes a :class:`ContextInfo` from all its fields without the named tuple's ``__new__``, Python code
that a run right after other work (a Verilator run) pays several µs for in cache misses."""
_REPORT_HEAD = struct.Struct("=4q")
"""The first four :data:`REPORT_FIELDS`: status, fault, fault PC, detail."""


def _report_spec():
    """The counters and timing of a context's report as the core's ``view`` builds them from its
    :data:`REPORT_FIELDS` (the shapes of ``perf._empty_counters`` and ``perf.context_report``)."""
    at = REPORT_FIELDS.index
    counters = {"utops": {"dma": at("utops_dma"), "me": at("utops_me"), "ve": at("utops_ve")},
                **{name: at(name) for name in ("instructions", "hbm_bytes_read", "hbm_bytes_written", "macs",
                                               "ve_elements")}}
    timing = {"active_cycles": at("active_cycles"), "run_cycles": at("run_cycles"),
              "engine_cycles": {name: at(name) for name in ("me_owned", "me_harvested", "ve_owned", "ve_harvested",
                                                            "dma_cycles")},
              "reclaim_wait_cycles": at("reclaim_wait_cycles"), "reclaim_max_cycles": at("reclaim_max_cycles")}
    return counters, timing


_REPORT_SPEC = _report_spec()
_DEVICE = struct.Struct("=" + "d" * _DEVICE_WIDTH)
_EVENT = struct.Struct("=" + "d" * len(EVENT_FIELDS))
_DMA, _ME, _VE = EngineClass.DMA, EngineClass.ME, EngineClass.VE
_DEVICE_HEAD = attrgetter("now", "_sequence", "_fetch_free", "_fetch_last", "_dispatch_last", "_dispatched_at",
                          "_flows_at", "_flows_version", "policy", "quantum", "starvation", "harvest_cost",
                          "harvest_grace", "_holder", "_slice_end")
"""DEVICE_FIELDS up to ``slice_end`` (then the holders and their times, then :data:`_DEVICE_TAIL`)."""
_DEVICE_TAIL = attrgetter("_utops_dispatched", "latency", "front_latency", "beat_stretch")
_CONTEXT = struct.Struct("=" + "".join("q" if name in COUNTER_FIELDS else "d" for name in CONTEXT_FIELDS)
                         + "d" * NUM_TOKENS)


_COUNTERS_AT = CONTEXT_FIELDS.index(COUNTER_FIELDS[0])
assert CONTEXT_FIELDS[_COUNTERS_AT:_COUNTERS_AT + len(COUNTER_FIELDS)] == COUNTER_FIELDS  # one run of int64s
_COUNTERS = struct.Struct(f"{len(COUNTER_FIELDS)}q")


def _doubles(count):
    """A zeroed ``array("d")`` of ``count`` values."""
    return array("d", bytes(8 * count))


def _counters_dict(instructions, read, written, macs, elements, dma, me, ve):  # COUNTER_FIELDS
    """Counters as ``PerfDevice`` keeps them."""
    return {"utops": {"dma": dma, "me": me, "ve": ve}, "instructions": instructions, "hbm_bytes_read": read,
            "hbm_bytes_written": written, "macs": macs, "ve_elements": elements}


def _counters(state, at):
    """The counters of the context whose row starts at double ``at`` of ``state``."""
    return _counters_dict(*_COUNTERS.unpack_from(state, 8 * (at + _COUNTERS_AT)))


class NativeCore:
    """Runs a :class:`~tcloud.runtime.backends.perf.PerfDevice`'s event loop in the compiled core.

    The core keeps two state buffers (the device, its contexts, its engines and its flows as
    :data:`perf_core_layout.h <layout_header>` lays them out) and two event buffers, all allocated once:
    a run reads one pair and writes the other, which becomes the state only when the run succeeds
    (:attr:`current`). The run's one argument, a ``Call`` (:data:`CALL_FIELDS`), and the tables of the
    contexts' programs are kept too, so that a run costs a few stores and one call of the core.

    Between :meth:`run_to` calls the state stays in the buffers (:attr:`holds_state`); the device calls
    :meth:`sync` before it reads or changes its Python state, and reports come from the buffers
    (:meth:`report`, :meth:`stats`). After a sync the buffers still equal the device's objects, so the
    next run re-packs only what the device changed since: its scalars, events and flows always, the
    contexts it names with :meth:`touch` (and their programs), and the engines if its count of engine
    changes moved. The whole device is packed when the core is made."""

    def __init__(self, device):
        self.device = device
        self.run_call = library().run
        contexts, engines = len(device.contexts), len(device.engines)
        self.contexts_at = _DEVICE_WIDTH
        self.engines_at = _DEVICE_WIDTH + _CONTEXT_WIDTH * contexts
        self.flows_at = self.engines_at + _ENGINE_WIDTH * engines
        self.reports_at = self.flows_at + 2 * engines
        self.busy_at = self.reports_at + _REPORT_WIDTH * contexts
        self.states = [_doubles(self.busy_at + engines) for _ in range(2)]
        self.state_addresses = [state.buffer_info()[0] for state in self.states]
        self.view = library().view
        self.busy_spec = {engine.name: index for index, engine in enumerate(device.engines)}
        self.event_buffers = [_doubles(EVENT_CAPACITY * len(EVENT_FIELDS)) for _ in range(2)]
        self.current = 0
        """Which of :attr:`states` and :attr:`event_buffers` hold the state (the other is the next run's output)."""
        self.event_count = self.flow_count = 0
        self.program_tables = (array("Q", bytes(8 * contexts)), array("q", bytes(8 * contexts)),
                               array("Q", bytes(8 * contexts)), array("d", bytes(8 * contexts)))
        self.programs = [None] * contexts
        """Per context ``(Program, index of its first detail in details)``, or ``None`` if it does not run."""
        self.calls = [array("q", bytes(8 * len(CALL_FIELDS))) for _ in range(2)]
        """The run's argument per :attr:`current`: ``calls[i]`` reads ``states[i]`` and writes the other."""
        self.call_addresses = [call.buffer_info()[0] for call in self.calls]
        tables = [table.buffer_info()[0] for table in self.program_tables]
        for current, call in enumerate(self.calls):
            call[_STATE_IN], call[_STATE_OUT] = (self.states[i].buffer_info()[0] for i in (current, 1 - current))
            call[_CONTEXT_COUNT], call[_ENGINE_COUNT] = contexts, engines
            call[_PROGRAM_INDEX], call[_PROGRAM_SLOTS], call[_PROGRAM_DATA], call[_PROGRAM_DETAIL_BASE] = tables
        self._events_changed()
        self.set_grow_events(_GROW_EVENTS(self._grow_events))
        self.bucket = programs_of(device)
        self.kinds = {name: index for index, name in enumerate(EVENTS)}
        self.holds_state = False
        """Whether the core's buffers, not the device's objects, hold the current state."""
        self.reported = False
        """Whether the buffers hold the reports of their state (they came from a run)."""
        self.is_running = False
        """Whether a context runs, when the buffers hold the state."""
        self._pack_afresh()
        self.holds_state = False  # the buffers equal the objects, as after a sync: a host command next goes to them

    def set_grow_events(self, callback):
        """The callback the core calls when its pending events outgrow its output buffer (kept: the
        core calls it)."""
        self.grow_events = callback
        for call in self.calls:
            call[_GROW] = ctypes.cast(callback, ctypes.c_void_p).value

    def _events_changed(self):
        """Point the runs at the current event buffers."""
        for current, call in enumerate(self.calls):
            events_in, events_out = self.event_buffers[current], self.event_buffers[1 - current]
            call[_EVENTS_IN], call[_EVENTS_OUT] = events_in.buffer_info()[0], events_out.buffer_info()[0]
            call[_EVENT_CAPACITY] = len(events_out) // len(EVENT_FIELDS)

    def _grow_events(self, rows):
        """The core's callback when its pending events outgrow its output buffer: a buffer for ``rows``
        (at least twice the old one), its address (``None`` if there is no memory for it)."""
        output = 1 - self.current
        old = self.event_buffers[output]
        try:
            self.event_buffers[output] = _doubles(max(rows, 2 * len(old) // len(EVENT_FIELDS)) * len(EVENT_FIELDS))
        except MemoryError:
            return None
        self._events_changed()
        return self.event_buffers[output].buffer_info()[0]

    def touch(self, *indices):
        """The device changed these contexts (or their golden contexts) since the last sync (its
        engines' changes it counts in ``_engine_changes``)."""
        self.touched.update(indices)

    def now(self):
        return _number(self.states[self.current][_NOW]) if self.holds_state else self.device.now

    def running(self):
        """Whether a context runs."""
        return self.is_running if self.holds_state else bool(self.device._running)

    def code_written(self, address, size):
        """Whether HBM bytes ``address .. address + size`` hold code a running context's decoded program
        read (the core would run it as it was)."""
        if self.holds_state:
            statuses = self.states[self.current][self.contexts_at + _STATUS:self.engines_at:_CONTEXT_WIDTH]
            running = [index for index, status in enumerate(statuses) if status == _RUNNING]
        else:
            running = [ctx.index for ctx in self.device._running]
        for index in running:
            made = self.device.contexts[index].native_program
            if made is not None:
                begin = self.device.machine.contexts[index].hbm.base + made.start
                if address < begin + len(made.snapshot) and begin < address + size:
                    return True
        return False

    def run_to(self, limit):
        """``PerfDevice._advance(limit)`` in the core (``None``: until no context runs); the state stays
        in the core. The core writes the other buffers, which become the state only when it succeeds:
        after an error the state is the one before the core's last call (a run that stopped to decode
        more of a program and failed after that keeps the consistent state it had reached)."""
        if not self.holds_state:
            if not self.device._running:
                return
            self._pack()
        elif not self.is_running:
            return
        state = self.states[self.current]
        state[_LIMIT] = 0 if limit is None else limit
        state[_HAS_LIMIT] = limit is not None
        while True:
            current = self.current
            call = self.calls[current]
            call[_EVENT_COUNT], call[_FLOW_COUNT] = self.event_count, self.flow_count
            error = ERRORS[self.run_call(self.call_addresses[current])]
            if error == "event_overflow":
                raise DeviceError(f"perf model: no memory for {call[_EVENT_COUNT]} pending events")
            if error != "ok" and error != "need_code":
                self._raise(error, self.states[1 - current])
            self.current, self.event_count, self.flow_count = 1 - current, call[_EVENT_COUNT], call[_FLOW_COUNT]
            self.is_running = call[_CALL_RUNNING] != 0
            self.reported = True
            if error == "ok":
                return
            dev = self.states[self.current]
            self._decode_further(int(dev[_ERROR_CONTEXT]), int(dev[_ERROR_PC]))

    def _decode_further(self, index, pc):
        """The core stopped for a context fetching ``pc`` past its program's decoded slots."""
        made, _ = self.programs[index]
        longer = made.extended(self.device, self.device.contexts[index], pc, self.bucket)
        if longer is made:
            raise DeviceError(f"perf model: context {index} fetched {pc:#x}, which its decoded program lacks; "
                              "please report it")
        self._set_program(index, longer)

    def _set_program(self, index, made):
        """Context ``index`` runs ``made`` (``None``: it does not run)."""
        index_pointers, slots, data_pointers, bases = self.program_tables
        if made is None:
            self.programs[index] = None
            index_pointers[index] = slots[index] = data_pointers[index] = 0
            bases[index] = 0
            return
        self.programs[index] = (made, len(self.details))
        index_pointers[index], slots[index], data_pointers[index] = made.index_address, len(made.index), made.data_address
        bases[index] = len(self.details)
        self.details += made.details

    def sync(self):
        """Move the state from the core's buffers back to the device's objects."""
        if not self.holds_state:
            return
        state = self.states[self.current]
        self._unpack_device(state)
        for ctx in self.device.contexts:
            self._unpack_context(state, ctx)
        self.device._running = [ctx for ctx in self.device.contexts if ctx.status == ContextStatus.RUNNING]
        self._unpack_engines(state)
        self._unpack_events(state)
        self.holds_state = self.reported = False
        self.touched = set()
        self.engine_changes = self.device._engine_changes

    def report(self, index):
        """``PerfDevice.context(index)`` from the report the core left (``None`` if the state did not come
        from a run: the device then syncs and reports from its objects)."""
        if not self.reported:
            return None
        offset = 8 * (self.reports_at + index * _REPORT_WIDTH)
        status, fault, fault_pc, detail = _REPORT_HEAD.unpack_from(self.states[self.current], offset)
        counters, timing = self.view(_REPORT_SPEC, self.state_addresses[self.current] + offset)
        if fault:
            fault, detail = FaultCode(fault), self._detail(detail, fault_pc, self.device.contexts[index])
        else:
            fault, detail = FaultCode.NONE, ""
        return _NEW_TUPLE(ContextInfo, (_STATUSES[status], fault, fault_pc, detail, counters, timing))

    def stats(self):
        """``PerfDevice.stats()`` from the report the core left (``None``, as :meth:`report`)."""
        if not self.reported:
            return None
        return {"backend": PerfDevice.name, "cycles": int(self.states[self.current][_NOW]),
                "engine_busy_cycles": self.view(self.busy_spec, self.state_addresses[self.current] + 8 * self.busy_at)}

    # --- the device's objects to the buffers --------------------------------------------------------

    def _pack_afresh(self):
        """Pack the whole device into the current buffers (fault details from scratch)."""
        self.details = fixed_details()
        self.detail_of = {}
        self.touched = set(range(len(self.device.contexts)))
        self.engine_changes = None
        self._pack()

    def _pack(self):
        """Pack into the current buffers what the device changed since the last sync (see the class)."""
        device = self.device
        if len(self.details) > _DETAILS_LIMIT:
            self._pack_afresh()
            return
        state = self.states[self.current]
        holder, since = device._class_holder, device._class_since
        _DEVICE.pack_into(state, 0, *_DEVICE_HEAD(device), holder[_ME], holder[_VE], since[_ME], since[_VE],  # DEVICE_FIELDS
                          *_DEVICE_TAIL(device), 0, 0, -1, -1)
        if self.touched:
            contexts, machine = device.contexts, device.machine.contexts
            for index in self.touched:
                ctx = contexts[index]
                self._set_program(index, program(device, ctx, self.bucket) if ctx.status == ContextStatus.RUNNING else None)
                self._pack_context(state, ctx, machine[index])
            self.touched = set()
        if device._engine_changes != self.engine_changes:
            state[self.engines_at:self.flows_at] = array(
                "d", [value for engine in device.engines for value in self._pack_engine(engine)])
            self.engine_changes = device._engine_changes
        if device._events:
            self._pack_events()
        else:
            self.event_count = 0
        flows = device._flows
        self.flow_count = len(flows)
        if flows:
            state[self.flows_at:self.flows_at + 2 * len(flows)] = array(
                "d", [value for index, left in flows.items() for value in (index, left)])
        self.is_running = bool(device._running)
        self.holds_state = True
        self.reported = False

    def _pack_events(self):
        events = self.device._events
        buffers, kinds, pack = self.event_buffers, self.kinds, _EVENT.pack_into
        if len(events) * len(EVENT_FIELDS) > len(buffers[self.current]):
            buffers[self.current] = _doubles(2 * len(events) * len(EVENT_FIELDS))
            self._events_changed()
        buffer = buffers[self.current]
        for offset, (time, sequence, handler, payload) in enumerate(events):
            kind = kinds[handler.__name__]
            if payload is None:
                pack(buffer, _EVENT.size * offset, time, sequence, kind, 0, 0, 0)
            elif isinstance(payload, tuple):
                pack(buffer, _EVENT.size * offset, time, sequence, kind, *payload, *(0,) * (3 - len(payload)))
            else:
                pack(buffer, _EVENT.size * offset, time, sequence, kind, payload, 0, 0)
        self.event_count = len(events)

    def _detail_index(self, text):
        """The index of a fault detail in :attr:`details` (appended if new)."""
        index = self.detail_of.get(text)
        if index is None:
            index = self.detail_of[text] = len(self.details)
            self.details.append(text)
        return index

    def _pack_context(self, state, ctx, gctx):
        nan = math.nan
        stop = ctx.stop
        stop_code, stop_pc, stop_detail = (nan, 0, 0) if stop is None else (
            stop[0], stop[1], self._detail_index(stop[2]))
        counters, masks = ctx.counters, ctx.masks
        utops = counters["utops"]
        _CONTEXT.pack_into(  # CONTEXT_FIELDS, then the tokens
            state, 8 * (self.contexts_at + ctx.index * _CONTEXT_WIDTH), ctx.status, _STATE_INDEX[ctx.state],
            *_CONTEXT_TIMES(ctx), nan if ctx.end is None else ctx.end, ctx.active_before,
            nan if ctx.ready_since is None else ctx.ready_since, stop_code, stop_pc, stop_detail, ctx.epoch,
            *ctx.timing.values(), ctx.reclaim_wait, ctx.reclaim_max,
            nan if ctx.reclaim_since is None else ctx.reclaim_since,
            counters["instructions"], counters["hbm_bytes_read"], counters["hbm_bytes_written"], counters["macs"],
            counters["ve_elements"], utops["dma"], utops["me"], utops["ve"],  # COUNTER_FIELDS
            masks.get(_DMA, 0), masks.get(_ME, 0), masks.get(_VE, 0),
            gctx.priority, gctx.hbm.size, 0, nan, 0, 0, *ctx.tokens)

    def _pack_engine(self, engine):
        fault_code, fault_pc, fault_detail, utop_pc = math.nan, 0, 0, 0
        if engine.utop is not None:
            _, utop_pc, fault = engine.utop
            if fault is not None:
                fault_code, fault_pc, fault_detail = int(fault[0]), fault[1], self._detail_index(fault[2])
        return (  # ENGINE_FIELDS
                int(engine.cls), engine.slot, math.nan if engine.ctx is None else engine.ctx.index, engine.start,
                engine.end, engine.busy_total, engine.owned, engine.token, engine.phase, utop_pc, fault_code,
                fault_pc, fault_detail, engine.owner_active, engine.harvested_until)

    # --- the buffers to the device's objects --------------------------------------------------------

    def _detail(self, index, pc, ctx):
        if index == DETAIL_FETCH_BOUNDS:
            from . import perf
            return perf.fetch_bounds_detail(int(pc), self.device.machine.contexts[ctx.index].hbm.size)
        return self.details[int(index)]

    def _unpack_device(self, state):
        device = self.device
        d = dict(zip(DEVICE_FIELDS, state[:_DEVICE_WIDTH].tolist()))
        device.now = _number(d["now"])
        device._sequence = int(d["sequence"])
        device._fetch_free = _number(d["fetch_free"])
        device._fetch_last = int(d["fetch_last"])
        device._dispatch_last = int(d["dispatch_last"])
        device._dispatched_at = _number(d["dispatched_at"])
        device._flows_at = _number(d["flows_at"])
        device._flows_version = int(d["flows_version"])
        device._holder = int(d["holder"])
        device._slice_end = _number(d["slice_end"])
        device._class_holder = {EngineClass.ME: int(d["me_holder"]), EngineClass.VE: int(d["ve_holder"])}
        device._class_since = {EngineClass.ME: _number(d["me_since"]), EngineClass.VE: _number(d["ve_since"])}
        device._utops_dispatched = int(d["utops_dispatched"])

    def _unpack_context(self, state, ctx):
        device = self.device
        at = self.contexts_at + ctx.index * _CONTEXT_WIDTH
        row = state[at:at + _CONTEXT_WIDTH].tolist()
        (status, state_index, pc, _, issue_from, want_from, decoded_at, inflight, last_end, start, end, active_before,
         ready_since, stop_code, stop_pc, stop_detail, epoch, me_owned, me_harvested, ve_owned, ve_harvested,
         dma_cycles, reclaim_wait, reclaim_max, reclaim_since, _, _, _, _, _, _, _, _, _, _, _, _, _, abandoned,
         abandoned_code, abandoned_pc, abandoned_detail) = row[:len(CONTEXT_FIELDS)]  # CONTEXT_FIELDS
        status = ContextStatus(int(status))
        finished = ctx.status == ContextStatus.RUNNING and status != ContextStatus.RUNNING
        ctx.status, ctx.state, ctx.pc, ctx.inflight, ctx.epoch = (
            status, STATES[int(state_index)], int(pc), int(inflight), int(epoch))
        ctx.issue_from, ctx.want_from, ctx.decoded_at = _number(issue_from), _number(want_from), _number(decoded_at)
        ctx.last_end, ctx.start, ctx.active_before = _number(last_end), _number(start), _number(active_before)
        ctx.reclaim_wait, ctx.reclaim_max = _number(reclaim_wait), _number(reclaim_max)
        ctx.end, ctx.ready_since = _optional(end), _optional(ready_since)
        ctx.stop = None if math.isnan(stop_code) else (
            FaultCode(int(stop_code)), int(stop_pc), self._detail(stop_detail, stop_pc, ctx))
        ctx.reclaim_since = _optional(reclaim_since)
        ctx.timing = {"me_owned": _number(me_owned), "me_harvested": _number(me_harvested),
                      "ve_owned": _number(ve_owned), "ve_harvested": _number(ve_harvested),
                      "dma_cycles": _number(dma_cycles)}
        ctx.counters = _counters(state, at)
        ctx.tokens = [int(token) for token in row[len(CONTEXT_FIELDS):]]
        made = self.programs[ctx.index]
        ctx.head = made[0].utops.get(ctx.pc) if ctx.state == "issue" and made else None
        gctx = device.machine.contexts[ctx.index]
        if abandoned:
            gctx.status, gctx.fault, gctx.fault_pc, gctx.fault_detail = (
                ContextStatus.FAULTED, FaultCode(int(abandoned_code)), int(abandoned_pc),
                self._detail(abandoned_detail, abandoned_pc, ctx))
        if finished:
            if status == ContextStatus.DONE:
                gctx.status = ContextStatus.DONE
            else:
                code, fault_pc, detail = ctx.stop
                gctx.status, gctx.fault, gctx.fault_pc, gctx.fault_detail = ContextStatus.FAULTED, code, fault_pc, detail

    def _unpack_engines(self, state):
        device = self.device
        flat = state[self.engines_at:self.flows_at].tolist()
        for engine in device.engines:
            (_, _, ctx_index, start, end, busy_total, owned, token, phase, utop_pc, fault_code, fault_pc, fault_detail,
             owner_active, harvested_until) = flat[engine.index * _ENGINE_WIDTH:(engine.index + 1) * _ENGINE_WIDTH]  # ENGINE_FIELDS
            engine.start, engine.end, engine.busy_total = _number(start), _number(end), _number(busy_total)
            engine.owner_active, engine.harvested_until = _number(owner_active), _number(harvested_until)
            engine.owned, engine.token, engine.phase = bool(owned), int(token), int(phase)
            if math.isnan(ctx_index):
                engine.ctx = engine.utop = None
            else:
                ctx = device.contexts[int(ctx_index)]
                pc = int(utop_pc)
                fault = None if math.isnan(fault_code) else (
                    FaultCode(int(fault_code)), int(fault_pc), self._detail(fault_detail, fault_pc, ctx))
                engine.ctx, engine.utop = ctx, (self.programs[ctx.index][0].utops[pc], pc, fault)

    def _unpack_events(self, state):
        device = self.device
        handlers = [device._handlers[name] for name in EVENTS]
        rows = self.event_buffers[self.current][:self.event_count * len(EVENT_FIELDS)].tolist()
        events = []
        for i in range(0, len(rows), len(EVENT_FIELDS)):
            time, sequence, kind, a, b, c = rows[i:i + len(EVENT_FIELDS)]
            kind = int(kind)
            payload = (None if kind == _WAKE else int(a) if kind == _FLOWS
                       else (int(a), int(b), bool(c)) if kind == _ENGINE_DONE else (int(a), int(b)))
            events.append((_number(time), int(sequence), handlers[kind], payload))
        events.sort(key=lambda event: (event[0], event[1]))  # a sorted list is a heap
        device._events = events
        items = state[self.flows_at:self.flows_at + 2 * self.flow_count].tolist()
        device._flows = {int(items[i]): _number(items[i + 1]) for i in range(0, len(items), 2)}

    def _raise(self, error, dev):
        d = dict(zip(DEVICE_FIELDS, dev[:_DEVICE_WIDTH].tolist()))
        index, pc = int(d["error_context"]), int(d["error_pc"])
        if error == "deadlock":
            raise DeviceError("perf model deadlock: contexts are running but no event is pending "
                              f"(at cycle {self.device.now}); please report it")
        if error == "invalid_utop":
            made = self.programs[index][0]
            entry = made.data[made.index[(pc - made.start) // INSTRUCTION_BYTES]:]
            raise DeviceError(made.details[int(entry[1])])
        if error == "too_many_contexts":
            raise DeviceError(f"perf model: the compiled core handles at most {MAX_CONTEXTS} contexts")
        raise DeviceError(f"perf model: context {index} fetched {pc:#x}, which its decoded program lacks; "
                          "please report it")
