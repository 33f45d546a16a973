"""Service times: latency(model, batch, vNPU shape, co-tenant policy), measured once and cached.

Each entry compiles the zoo model for the pNPU configuration at that batch size with the shape's
scratchpad window, creates a vNPU of that :class:`~tcloud.runtime.hypervisor.VNPUSpec` on a
:class:`~tcloud.runtime.hypervisor.Hypervisor` running the co-tenant scheduling policy on a timed
backend, fills the rest of the pNPU with busy vNPUs of the same shape running the same model (the
cluster packs a model's replicas together; they share the pNPU's HBM bandwidth and DMA engines),
runs the model once and reads the context's active cycles: the hypervisor's own semantics, so a
shape the allocator refuses is refused here too. Entries run as Ray tasks in parallel; the table
is a JSON file keyed by everything it depends on; other batch sizes are interpolated linearly
between the measured ones.

The table also records, per model and shape, the bytes a new replica must write into its vNPU's
HBM before it serves (:func:`image_load_bytes` of the model compiled at the table's largest batch):
the cluster simulator charges a new replica the time to move them over the host link. And it
records how much slower each model runs next to a busy vNPU of each other model than its entries
say (:func:`measure_neighbour_slowdowns`), which the simulator charges a replica whose pNPU holds
another model.

The backend defaults to ``perf`` (the performance model, the only one that can time ``tpu_like``)
when the runtime has it, else ``verilator``: :data:`DEFAULT_BACKEND`.
"""

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tcloud.isa import get_config
from tcloud.isa.errors import TcloudError
from tcloud.runtime.backends import TIMED_BACKENDS
from tcloud.runtime.files import read_text, unique_pairs, write_file

from .workload import ClusterError, default_models

DEFAULT_BACKEND = "perf" if "perf" in TIMED_BACKENDS else "verilator"
DEFAULT_BATCHES = (1, 2, 4, 8, 16)
BATCHES = {"tpu_like": (1, 2, 4, 8, 16, 32)}
"""Configuration → batch sizes measured when not :data:`DEFAULT_BATCHES` (:func:`default_batches`)."""
DEFAULT_POLICIES = ("static",)
NEIGHBOURS = "same-model"
"""How the tables are measured (:func:`measure`): next to busy vNPUs of the same shape and model
(recorded in each table as ``neighbours``; ``"none"``: alone on the pNPU, as the tables before it)."""
NEIGHBOUR_RUNS = 3
"""Back-to-back runs of each neighbour: they start with the measured run and, being as long, outlast it."""
SHIPPED = Path(__file__).with_name("data")
"""Committed tables (``service-<config>-<backend>.json``), made by ``tcloud cluster table``."""


@dataclass(frozen=True, order=True)
class Shape:
    """A vNPU shape: engines and windows of a :class:`~tcloud.runtime.hypervisor.VNPUSpec`.

    ``label`` is ``m<MEs>v<VEs>``."""

    mes: int
    ves: int
    sram_kib: int
    hbm_mib: int

    @property
    def label(self):
        return f"m{self.mes}v{self.ves}"

    def spec(self):
        from tcloud.runtime.hypervisor import VNPUSpec

        return VNPUSpec(mes=self.mes, ves=self.ves, sram_kib=self.sram_kib, hbm_mib=self.hbm_mib)


