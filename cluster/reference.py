"""Per-request reference simulation with SimPy, to validate :mod:`.simulate` at small scale.

Every request is an event and every replica a SimPy process with the textbook rule: when free, take
up to its batch cap of the oldest queued requests; with a max queue delay, wait (for more arrivals
or the delay) while the batch would not be full and the oldest request has waited less than the
delay. Waiting requests older than ``shed_factor × SLO`` are dropped at the end of each interval.
"""

import collections
import math

import numpy as np
import simpy


def simulate_requests(groups, arrivals, duration, interval=1.0, shed_factor=2.0):
    """Simulate each model's replicas request by request.

    Parameters
    ----------
    groups : list of dict
        Per model: ``curves`` (list of per-replica arrays: seconds per batch by batch size),
        ``batch`` (per-replica caps), ``delay`` (seconds), ``slo`` (seconds).
    arrivals : list of numpy.ndarray
        Sorted arrival times per model.
    duration, interval : float

    Returns
    -------
    list of dict
        Per model: ``latencies`` (array, served requests), ``dropped`` (int), ``arrived``.
    """
    env = simpy.Environment()
    out = []
    for group, times in zip(groups, arrivals):
        state = {"queue": collections.deque(), "wake": env.event(), "latencies": [], "dropped": 0}
        out.append(state)
        env.process(_arrive(env, state, times))
        for curve, cap in zip(group["curves"], group["batch"]):
            env.process(_replica(env, state, curve, int(cap), group["delay"]))
        env.process(_shed(env, state, interval, shed_factor * group["slo"]))
    env.run(until=math.nextafter(duration, math.inf))  # the shed due at ``duration`` too, as the simulator does
    return [{"latencies": np.array(s["latencies"]), "dropped": s["dropped"], "arrived": int(t[t < duration].size)}
            for s, t in zip(out, arrivals)]


def _notify(env, state):
    wake, state["wake"] = state["wake"], env.event()
    wake.succeed()


def _arrive(env, state, times):
    for t in times:
        if t > env.now:
            yield env.timeout(t - env.now)
        state["queue"].append(t)
        _notify(env, state)


def _replica(env, state, curve, cap, delay):
    queue = state["queue"]
    while True:
        if not queue:
            yield state["wake"]
            continue
        if delay > 0 and len(queue) < cap and env.now < queue[0] + delay:
            yield state["wake"] | env.timeout(queue[0] + delay - env.now)
            continue
        batch = [queue.popleft() for _ in range(min(cap, len(queue)))]
        yield env.timeout(curve[len(batch)])
        state["latencies"].extend(env.now - t for t in batch)


def _shed(env, state, interval, age):
    queue = state["queue"]
    while True:
        yield env.timeout(interval)
        while queue and queue[0] < env.now - age:
            queue.popleft()
            state["dropped"] += 1


def compare(simulator, duration, arrivals):
    """Run ``simulator`` (fresh, not stepped yet) for ``duration`` and the per-request simulation on
    the same replicas, batch caps, delays and ``arrivals`` (per-model arrays, the requests the
    simulator's :class:`~.workload.Arrivals` will produce); the policy must keep its initial plan.

    Returns
    -------
    list of dict
        Per model: ``throughput`` and ``p99`` of both (``batch``, ``request``), their relative
        differences, and the wall seconds of each simulation (of all models).
    """
    from .simulate import EDGES

    groups = [{"curves": [g.curves[r.shape.label] for r in g.replicas], "batch": g.batch.copy(), "delay": g.delay,
               "slo": g.slo} for g in simulator.groups]
    import time

    started = time.perf_counter()
    results = simulator.run(duration)
    batch_wall = time.perf_counter() - started
    reference = simulate_requests(groups, arrivals, duration, simulator.context.interval, simulator.shed_factor)
    request_wall = time.perf_counter() - started - batch_wall
    out = []
    for model, ref in zip(simulator.context.models, reference):
        mine = results["models"][model.name]
        latencies = np.concatenate((ref["latencies"], np.full(ref["dropped"], np.inf)))
        p99 = float(np.quantile(latencies, 0.99, method="inverted_cdf")) if latencies.size else float("nan")
        row = {"model": model.name, "batch_throughput": mine["throughput"],
               "request_throughput": ref["latencies"].size / duration, "batch_p99": mine["p99"], "request_p99": p99,
               "batch_dropped": mine["dropped"], "request_dropped": ref["dropped"],
               "histogram_resolution": float(EDGES[1] / EDGES[0] - 1), "batch_wall_seconds": batch_wall,
               "request_wall_seconds": request_wall}
        row["throughput_error"] = abs(row["batch_throughput"] / row["request_throughput"] - 1)
        row["p99_error"] = abs(row["batch_p99"] / row["request_p99"] - 1) if np.isfinite(p99) else float(
            np.isfinite(row["batch_p99"]))
        out.append(row)
    return out
