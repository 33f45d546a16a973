"""Per-request reference simulation with SimPy, to validate :mod:`.simulate` at small scale.

Every request is an event, every replica a SimPy process, and each model has one batcher process
that applies the cluster's dispatch rule, the rule of :func:`~.events.serve`:

* A replica that finishes a batch starts the next at once with up to its batch cap of the oldest
  queued requests; with a max queue delay only if that batch is full or the oldest request has
  waited the delay. Otherwise it joins the model's pool of free replicas.
* The batcher forms a batch for the *lowest-numbered* free replica (replicas are numbered in the
  order of the plan; their speed does not matter): when it is due (at the next arrival without a
  queue delay; with one, when that replica's cap of requests is queued or the oldest has waited
  the delay) it hands that replica up to its cap of the oldest requests. While no replica is free
  no batch forms: the replica that finishes first takes the next one.
* At one instant, replicas finishing a batch go before the batcher (a request that arrives as a
  replica finishes goes to that replica, not to a free one); among themselves they go in the order
  their batches started (the batch simulator: lowest-numbered first; a tie needs two batches
  ending at one instant, which continuous arrival times make improbable).

The batch simulator (:meth:`~.simulate.ModelGroup.run`) documents the same rule and its one
exception (mixed batch caps with a queue delay, at its control intervals' boundaries). With it the
two run the same schedule, mixed vNPU shapes included: :func:`compare` counts the requests they put
in different latency bins.

Waiting requests older than ``shed_factor × SLO`` are dropped at the end of each interval.
"""

import collections
import math

import numpy as np
import simpy


def simulate_requests(groups, arrivals, duration, interval=1.0, shed_factor=2.0):
    """Simulate each model's replicas request by request (see the module docstring).

    Parameters
    ----------
    groups : list of dict
        Per model: ``curves`` (list of per-replica arrays: seconds per batch by batch size),
        ``batch`` (per-replica caps), ``delay`` (seconds), ``slo`` (seconds). Replica ``r`` is the
        ``r``-th entry: the batcher prefers the lowest-numbered free one.
    arrivals : list of numpy.ndarray
        Sorted arrival times per model.
    duration, interval : float

    Returns
    -------
    list of dict
        Per model: ``latencies`` (array, served requests), ``dropped`` (int), ``arrived``, and
        ``in_flight``: the latencies the requests of the batches still running at ``duration`` will
        have (the batch simulator counts a batch when it starts, this one when it ends).
    """
    env = simpy.Environment()
    out = []
    for group, times in zip(groups, arrivals):
        caps = [int(c) for c in group["batch"]]
        state = {"queue": collections.deque(), "wake": env.event(), "free": set(), "handoff": [None] * len(caps),
                 "running": {}, "latencies": [], "dropped": 0}
        out.append(state)
        env.process(_arrive(env, state, times))
        for index, (curve, cap) in enumerate(zip(group["curves"], caps)):
            env.process(_replica(env, state, index, curve, cap, group["delay"]))
        env.process(_batcher(env, state, caps, group["delay"]))
        env.process(_shed(env, state, interval, shed_factor * group["slo"]))
    env.run(until=math.nextafter(duration, math.inf))  # the shed due at ``duration`` too, as the simulator does
    return [{"latencies": np.array(s["latencies"]), "dropped": s["dropped"], "arrived": int(t[t < duration].size),
             "in_flight": np.array([end - t for end, batch in s["running"].values() for t in batch])}
            for s, t in zip(out, arrivals)]


def _notify(env, state):
    """Wake the batcher: the queue or the free pool changed."""
    wake, state["wake"] = state["wake"], env.event()
    wake.succeed()


def _arrive(env, state, times):
    for t in times:
        if t > env.now:
            yield env.timeout(t - env.now)
        state["queue"].append(t)
        if state["free"]:  # with no replica free the batcher waits for one, not for arrivals
            _notify(env, state)