def standard_shapes(config):
    """The shapes sold on ``config``: (1 ME, 1 VE), (2, 1) and the whole pNPU, each with the
    scratchpad and HBM share of its MEs. Every one fits an empty pNPU (checked by the allocator)."""
    cfg = get_config(config)
    out = []
    for mes, ves in ((1, 1), (2, 1), (cfg.me_count, cfg.ve_count)):
        mes, ves = min(mes, cfg.me_count), min(ves, cfg.ve_count)
        shape = Shape(mes, ves, cfg.sram_kib * mes // cfg.me_count, cfg.hbm_mib * mes // cfg.me_count)
        if shape not in out:
            out.append(shape)
    from .placement import check_fits

    for shape in out:
        check_fits(cfg, shape)
    return tuple(out)


def default_batches(config):
    """The batch sizes a table of ``config`` measures by default."""
    return BATCHES.get(config, DEFAULT_BATCHES)


def measure(model, config, batch, shape, policy="static", backend=DEFAULT_BACKEND, seed=0, timing_only=False,
            neighbours=True):
    """Cycles of one batch of ``model`` on a vNPU of ``shape`` on a pNPU of ``config``, next to busy
    neighbours.

    With ``neighbours`` (:data:`NEIGHBOURS`), every vNPU of ``shape`` that still fits the pNPU runs
    the same model at the same batch, :data:`NEIGHBOUR_RUNS` runs back to back, all starting on the
    measured run's cycle: the cluster packs a model's replicas together (:meth:`.placement.Cluster.place`
    fills pNPUs first-fit in the plan's model order), and at the loads that matter they are busy. The
    neighbours share the pNPU's HBM bandwidth and DMA engines, which slows memory-bound models by up to
    1.5 × on ``tpu_like`` (ResNet-50 at batch 4 on ``m2v1``). A shape that fills the pNPU has none.

    Parameters
    ----------
    model : ModelSpec
    config : str
    batch : int
    shape : Shape
    policy : str
        The pNPU's scheduling policy (what co-tenants may take from or lend to the vNPU).
    backend : str
        A timed backend.
    seed : int
        Seed of the random inputs.
    timing_only : bool
        On ``perf``: compute no data (``data=False``), which makes TPU-scale models cheap.
    neighbours : bool
        Fill the rest of the pNPU with busy vNPUs of the same shape and model (``False``: alone).

    Returns
    -------
    int
        Active cycles of the context for the run.

    Raises
    ------
    ClusterError
        The compiled model does not fit the shape's HBM window.
    """
    return _measure(model, config, batch, shape, policy, backend, seed, timing_only, neighbours)[0]


def _measure(model, config, batch, shape, policy, backend, seed, timing_only, neighbours):
    """:func:`measure`'s cycles and :func:`image_load_bytes` of the image it ran."""
    compiled = compile_for(model, config, batch, shape)
    neighbour = compiled if neighbours else None
    cycles = run_next_to(compiled, neighbour, config, shape, policy, backend, seed, timing_only)[0]
    return cycles, image_load_bytes(compiled.image)


def image_load_bytes(image):
    """Bytes the loader writes into a vNPU's HBM for ``image``: its code and initialised data
    segments (weights and constants); the rest of its window is not written."""
    return len(image.code) + sum(len(segment.data) for segment in image.segments)


def compile_for(model, config, batch, shape):
    """``model`` compiled at ``batch`` for a vNPU of ``shape`` (:class:`ClusterError` if it does not fit
    the shape's HBM window)."""
    from tcloud.runtime.compiler import compile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random calibration samples: the timing does not depend on them
        compiled = compile(model.build(), config, batch=batch, sram_kib=shape.sram_kib)
    need = -(-compiled.image.hbm_bytes // (1 << 20))
    if need > shape.hbm_mib:
        raise ClusterError(f"model {model.name!r} at batch {batch} needs {need} MiB of HBM; shape {shape.label} has "
                           f"{shape.hbm_mib} MiB")
    return compiled


def run_next_to(compiled, neighbour, config, shape, policy="static", backend=DEFAULT_BACKEND, seed=0,
                timing_only=False, runs=NEIGHBOUR_RUNS):
    """Run ``compiled`` once on a vNPU of ``shape`` while every further vNPU of ``shape`` that fits the
    pNPU runs ``neighbour`` (a compiled model, or ``None``: alone) ``runs`` times back to back, all
    starting on the same cycle. A neighbour shorter than the measured run needs more runs than
    :data:`NEIGHBOUR_RUNS` to stay busy (about the ratio of their cycles alone, times that).

    Returns
    -------
    tuple of int
        Active cycles of the measured context, and the number of neighbours.

    Raises
    ------
    ClusterError
        A neighbour ran out of runs before the measured run ended (it was idle for part of it).
    """
    from tcloud.runtime.hypervisor import Hypervisor

    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ClusterError(f"a neighbour needs at least one run, got runs={runs!r}")
    options = {"hbm_timing": {"data": False}} if timing_only else {}
    if timing_only and backend != "perf":
        raise ClusterError(f"timing-only measurement needs the perf backend, not {backend!r}")
    with Hypervisor(config, backend=backend, policy=policy, **options) as hypervisor:
        vnpu = hypervisor.create_vnpu(shape.spec(), name="measured")
        vnpu.load(compiled.image)
        others = _fill(hypervisor, shape) if neighbour is not None else []
        for other in others:
            other.load(neighbour.image)
        with hypervisor.start_together():
            last = []
            for other in others:
                rows = neighbour.device_inputs(neighbour.random_inputs(seed + 1 + other.context))
                last.append([other.submit(rows) for _ in range(runs)][-1])
            measured = vnpu.submit(compiled.device_inputs(compiled.random_inputs(seed)))
        measured.result()
        end = vnpu.runs[-1].finish_cycle  # runs seen to stop in the same driver step share it
        if any(future.done() and other.runs[-1].finish_cycle < end for other, future in zip(others, last)):
            raise ClusterError(f"a neighbour finished its {runs} runs before the measured run ended; give it more")
        return vnpu.usage().active_cycles, len(others)


def _fill(hypervisor, shape):
    """Every further vNPU of ``shape`` the pNPU can host."""
    from tcloud.runtime.hypervisor import AllocationError

    out = []
    while True:
        try:
            out.append(hypervisor.create_vnpu(shape.spec(), name=f"neighbour{len(out)}"))
        except AllocationError:
            return out


def _measure_task(model, config, batch, shape, policy, backend, timing_only, neighbours):
    return _measure(model, config, batch, shape, policy, backend, 0, timing_only, neighbours)


def _compiled_load_bytes(model, config, batch, shape):
    return image_load_bytes(compile_for(model, config, batch, shape).image)


class ServiceTable:
    """Measured batch latencies, interpolated over batch size.

    Parameters
    ----------
    config : str
    backend : str
    entries : dict
        ``(model, shape label, policy, batch) -> cycles``.
    shapes : sequence of Shape
    clock_mhz : float
    models : sequence of ModelSpec
    timing_only : bool
        Measured without computing data (``perf`` with ``data=False``).
    build_seconds : float, optional
        Wall seconds the build took (recorded in the file).
    neighbours : str
        How entries were measured: :data:`NEIGHBOURS` (next to busy same-model vNPUs) or ``"none"``
        (alone on the pNPU; files that do not say).
    load_bytes : dict, optional
        ``(model, shape label) -> bytes`` a new replica loads (:func:`image_load_bytes` at the
        largest batch); tables made before it have none (:func:`fill_load_bytes` adds them).
    neighbour_slowdown : dict, optional
        ``(model, neighbour model) -> factor`` over the entries of ``model`` when its pNPU's other
        vNPUs run the neighbour model (:func:`measure_neighbour_slowdowns`; pairs of one model are 1).
    """

    def __init__(self, config, backend, entries, shapes, clock_mhz, models=(), timing_only=False,
                 build_seconds=None, neighbours=NEIGHBOURS, load_bytes=None, neighbour_slowdown=None):
        self.config, self.backend, self.entries = config, backend, dict(entries)
        self.shapes, self.clock_mhz, self.models = tuple(shapes), clock_mhz, tuple(models)
        self.timing_only, self.build_seconds, self.neighbours = timing_only, build_seconds, neighbours
        self.load_bytes = dict(load_bytes or {})
        self.neighbour_slowdown = dict(neighbour_slowdown or {})
        self.source = None  # the file it was read from, for messages

    def describe(self):
        """How messages name the table: its file, else its configuration and backend."""
        return f"service-time table {self.source}" if self.source else (f"the service-time table ({self.config}, "
                                                                        f"{self.backend})")

    @property
    def batches(self):
        return sorted({key[3] for key in self.entries})

    @property
    def max_batch(self):
        return self.batches[-1]

    def shape(self, label):
        """The :class:`Shape` called ``label``."""
        for shape in self.shapes:
            if shape.label == label:
                return shape
        raise ClusterError(f"no vNPU shape {label!r} in the table; it has {', '.join(s.label for s in self.shapes)}")

    def curve(self, model, label, policy="static"):
        """Seconds per batch for batch sizes ``0..max_batch`` (index = batch size; entry 0 is 0),
        linear between the measured batch sizes.

        Raises
        ------
        ClusterError
            The table has no entry for ``model`` on shape ``label`` under ``policy``.
        """
        points = sorted((b, c) for (m, s, p, b), c in self.entries.items() if (m, s, p) == (model, label, policy))
        if not points:
            raise ClusterError(f"the service-time table ({self.config}, {self.backend}) has no entry for model "
                               f"{model!r} on shape {label!r} with co-tenant policy {policy!r}")
        b, c = np.array(points, dtype=float).T
        sizes = np.arange(self.max_batch + 1)
        out = np.interp(sizes, b, c) / (self.clock_mhz * 1e6)
        out[0] = 0.0
        return out

    def latency(self, model, batch, label, policy="static"):
        """Seconds for one batch of ``batch`` requests (interpolated)."""
        if not 1 <= batch <= self.max_batch:
            raise ClusterError(f"batch {batch} is outside the table's 1..{self.max_batch}")
        return float(self.curve(model, label, policy)[batch])

    def replica_load_bytes(self, model, label):
        """Bytes a new replica of ``model`` on shape ``label`` loads before it serves.

        Raises
        ------
        ClusterError
            The table does not record them (made before they were; :func:`fill_load_bytes`).
        """
        try:
            return self.load_bytes[(model, label)]
        except KeyError:
            raise ClusterError(f"{self.describe()} has no load_bytes for model {model!r} on shape {label!r}; rebuild it "
                               f"with `tcloud cluster table` (or give --load-bandwidth inf)") from None

    def slowdown_next_to(self, model, neighbour):
        """Factor over ``model``'s entries when its pNPU's other vNPUs run ``neighbour`` (1 for the
        same model).

        Raises
        ------
        ClusterError
            The table does not record the pair (made before it did; :func:`measure_neighbour_slowdowns`).
        """
        if model == neighbour:
            return 1.0
        try:
            return self.neighbour_slowdown[(model, neighbour)]
        except KeyError:
            raise ClusterError(f"{self.describe()} has no neighbour_slowdown for model {model!r} next to {neighbour!r}; "
                               f"rebuild it with `tcloud cluster table`") from None

    def to_dict(self):
        return {"config": self.config, "backend": self.backend, "clock_mhz": self.clock_mhz,
                "shapes": [asdict(s) for s in self.shapes], "models": [asdict(m) for m in self.models],
                "timing_only": self.timing_only, "build_seconds": self.build_seconds, "neighbours": self.neighbours,
                "load_bytes": [{"model": m, "shape": s, "bytes": n} for (m, s), n in sorted(self.load_bytes.items())],
                "neighbour_slowdown": [{"model": m, "neighbour": n, "factor": f}
                                       for (m, n), f in sorted(self.neighbour_slowdown.items())],
                "entries": [{"model": m, "shape": s, "policy": p, "batch": b, "cycles": c}
                            for (m, s, p, b), c in sorted(self.entries.items())]}

    def save(self, path):
        """Write the table as JSON at ``path``, atomically (:func:`~tcloud.runtime.files.write_file`)."""
        return write_file(path, json.dumps(self.to_dict(), indent=1) + "\n", "service-time table")

    @classmethod
    def load(cls, path):
        """Read a table written by :meth:`save`; :class:`ClusterError` naming the file and field."""
        path = Path(path)
        try:
            data = json.loads(read_text(path, "a service-time table (JSON text)"), object_pairs_hook=unique_pairs)
        except TcloudError as exc:
            raise ClusterError(str(exc)) from None
        except json.JSONDecodeError as exc:
            raise ClusterError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
        except ValueError as exc:
            raise ClusterError(f"{path}: not a service-time table ({exc})") from None
        from .workload import ModelSpec

        try:
            shapes = [Shape(**s) for s in data["shapes"]]
            for index, shape in enumerate(shapes):
                _check_positive_ints(path, f"shapes[{index}]", vars(shape))
            try:
                models = [ModelSpec(**{**m, "settings": tuple(m["settings"])}) for m in data.get("models", [])]
            except ClusterError as exc:
                raise ClusterError(f"{path}: field models: {exc}") from None
            names = [m.name for m in models]
            if len(set(names)) != len(names):
                raise ClusterError(f"{path}: field models names a model twice "
                                   f"({', '.join(sorted({n for n in names if names.count(n) > 1}))})")
            entries = {}
            for index, e in enumerate(data["entries"]):
                _check_positive_ints(path, f"entries[{index}]", {"batch": e["batch"], "cycles": e["cycles"]})
                entries[(e["model"], e["shape"], e["policy"], e["batch"])] = e["cycles"]
            load_bytes = {}
            for index, e in enumerate(data.get("load_bytes", [])):
                _check_fields(path, f"load_bytes[{index}]", e, ("model", "shape", "bytes"))
                _check_positive_ints(path, f"load_bytes[{index}]", {"bytes": e["bytes"]})
                load_bytes[(e["model"], e["shape"])] = e["bytes"]
            slowdown = {}
            for index, e in enumerate(data.get("neighbour_slowdown", [])):
                _check_fields(path, f"neighbour_slowdown[{index}]", e, ("model", "neighbour", "factor"))
                factor = e["factor"]
                if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
                    raise ClusterError(f"{path}: field neighbour_slowdown[{index}].factor must be a positive number, "
                                       f"got {factor!r}")
                slowdown[(e["model"], e["neighbour"])] = float(factor)
            for model, shape, policy in sorted({key[:3] for key in entries}):
                if (model, shape, policy, 1) not in entries:
                    raise ClusterError(f"{path}: model {model!r} on shape {shape!r} ({policy}) has no batch-1 entry "
                                       f"(smaller batches would be extrapolated)")
            if not shapes:
                raise ClusterError(f"{path}: field shapes is empty (a table needs at least one vNPU shape)")
            clock_mhz = data["clock_mhz"]
            if isinstance(clock_mhz, bool) or not isinstance(clock_mhz, (int, float)) or not 0 < clock_mhz < math.inf:
                raise ClusterError(f"{path}: field clock_mhz must be a positive finite number, got {clock_mhz!r}")
            neighbours = data.get("neighbours", "none")
            if neighbours not in (NEIGHBOURS, "none"):
                raise ClusterError(f"{path}: field neighbours must be {NEIGHBOURS!r} or 'none', got {neighbours!r}")
            table = cls(data["config"], data["backend"], entries, shapes, float(clock_mhz), models,
                        bool(data.get("timing_only", False)), data.get("build_seconds"), neighbours, load_bytes,
                        slowdown)
            table.source = path
            return table
        except KeyError as exc:
            raise ClusterError(f"{path}: missing field {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ClusterError(f"{path}: bad field ({exc})") from None


def _check_fields(path, where, item, names):
    """Raise :class:`ClusterError` unless ``item`` is an object holding every field in ``names``."""
    if not isinstance(item, dict):
        raise ClusterError(f"{path}: field {where} must be an object with {', '.join(names)}, got {item!r}")
    for name in names:
        if name not in item:
            raise ClusterError(f"{path}: field {where} lacks {name!r}")


def _check_positive_ints(path, where, fields):
    for name, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ClusterError(f"{path}: field {where}.{name} must be a positive integer, got {value!r}")


def ray_results(refs):
    """``ray.get(refs)``, with a task's :class:`~tcloud.isa.errors.TcloudError` raised here as a
    :class:`ClusterError` of its message, not as Ray's report of the worker's traceback."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, TcloudError):
            raise ClusterError(str(exc.cause)) from None
        raise


def default_path(config, backend):
    return SHIPPED / f"service-{config}-{backend}.json"


def build_table(models=None, config="small", backend=DEFAULT_BACKEND, batches=None,
                shapes=None, policies=DEFAULT_POLICIES, num_cpus=None, progress=None, timing_only=None,
                neighbours=True):
    """Measure every entry as a Ray task and return the :class:`ServiceTable`.

    Parameters
    ----------
    models : sequence of ModelSpec, optional
        Default :func:`~.workload.default_models` of ``config``.
    config, backend : str
    batches : sequence of int, optional
        Default :func:`default_batches` of ``config``.
    shapes : sequence of Shape, optional
        Default :func:`standard_shapes`.
    policies : sequence of str
        Co-tenant scheduling policies.
    num_cpus : int, optional
        CPUs for a local Ray instance (ignored when Ray is already initialised).
    progress : callable, optional
        ``progress(done, total)`` after each entry and each pair of :func:`measure_neighbour_slowdowns`.
    timing_only : bool, optional
        Compute no data (``perf`` only); default: on ``perf`` for every configuration but ``small``
        (whose shipped table was measured with data, like the Verilator one it is checked against).
    neighbours : bool
        Measure next to busy same-model vNPUs (:func:`measure`); ``False``: alone.
    """
    import ray

    started_at = time.time()
    cfg = get_config(config)
    if backend not in TIMED_BACKENDS:
        raise ClusterError(f"unknown timed backend {backend!r}; choose one of {', '.join(TIMED_BACKENDS)}")
    models = tuple(models or default_models(config))
    batches = tuple(batches or default_batches(config))
    if timing_only is None:
        timing_only = backend == "perf" and config != "small"
    shapes = tuple(shapes or standard_shapes(config))
    # the largest batches (the longest tasks) first, so that the last tasks running are short ones
    jobs = [(m, b, s, p) for b in sorted(batches, reverse=True) for m in models for s in shapes for p in policies]
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    try:
        task = ray.remote(num_cpus=1)(_measure_task)
        pending = {task.remote(m, config, b, s, p, backend, timing_only, neighbours): (m.name, s.label, p, b)
                   for m, b, s, p in jobs}
        entries, load_bytes, total = {}, {}, len(pending) + len(models) ** 2
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                key = pending.pop(ref)
                entries[key], image_bytes = ray_results(ref)
                if key[3] == max(batches):
                    load_bytes[key[:2]] = image_bytes
            if progress:
                progress(len(entries), total)
    finally:
        if started:
            ray.shutdown()
    table = ServiceTable(config, backend, entries, shapes, cfg.clock_mhz, models, timing_only,
                         None, NEIGHBOURS if neighbours else "none", load_bytes)
    measure_neighbour_slowdowns(table, progress and (lambda done, pairs: progress(len(entries) + done, total)))
    table.build_seconds = round(time.time() - started_at, 1)
    return table


def fill_load_bytes(table):
    """Add to ``table`` the :attr:`~ServiceTable.load_bytes` it lacks, by compiling each of its
    models at its largest batch for each shape (no measurement); returns how many it added."""
    added = 0
    for model in table.models:
        for shape in table.shapes:
            if (model.name, shape.label) not in table.load_bytes:
                table.load_bytes[(model.name, shape.label)] = _compiled_load_bytes(model, table.config, table.max_batch,
                                                                               shape)
                added += 1
    return added


def colocation_cycles(table, progress=None):
    """Each of ``table``'s models next to busy vNPUs of each model, in cycles.

    Every model runs on the reference shape (the second, as :func:`~.simulate.make_context`'s
    capacity) at the largest batch with 2 × latency ≤ SLO, alone on its pNPU and with the pNPU's
    other vNPUs of that shape running each model back to back for the whole run
    (:data:`NEIGHBOUR_RUNS` × the ratio of their cycles alone), on the table's backend.
    ``progress(done, total)`` after each pair.

    Returns
    -------
    dict
        ``shape`` (label), ``batches``, ``alone`` (cycles per model) and ``next_to``
        (``[model][neighbour]`` cycles), models in the table's order.
    """
    from .simulate import best_batch, make_context

    context = make_context(table.models, table, 1, 1.0, load_bandwidth=math.inf, charge_neighbours=False)
    shape = table.shapes[1] if len(table.shapes) > 1 else table.shapes[0]
    batches = [max(best_batch(c[shape.label], slo), 1) for c, slo in zip(context.curves, context.slos)]
    compiled = [compile_for(m, table.config, b, shape) for m, b in zip(table.models, batches)]

    def cycles(measured, neighbour, runs=NEIGHBOUR_RUNS):
        return run_next_to(measured, neighbour, table.config, shape, backend=table.backend,
                           timing_only=table.timing_only, runs=runs)[0]

    alone = [cycles(c, None) for c in compiled]
    next_to, total = [], len(compiled) ** 2
    for c, a in zip(compiled, alone):
        next_to.append([])
        for n, b in zip(compiled, alone):
            next_to[-1].append(cycles(c, n, NEIGHBOUR_RUNS * math.ceil(a / b)))
            if progress:
                progress(sum(map(len, next_to)), total)
    return {"shape": shape.label, "batches": batches, "alone": alone, "next_to": next_to}


def measure_neighbour_slowdowns(table, progress=None):
    """Set ``table.neighbour_slowdown`` for every ordered pair of its models from
    :func:`colocation_cycles`: the cycles next to the neighbour model over the cycles as the table's
    entries were measured (next to its own model, or alone). One batch and one shape stand for all
    (the simulator scales a replica's whole curve by the factor). Returns the table."""
    measured = colocation_cycles(table, progress)
    names = [m.name for m in table.models]
    for i, row in enumerate(measured["next_to"]):
        base = row[i] if table.neighbours == NEIGHBOURS else measured["alone"][i]
        for j, cycles in enumerate(row):
            if i != j:
                table.neighbour_slowdown[(names[i], names[j])] = round(cycles / base, 4)
    return table


def load_table(models=None, config="small", backend=DEFAULT_BACKEND, path=None, build=True, **options):
    """The table for ``models`` on ``config``/``backend``: from ``path`` (default the shipped one),
    rebuilt with :func:`build_table` when it lacks a model (or ``build`` is False: a
    :class:`ClusterError`). ``models`` defaults to the table's own models, else to
    :func:`~.workload.default_models` of ``config``. A table at ``path`` made for another
    configuration or backend is refused, never rebuilt over."""
    path = Path(path) if path else default_path(config, backend)
    if path.exists():
        table = ServiceTable.load(path)
        if (table.config, table.backend) != (config, backend):
            raise ClusterError(f"{path} is a service-time table for {table.config}/{table.backend}, not "
                               f"{config}/{backend}: pass --config {table.config} --backend {table.backend}, "
                               f"or another table")
        have = {key[0] for key in table.entries}
        missing = [m.name for m in tuple(models or table.models or default_models(config)) if m.name not in have]
        if not missing:
            return table
        if not build:
            raise ClusterError(f"{path}: no entries for model(s) {', '.join(missing)} on {config}/{backend}; "
                               f"run `tcloud cluster table`")
    elif not build:
        raise ClusterError(f"no service-time table at {path}; run `tcloud cluster table`")
    models = tuple(models or default_models(config))
    table = build_table(models, config, backend, **options)
    table.save(path)
    return table
