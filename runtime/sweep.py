"""Parameter sweeps on the performance model, fanned out as Ray tasks: the engine of ``tcloud sweep``.

A sweep spec (YAML or JSON) names lists to cross: programs (``models``), presets (``configs``),
scheduling policies, tenant counts and loads (jobs each tenant runs back to back); every point is
one Ray task that runs those tenants on one pNPU of the ``perf`` backend and measures per-tenant
latency, throughput and engine utilization. Example::

    models: [gemm 64x64x64, elementwise 24x64 passes=4 block=256]
    configs: [small]
    policies: [static, harvest]
    tenants: [1, 2, 4]
    loads: [2]
    hbm_latency: [120]      # optional: cycles; default the preset's
    data: false             # optional: compute data too (default: timing only)

``models`` entries are what a ``tcloud vnpu`` scenario's ``program`` takes (``gemm MxKxN``,
``elementwise RxC [passes=P] [block=B]``, an image or an assembly file). Tenants split the engines
evenly (each owns at least one ME and VE, shared when there are more tenants than engines) and the
scratchpad and HBM in equal windows.

Ray is the distributed engine: a local ``ray.init`` by default, ``address`` to join a cluster. A point
that fails (a tenant faults, say) does not stop the others: its row holds its ``error``, and the sweep
ends with an error naming it once the table is written; an interrupted sweep writes the points that ended.
"""

import csv
import io
import socket
from pathlib import Path

import numpy as np

from tcloud.isa import PRESETS, Instr, Policy, get_config
from tcloud.isa.errors import TcloudError

from .files import output_dir, output_file, parse_document, read_text, write_figure, write_file

_KEYS = {"models", "configs", "policies", "tenants", "loads", "hbm_latency", "data", "poll_cycles"}
_REQUIRED = ("models", "configs", "policies", "tenants", "loads")
COLUMNS = ("model", "config", "policy", "tenants", "load", "hbm_latency", "jobs", "window_cycles",
           "mean_latency_cycles", "max_latency_cycles", "jobs_per_mcycle", "me_utilization", "ve_utilization",
           "dma_utilization", "wall_seconds", "error")
"""Columns of the results table, one row per sweep point (``error`` says why a point failed; its measures
are then empty)."""
MAX_POINTS = 10_000
"""The most points a sweep runs (the cross product of its lists)."""


class SweepError(TcloudError, ValueError):
    """A malformed sweep spec or a failed point: the message names the field or the point."""


def load_spec(path):
    """Read and check a sweep spec file (YAML or JSON); return the checked dict.

    Raises
    ------
    SweepError
        If the file cannot be parsed or a field is missing, unknown or of the wrong kind.
    """
    path = Path(path)
    text = read_text(path, "a sweep spec")
    try:
        data = parse_document(text, path)
    except ValueError as exc:
        raise SweepError(f"{path}: {exc}") from None
    return check_spec(data, where=str(path), base=path.parent)


def _list(data, key, where):
    value = data[key]
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise SweepError(f"{where}: {key} is empty")
    return value