def _take(queue, cap):
    return [queue.popleft() for _ in range(min(cap, len(queue)))]


def _replica(env, state, index, curve, cap, delay):
    """Replica ``index``: after each batch (and at the start) take the next batch itself if one is
    ready for it, else join the free pool and wait for the batcher to hand it one."""
    queue = state["queue"]
    while True:
        if queue and (delay <= 0 or len(queue) >= cap or env.now >= queue[0] + delay):
            batch = _take(queue, cap)
        else:
            handoff = state["handoff"][index] = env.event()
            state["free"].add(index)
            _notify(env, state)
            batch = yield handoff
        state["running"][index] = (env.now + curve[len(batch)], batch)
        yield env.timeout(curve[len(batch)])
        del state["running"][index]
        state["latencies"].extend(env.now - t for t in batch)


def _batcher(env, state, caps, delay):
    """The model's one batcher: forms a batch for the lowest-numbered free replica when it is due
    and hands it over, after the replicas finishing at that instant have taken theirs."""
    queue, free = state["queue"], state["free"]
    settled = None  # the instant at which the finishing replicas have been let go first
    while True:
        due = math.inf
        if free and queue:
            replica = min(free)
            cap = caps[replica]
            due = queue[0] if delay <= 0 else min(queue[cap - 1] if len(queue) >= cap else math.inf, queue[0] + delay)
        if due > env.now:
            yield state["wake"] if due == math.inf else state["wake"] | env.timeout(due - env.now)
            continue
        if settled != env.now:
            settled = env.now
            yield env.timeout(0)  # after every event already due now: batches ending now, arrivals now
            continue
        free.remove(replica)
        state["handoff"][replica].succeed(_take(queue, cap))


def _shed(env, state, interval, age):
    queue = state["queue"]
    while True:
        yield env.timeout(interval)
        while queue and queue[0] < env.now - age:
            queue.popleft()
            state["dropped"] += 1


def latency_bins(latencies):
    """The simulator's latency histogram bin of each latency (as :func:`~.events.serve` bins them)."""
    from .simulate import _LOG_FIRST_EDGE, _LOG_STEP, EDGES

    k = np.ceil((np.log(np.maximum(latencies, 1e-300)) - _LOG_FIRST_EDGE) / _LOG_STEP)
    return np.clip(k, 0, len(EDGES)).astype(np.int64)


def compare(simulator, duration, arrivals):
    """Run ``simulator`` (fresh, not stepped yet) for ``duration`` and the per-request simulation on
    the same replicas, batch caps, delays and ``arrivals`` (per-model arrays, the requests the
    simulator's :class:`~.workload.Arrivals` will produce); the policy must keep its initial plan.

    Returns
    -------
    list of dict
        Per model: ``throughput`` and ``p99`` of both (``batch``, ``request``), their relative
        differences, the wall seconds of each simulation (of all models), ``request_in_flight``
        (requests of the batches still running at the end, which the batch simulator has counted
        and this one has not) and ``histogram_difference``: how many requests the two put in
        different latency bins once those are counted (half the L1 distance of the histograms; 0
        when both ran the same schedule).
    """
    from .simulate import EDGES

    groups = [{"curves": list(g.shape_curves()), "batch": g.batch.copy(), "delay": g.delay,
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
        group = simulator.groups[len(out)]
        mine_hist = np.bincount(latency_bins(np.concatenate((ref["latencies"], ref["in_flight"]))),
                                minlength=group.hist.size)
        mine_hist[-1] += ref["dropped"]
        row["request_in_flight"] = int(ref["in_flight"].size)
        row["histogram_difference"] = int(np.abs(group.hist - mine_hist).sum()) / 2
        row["throughput_error"] = abs(row["batch_throughput"] / row["request_throughput"] - 1)
        row["p99_error"] = abs(row["batch_p99"] / row["request_p99"] - 1) if np.isfinite(p99) else float(
            np.isfinite(row["batch_p99"]))
        out.append(row)
    return out