def check_spec(data, where="spec", base=Path(".")):
    """Check a sweep spec (a dict) field by field; return it with every list field as a list.

    Raises
    ------
    SweepError
        Naming the field that is missing, unknown or wrong.
    """
    if not isinstance(data, dict):
        raise SweepError(f"{where}: a sweep spec is a mapping of {', '.join(_REQUIRED)}, got {type(data).__name__}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise SweepError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise SweepError(f"{where}: missing field(s) {', '.join(missing)}")
    spec = {key: _list(data, key, where) for key in _REQUIRED}
    for config in spec["configs"]:
        if not isinstance(config, str) or config not in PRESETS:
            raise SweepError(f"{where}: configs: unknown preset {config!r}; presets are {', '.join(PRESETS)}")
    for policy in spec["policies"]:
        if str(policy).upper() not in Policy.__members__:
            raise SweepError(f"{where}: policies: unknown policy {policy!r}; policies are "
                             f"{', '.join(p.name.lower() for p in Policy)}")
    for key in ("tenants", "loads"):
        for value in spec[key]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SweepError(f"{where}: {key} must be positive integers, got {value!r}")
    most = min(get_config(config).contexts for config in spec["configs"])
    if max(spec["tenants"]) > most:
        raise SweepError(f"{where}: tenants: {max(spec['tenants'])} tenants, but a pNPU of "
                         f"{', '.join(spec['configs'])} has {most} contexts")
    latencies = _list(data, "hbm_latency", where) if "hbm_latency" in data else [None]
    for value in latencies:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SweepError(f"{where}: hbm_latency must be positive integers (cycles), got {value!r}")
        for config in spec["configs"]:
            try:
                get_config(config).replace(hbm_latency=value)  # the preset's own range
            except TcloudError as exc:
                raise SweepError(f"{where}: hbm_latency {value!r} on {config}: {exc}") from None
    spec["hbm_latency"] = latencies
    spec["data"] = data.get("data", False)
    if not isinstance(spec["data"], bool):
        raise SweepError(f"{where}: data must be true or false, got {spec['data']!r}")
    spec["poll_cycles"] = data.get("poll_cycles", 256)
    if isinstance(spec["poll_cycles"], bool) or not isinstance(spec["poll_cycles"], int) or spec["poll_cycles"] < 1:
        raise SweepError(f"{where}: poll_cycles must be a positive integer, got {spec['poll_cycles']!r}")
    count = 1
    for key in (*_REQUIRED, "hbm_latency"):
        count *= len(spec[key])
    if count > MAX_POINTS:
        raise SweepError(f"{where}: {count:,} points (the product of the lists' lengths); a sweep runs at most "
                         f"{MAX_POINTS:,}: split it")
    from .tenants import ScenarioError, program_footprint
    for model in spec["models"]:
        for config in spec["configs"]:
            try:
                footprint = program_footprint(model, get_config(config), base)
            except (ScenarioError, TcloudError) as exc:
                raise SweepError(f"{where}: models: {model!r} on {config}: {exc}") from None
            for tenants in spec["tenants"]:
                _check_fits(model, footprint, get_config(config), tenants, where)
    spec["base"] = str(base)
    return spec


def _windows(config, tenants):
    """Bytes of scratchpad and HBM each of ``tenants`` tenants gets on a pNPU of ``config``."""
    return config.sram_bytes // tenants // 4096 * 4096, config.hbm_bytes // tenants // 65536 * 65536


def _check_fits(model, image, config, tenants, where="point"):
    """Raise :class:`SweepError` unless ``image`` (or its footprint) fits the windows of one of
    ``tenants`` tenants."""
    sram_each, hbm_each = _windows(config, tenants)
    if image.sram_bytes > sram_each or image.hbm_bytes > hbm_each:
        raise SweepError(f"{where}: models: {model!r} needs {image.sram_bytes} B of scratchpad and {image.hbm_bytes} "
                         f"B of HBM; {tenants} tenants on {config.name} get {sram_each} and {hbm_each} each")


def points(spec):
    """Every point of the sweep, as dicts (model, config, policy, tenants, load, hbm_latency)."""
    return [{"model": model, "config": config, "policy": str(policy).lower(), "tenants": tenants, "load": load,
             "hbm_latency": latency, "data": spec["data"], "poll_cycles": spec["poll_cycles"], "base": spec["base"]}
            for model in spec["models"] for config in spec["configs"] for policy in spec["policies"]
            for tenants in spec["tenants"] for load in spec["loads"] for latency in spec["hbm_latency"]]


def _masks(config, tenants, index):
    """Engine masks of tenant ``index`` of ``tenants``: an even split, each tenant owning at least one
    engine of each class (shared round-robin when there are more tenants than engines)."""
    def split(count):
        per = max(1, count // tenants)
        first = (index * per) % count
        return sum(1 << ((first + i) % count) for i in range(per))
    return {"me_mask": split(config.me_count), "ve_mask": split(config.ve_count), "dma_mask": (1 << config.dma_count) - 1}


def run_point(point):
    """Run one sweep point on the ``perf`` backend; return its results row (a dict of :data:`COLUMNS`)."""
    import time

    from .backends import make_device
    from .execute import Placement, plan_load
    from .tenants import build_program, random_inputs

    start = time.perf_counter()
    config = get_config(point["config"])
    image = build_program(point["model"], config, Path(point["base"]))
    timing = {} if point["hbm_latency"] is None else {"hbm_latency": point["hbm_latency"]}
    device = make_device("perf", config, data=point["data"], **timing)
    device.set_policy(point["policy"])
    n = point["tenants"]
    _check_fits(point["model"], image, config, n)
    sram_each, hbm_each = _windows(config, n)
    rng = np.random.default_rng(0)
    plans = []
    for index in range(n):
        placement = Placement(context=index, hbm_base=index * hbm_each, sram_base=index * sram_each)
        plan = plan_load(config, image, random_inputs(image, rng), placement)
        for command in plan.setup:
            if command.mnemonic == "ctx.engines":
                command = Instr("ctx.engines", ctx=index, **_masks(config, n, index))
            device.host(command)
        for address, data in plan.writes:
            device.write_hbm(address, data)
        plans.append(plan)
    begin = device.cycles
    for plan in plans:
        device.host(plan.start)
    done = [0] * n
    latencies = []
    while min(done) < point["load"]:
        device.run(point["poll_cycles"])
        for index, plan in enumerate(plans):
            info = device.context(index)
            if info.status.name == "RUNNING" or done[index] >= point["load"]:
                continue
            if info.status.name != "DONE":
                raise SweepError(f"tenant {index} stopped with {info.status.name} {info.fault.name} at pc "
                                 f"{info.fault_pc:#x}: {info.detail}")
            latencies.append(info.timing["run_cycles"])
            done[index] += 1
            if done[index] < point["load"]:
                device.host(plan.start)
    window = device.cycles - begin
    stats = device.stats()
    busy = {cls: sum(v for k, v in stats["engine_busy_cycles"].items() if k.rstrip("0123456789") == cls)
            for cls in ("me", "ve", "dma")}
    counts = {"me": config.me_count, "ve": config.ve_count, "dma": config.dma_count}
    return {"model": point["model"], "config": config.name, "policy": point["policy"], "tenants": n,
            "load": point["load"], "hbm_latency": point["hbm_latency"] or config.hbm_latency, "jobs": sum(done),
            "window_cycles": window, "mean_latency_cycles": round(float(np.mean(latencies)), 1),
            "max_latency_cycles": int(max(latencies)), "jobs_per_mcycle": round(sum(done) / window * 1e6, 3),
            **{f"{cls}_utilization": round(busy[cls] / (counts[cls] * window), 4) for cls in counts},
            "wall_seconds": round(time.perf_counter() - start, 3), "error": ""}


def point_name(point):
    """How messages name a sweep point."""
    latency = "" if point["hbm_latency"] is None else f" / hbm latency {point['hbm_latency']}"
    return (f"point {point['model']} / {point['config']} / {point['policy']} / {point['tenants']} tenants / "
            f"load {point['load']}{latency}")


def failed_row(point, error):
    """The results row of a point that failed: what it was, and ``error``."""
    row = dict.fromkeys(COLUMNS, "")
    row.update({key: point[key] for key in ("model", "config", "policy", "tenants", "load", "hbm_latency")},
               error=error)
    if row["hbm_latency"] is None:
        row["hbm_latency"] = get_config(point["config"]).hbm_latency
    return row


_STALE_RAY = ("; it was started before tcloud sweep ran (by earlier code in this process), which did not "
              "stop it: call ray.shutdown() first or run the sweep in a fresh process")


def _no_cpus(ray, where, started_here):
    """Why a Ray without CPUs cannot run the points, and what to do."""
    try:
        nodes = ray.nodes()
    except (ray.exceptions.RayError, ConnectionError, RuntimeError) as exc:
        return f"{where} offers no CPUs and cannot list its nodes ({exc})"
    dead = [n for n in nodes if not n.get("Alive")]
    if nodes and len(dead) == len(nodes):
        reason = (f"{where} has no live node: its raylet died (node {dead[0].get('NodeManagerAddress', '?')} "
                  f"is marked dead)")
    else:
        reason = f"{where} offers no CPUs ({len(nodes) - len(dead)} live node(s))"
    return f"{reason}, and every sweep point is a Ray task needing one CPU{_STALE_RAY if not started_here else ''}"


def run_sweep(spec, out, *, address=None, num_cpus=None, log=print):
    """Run every point of ``spec`` as a Ray task; write ``sweep.csv`` and ``sweep.png`` under ``out``.

    Parameters
    ----------
    spec : dict
        A checked spec (:func:`check_spec`).
    out : path
        Output directory (created).
    address : str, optional
        A Ray cluster to join (``ray.init(address=...)``); default a local Ray.
    num_cpus : int, optional
        CPUs of the local Ray (default: all).

    Returns
    -------
    list of dict
        The rows, in point order.

    Raises
    ------
    SweepError
        If a point failed (the table still holds every point, a failed one with its ``error``), or Ray
        failed under a point (the points that ended are written).
    KeyboardInterrupt
        After writing the points that ended.
    """
    try:
        import ray
    except ImportError:
        raise SweepError("tcloud sweep needs Ray: pip install 'ray[default]'") from None
    out = output_dir(out, "sweep output directory")
    csv_path, png_path = output_file(out / "sweep.csv", "results"), output_file(out / "sweep.png", "plot")
    todo = points(spec)
    started_here = not ray.is_initialized()
    if started_here and address:
        _check_reachable(address)
    if started_here:
        try:
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise SweepError(f"could not start or join Ray{f' at {address}' if address else ''}: {exc}") from None
    try:
        where = ("the Ray this process was already connected to" if not started_here
                 else f"the Ray cluster at {address}" if address else "the local Ray")
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < 1:
            raise SweepError(_no_cpus(ray, where, started_here))
        remote = ray.remote(num_cpus=1)(run_point)
        log(f"sweep: {len(todo)} points on Ray ({cpus:.0f} CPUs)")
        futures = [remote.remote(point) for point in todo]
        rows, failures, lost, interrupted = [], [], None, False
        try:
            for point, future in zip(todo, futures):
                try:
                    row = ray.get(future)
                except _point_errors(ray) as exc:
                    error = _point_error(exc)
                    failures.append(f"{point_name(point)}: {error}")
                    rows.append(failed_row(point, error))
                    log(f"  {point_name(point)} failed: {error}")
                    continue
                except ray.exceptions.RayError as exc:  # Ray itself failed under the point, e.g. its raylet died
                    lost = (f"{point_name(point)} was lost: {where} failed ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'})"
                            f"{_STALE_RAY if not started_here else ''}")
                    _cancel(ray, futures)
                    break
                rows.append(row)
                log(f"  {row['model']:<28} {row['config']:<8} {row['policy']:<9} x{row['tenants']} load "
                    f"{row['load']}: {row['jobs_per_mcycle']} jobs/Mcycle, mean latency "
                    f"{row['mean_latency_cycles']:,.0f} cycles")
        except KeyboardInterrupt:
            interrupted = True
            _cancel(ray, futures)
    finally:
        if started_here:
            ray.shutdown()
    if rows:
        _write_results(rows, csv_path, png_path, log)
    kept = f"; the {len(rows)} point(s) that ended are in {csv_path}" if rows else ""
    if failures:
        kept += f" ({len(failures)} of them failed, each with its error)"
    if interrupted:
        log(f"sweep interrupted after {len(rows)} of {len(todo)} points{kept}")
        raise KeyboardInterrupt
    if lost:
        raise SweepError(lost + kept)
    if failures:
        raise SweepError(f"{len(failures)} of {len(todo)} points failed (the first: {failures[0]}); every point's "
                         f"row is in {csv_path}, a failed one with its error")
    return rows


def _write_results(rows, csv_path, png_path, log):
    """Write the results table, and the plot of the points that ran."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_file(csv_path, table.getvalue(), "results")
    log(f"wrote {csv_path}")
    ran = [row for row in rows if not row["error"]]
    if not ran:
        if png_path.is_file():
            png_path.unlink()
        log(f"no point ran: no plot (an earlier {png_path.name} is removed)")
        return
    try:
        plot(ran, png_path)
        log(f"wrote {png_path}")
    except ImportError:
        log("matplotlib is not installed; skipped the plot")


def _point_errors(ray):
    """Ray's errors that end one point and not the run: the point raised, or Ray killed its worker (out
    of memory, a crash) or cancelled it."""
    errors = ray.exceptions
    return (errors.RayTaskError, errors.OutOfMemoryError, errors.WorkerCrashedError, errors.TaskCancelledError)


def _point_error(exc):
    """A point's error as its row and the messages give it: a TcloudError's message, else Ray's last line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, TcloudError):
        return str(cause)
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def _cancel(ray, futures):
    """Cancel the points still queued or running (on a cluster joined, they would go on using its CPUs)."""
    for future in futures:
        try:
            ray.cancel(future, force=True)
        except (ray.exceptions.RayError, TypeError, ValueError):
            pass


def _check_reachable(address, seconds=5.0):
    """Raise :class:`SweepError` if ``address``, a ``HOST:PORT`` of a Ray cluster, does not accept a
    connection within ``seconds`` (``ray.init`` would retry for ever); other forms (``auto``,
    ``ray://...``) are left to Ray."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=seconds).close()
    except OSError as exc:
        raise SweepError(f"no Ray cluster at {address}: {exc.strerror or exc}") from None


def plot(rows, path):
    """Throughput and mean latency against tenants, one line per (model, config, policy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    series = {}
    for row in rows:
        series.setdefault((row["model"], row["config"], row["policy"], row["load"], row["hbm_latency"]), []).append(row)
    for (model, config, policy, load, latency), points_ in series.items():
        points_.sort(key=lambda r: r["tenants"])
        label = f"{model} / {config} / {policy}" + (f" / load {load}" if len({r['load'] for r in rows}) > 1 else "")
        tenants = [r["tenants"] for r in points_]
        axes[0].plot(tenants, [r["jobs_per_mcycle"] for r in points_], marker="o", label=label)
        axes[1].plot(tenants, [r["mean_latency_cycles"] for r in points_], marker="o", label=label)
    axes[0].set_ylabel("jobs per million cycles")
    axes[1].set_ylabel("mean latency (cycles)")
    for ax in axes:
        ax.set_xlabel("tenants on one pNPU")
    axes[0].legend(fontsize=7)
    fig.suptitle("tcloud sweep (perf backend)")
    fig.tight_layout()
    write_figure(fig, path)
