"""Batch-granularity simulation of the cluster in virtual time.

Counted first: a saturated cluster of 1000 ``tpu_like`` pNPUs serving the six full-size models
completes about 3 × 10⁵ batches and 1.1 × 10⁶ requests per simulated second (56 % of the batches
from recommenders on one or two replicas, whose batches last 15–150 µs), so ten simulated minutes are about
2 × 10⁸ batch events and 7 × 10⁸ request latencies. SimPy (a Python generator resumption per event,
microseconds) would take hours against a 2-minute target; it serves instead as the per-request
reference (:mod:`.reference`) that validates this simulator at small scale.

How this one works: each model has one FIFO queue and a group of replicas (vNPUs); per control
interval, :meth:`ModelGroup.run` advances them with one event per batch in a loop compiled with
Numba (:mod:`.events`), and every served request's latency goes into a log-spaced histogram as it is
served. A NumPy version (one vectorised scan over every replica's next batches) was exact but took
287 s (under the profiler) for 10 simulated seconds of this workload, as partial batches cut every
scan short; this loop takes about 1 s.
"""

import math
from dataclasses import dataclass, field

import numpy as np

from .workload import ClusterError

EDGES = np.geomspace(1e-7, 1e4, 6001)
"""Latency histogram bin edges (seconds): 0.42 % per bin."""
_LOG_FIRST_EDGE = float(np.log(EDGES[0]))
_LOG_STEP = float(np.log(EDGES[-1] / EDGES[0]) / (len(EDGES) - 1))
CLUSTER_RULES = 3
"""What the simulator charges, for results to record: 3 is 2, and a model that shrinks removes first
its replicas whose pNPU pairs it worst with another model (:meth:`.placement.Cluster.pairing`), so
a benign pairing is kept rather than its half freed for whichever model grows next (2 removed the
newest); 2 charges loading a replica added during a run, draining a removed one and neighbours of
another model, and places replicas by affinity (:meth:`.placement.Cluster.place`); 1 (results that
record none) charged none of these and placed first fit."""
MAX_LOAD = 100.0
"""The highest offered load, as a multiple of capacity, the simulator accepts (its queues grow with it)."""
MAX_SECONDS = 86400.0
"""The most simulated seconds (warm-up and measured) a run covers: a day."""
MAX_DECISIONS = 1_000_000
"""The most policy decisions (simulated seconds / interval) a run takes."""
DEFAULT_LOAD_BANDWIDTH = 12e9
"""Bytes per second a pNPU's host link moves into its HBM (about what a PCIe 3.0 ×16 link achieves of
its 15.75 GB/s): a new replica serves only after its image (:meth:`.service.ServiceTable.replica_load_bytes`)
has crossed it."""


@dataclass
class Plan:
    """What a policy decides for the next interval.

    Attributes
    ----------
    replicas : dict, optional
        Model index → list of shape labels of its replicas (the target allocation); models not
        named keep theirs.
    batch : dict, optional
        Model index → batch cap: an int (all replicas), a dict shape label → cap, or an array with
        one cap per replica, in their order once this plan's replicas are in place (kept replicas
        best-paired first, then added ones: :meth:`Simulator.apply`); a plan that also changes
        replicas is safer keyed by shape label.
    delay : dict, optional
        Model index → seconds a replica waits for a full batch (0: start with whatever is queued).
    """

    replicas: dict = field(default_factory=dict)
    batch: dict = field(default_factory=dict)
    delay: dict = field(default_factory=dict)


class ModelGroup:
    """One model's queue and replicas (see the module docstring)."""

    def __init__(self, index, slo, curves):
        self.index, self.slo, self.curves = index, slo, curves
        self.queue = np.empty(0)
        self.head = 0
        self.replicas = []
        self.slowdown = np.empty(0)  # per replica: its neighbours' factor over its curve
        self.free = np.empty(0)
        self.batch = np.empty(0, dtype=np.int64)
        self.delay = 0.0
        self.hist = np.zeros(len(EDGES) + 1, dtype=np.int64)
        self.reset_stats()
        self.arrived = self.served = self.good = self.dropped = 0
        self.busy_engine_seconds = 0.0
        self.batches = 0

    def reset_stats(self):
        """Counters of the current control interval (what a policy observes)."""
        self.i_arrived = self.i_served = self.i_good = 0
        self.i_hist = np.zeros(len(EDGES) + 1, dtype=np.int64)
        self.i_max_service = np.zeros(len(self.replicas))
        self.i_busy = np.zeros(len(self.replicas))

    def shape_curves(self):
        """Seconds per batch by batch size, a row per replica: its shape's curve × its neighbours' factor."""
        rows = np.array([self.curves[r.shape.label] for r in self.replicas]).reshape(len(self.replicas), -1)
        return rows * self.slowdown[:, None]

    def run(self, t1):
        """Serve the queue with the replicas until ``t1`` (:func:`~.events.serve`) under the
        cluster's dispatch rule, which the per-request reference (:mod:`.reference`) implements
        too:

        * a replica that finishes a batch starts the next at once with up to its cap of the oldest
          requests (with a queue delay: if that batch is full or the oldest has waited the delay);
          otherwise it joins the pool of free replicas;
        * free replicas wait behind the model's one batcher, as in Triton's dynamic batcher (one
          per model, dispatching to whichever instance is free). It forms a batch for the
          *lowest-numbered* free replica (numbered as :meth:`Simulator.apply` lists them, whatever
          their shape or speed) when it is due: at the next arrival without a queue delay; with one, when
          that replica's cap of requests is queued or the oldest has waited the delay. While no
          replica is free no batch forms: whichever replica finishes first takes the next;
        * at one instant, replicas finishing a batch go before the batcher, lowest-numbered first
          (the reference takes them in the order their batches started; they can tie only if two
          batches ended at one instant, which continuous arrival times make improbable).

        The two simulators then run the same schedule, mixed shapes included: every request gets
        the same latency bin (the tests check the histograms bin for bin). One exception, with
        mixed batch caps and a queue delay together (no shipped policy has both): a free replica
        whose own cap fills before the lowest-numbered one's is due starts that batch at the next
        interval's start, back-dated to when its cap filled (see :func:`~.events.serve`'s final
        loop), where one long interval would have waited for the lowest-numbered replica."""
        if not self.replicas:
            return
        from .events import serve

        lat = np.ascontiguousarray(self.shape_curves())
        self.head, served, good, batches = serve(self.queue, self.head, self.free, self.batch, lat, self.delay, t1,
                                                 self.slo, self.i_hist, _LOG_FIRST_EDGE, _LOG_STEP, self.i_busy,
                                                 self.i_max_service)
        self.i_served += served
        self.i_good += good
        self.batches += batches

    def add_arrivals(self, times):
        self.queue = np.concatenate((self.queue[self.head:], times))
        self.head = 0
        self.i_arrived += times.size
        self.arrived += times.size

    def shed(self, before):
        """Drop waiting requests that arrived before ``before`` (they can no longer meet the SLO)."""
        k = int(np.searchsorted(self.queue, before, side="left"))
        if k > self.head:
            self.dropped += k - self.head
            self.i_hist[-1] += k - self.head
            self.head = k

    def close_interval(self, engines):
        self.hist += self.i_hist
        self.served += self.i_served
        self.good += self.i_good
        self.busy_engine_seconds += float(self.i_busy @ engines) if len(engines) else 0.0


def percentile(hist, q):
    """The ``q``-quantile (0..1) of a histogram over :data:`EDGES` (geometric bin centres; ``inf``
    when it falls among dropped requests counted in the last bin)."""
    total = hist.sum()
    if total == 0:
        return float("nan")
    k = int(np.searchsorted(np.cumsum(hist), q * total, side="left"))
    if k >= len(EDGES):
        return float("inf")
    if k == 0:
        return float(EDGES[0])
    return float(np.sqrt(EDGES[k - 1] * EDGES[k]))


@dataclass
class Context:
    """What a policy knows before the run.

    Attributes
    ----------
    models : tuple of ModelSpec
    slos : numpy.ndarray
        Seconds, per model.
    curves : list of dict
        Per model: shape label → seconds per batch for batch sizes ``0..max_batch``.
    shapes : tuple of Shape
    max_batch : int
    rates : numpy.ndarray
        Mean offered requests per second per model (what the operator provisions for).
    pnpus : int
    per_pnpu : dict
        Shape label → how many vNPUs of that shape fit an empty pNPU.
    interval : float
        Seconds between two decisions.
    prices : dict
        Shape label → price per second of a vNPU of that shape.
    load_seconds : list of dict
        Per model: shape label → seconds a new replica of that shape loads before it serves (all 0
        when loading is not charged).
    neighbour_slowdown : numpy.ndarray
        ``[model, other model]``: factor over the model's curves when its pNPU holds the other
        model (all 1 when neighbours are not charged).
    """

    models: tuple
    slos: np.ndarray
    curves: list
    shapes: tuple
    max_batch: int
    rates: np.ndarray
    pnpus: int
    per_pnpu: dict
    interval: float
    prices: dict
    load_seconds: list
    neighbour_slowdown: np.ndarray


def shape_price(shape, clock_mhz, prices=None):
    """Pay-as-you-go price per second of holding a vNPU of ``shape``: the hypervisor's
    :class:`~tcloud.runtime.hypervisor.PriceTable` unit prices for its owned engine-cycles and its
    scratchpad and HBM windows."""
    from tcloud.runtime.hypervisor import PriceTable

    p = prices or PriceTable()
    hz = clock_mhz * 1e6
    return hz * (shape.mes * p.me_cycle + shape.ves * p.ve_cycle + shape.sram_kib * p.sram_kib_cycle
                 + shape.hbm_mib * p.hbm_mib_cycle)


def best_batch(curve, slo, divisor=2.0):
    """Largest batch whose latency is at most ``slo / divisor`` (Nexus's rule: a request may wait one
    batch and then be served in the next); 0 if even batch 1 is too slow."""
    ok = np.flatnonzero(curve[1:] <= slo / divisor)
    return int(ok[-1] + 1) if ok.size else 0


def fits_per_pnpu(config, shape):
    """How many vNPUs of ``shape`` the allocator places on one empty pNPU."""
    from .placement import Cluster

    one = Cluster(1, 1, config)
    count = 0
    while True:
        try:
            one.place(0, shape)
        except ClusterError:
            return count
        count += 1


def make_context(models, table, pnpus, load, interval=1.0, reference=None, load_bandwidth=DEFAULT_LOAD_BANDWIDTH,
                 charge_neighbours=True):
    """The :class:`Context` for ``models`` at ``load`` × the cluster's capacity.

    Capacity: the request rate (split by the models' shares) that ``pnpus`` pNPUs sustain when each
    model runs on vNPUs of the ``reference`` shape (default the second standard one, two MEs and a
    VE) at the largest batch with ``2 × latency <= SLO``. SLO: ``slo_factor`` × the model's batch-1
    latency alone on a whole pNPU (the last standard shape). A new replica loads for its image's
    bytes / ``load_bandwidth`` (bytes per second, :data:`DEFAULT_LOAD_BANDWIDTH`; ``inf``: loading
    is free, as before it was charged). With ``charge_neighbours`` a replica whose pNPU holds another
    model runs its curve × the table's :meth:`~.service.ServiceTable.slowdown_next_to` factor.

    Raises
    ------
    ClusterError
        A model's SLO is below its fastest batch-1 latency on every shape (naming the model and
        ``slo_factor``), the table lacks the model, its load bytes or (``charge_neighbours``) a pair's
        slowdown, or ``load_bandwidth`` is not a positive number.
    """
    if isinstance(load, bool) or not isinstance(load, (int, float)) or not 0 < load <= MAX_LOAD:
        raise ClusterError(f"--load must be a positive fraction of capacity, at most {MAX_LOAD:g}, got {load!r}")
    if isinstance(load_bandwidth, bool) or not isinstance(load_bandwidth, (int, float)) or not load_bandwidth > 0:
        raise ClusterError(f"--load-bandwidth must be a positive number of bytes per second (or inf), "
                           f"got {load_bandwidth!r}")
    curves = [{s.label: table.curve(m.name, s.label) for s in table.shapes} for m in models]
    whole = table.shapes[-1].label
    slos = np.array([m.slo_factor * c[whole][1] for m, c in zip(models, curves)])
    for m, c, slo in zip(models, curves, slos):
        fastest = min(curve[1] for curve in c.values())
        if slo < fastest:
            raise ClusterError(f"model {m.name!r}: impossible SLO: field slo_factor={m.slo_factor} gives "
                               f"{slo * 1e6:.1f} us, below its fastest batch-1 latency {fastest * 1e6:.1f} us in "
                               f"{table.describe()}")
    ref = reference or (table.shapes[1] if len(table.shapes) > 1 else table.shapes[0])
    per_pnpu = {s.label: fits_per_pnpu(table.config, s) for s in table.shapes}
    shares = np.array([m.share for m in models], dtype=float)
    shares /= shares.sum()
    per_replica = []
    for m, c, slo in zip(models, curves, slos):
        b = best_batch(c[ref.label], slo)
        if b == 0:
            raise ClusterError(f"model {m.name!r}: impossible SLO: field slo_factor={m.slo_factor} leaves no batch "
                               f"size with 2 x latency within {slo * 1e6:.1f} us on shape {ref.label} in "
                               f"{table.describe()}")
        per_replica.append(b / c[ref.label][b])
    capacity = per_pnpu[ref.label] * pnpus / float(np.sum(shares / np.array(per_replica)))
    prices = {s.label: shape_price(s, table.clock_mhz) for s in table.shapes}
    load_seconds = [{s.label: 0.0 if math.isinf(load_bandwidth) else table.replica_load_bytes(m.name, s.label)
                     / load_bandwidth for s in table.shapes} for m in models]
    slowdown = np.array([[table.slowdown_next_to(m.name, n.name) if charge_neighbours else 1.0 for n in models]
                         for m in models])
    return Context(tuple(models), slos, curves, table.shapes, table.max_batch, load * capacity * shares, pnpus,
                   per_pnpu, interval, prices, load_seconds, slowdown)


class Simulator:
    """The cluster under a policy, one control interval at a time.

    Parameters
    ----------
    context : Context
    cluster : Cluster
    policy : Policy
    arrivals : Arrivals
    shed_factor : float
        Waiting requests older than ``shed_factor × SLO`` are dropped at the end of each interval
        (they count as SLO misses with infinite latency).

    Notes
    -----
    Reallocation is not free. A replica removed from a pNPU finishes the batch it started, and
    only then does a replica added to that pNPU start to load its image over the pNPU's host link
    (``context.load_seconds``; replicas added to one pNPU load one after another); it serves once
    loaded and is held (and charged) meanwhile. A replica removed while it still loads frees its
    engines at once (the link time already queued for it stays spent). The initial plan is loaded
    before the run starts. ``added`` and ``loading_seconds`` count the replicas added by the
    decisions since the measured window began (the last one's load may end after it) and the
    seconds from each decision until the replica serves.

    The service-time table's entries hold for a replica whose pNPU's other vNPUs run its own model
    (or none). A replica next to another model runs its curve × ``context.neighbour_slowdown`` (the
    largest factor among its pNPU's other models), from the plan that placed them on; a busy
    neighbour is assumed, as in the table.
    """

    def __init__(self, context, cluster, policy, arrivals, shed_factor=2.0):
        self.context, self.cluster, self.policy, self.arrivals = context, cluster, policy, arrivals
        self.shed_factor = shed_factor
        self.groups = [ModelGroup(i, slo, curves)
                       for i, (slo, curves) in enumerate(zip(context.slos, context.curves))]
        self.now = self.start = 0.0
        self.refused = self.added = 0
        self.loading_seconds = 0.0
        self.link_free = {}  # pNPU index → when its host link has finished the loads queued on it
        self.draining = {}  # pNPU index → when the last batch of a replica removed from it ends
        self.cost = 0.0
        self.timeline = []
        self.shape_by_label = {s.label: s for s in context.shapes}
        cluster.neighbour_slowdown = context.neighbour_slowdown
        self.apply(policy.reset(context), initial=True)

    def apply(self, plan, initial=False):
        """Carry out ``plan``: remove and place replicas (refusals raise at the start, are counted
        later), then set batch caps and delays. A model keeps the replicas its pNPUs pair best with
        other models (:meth:`~.placement.Cluster.pairing`; among equals the one listed first), and
        lists the kept ones in that order, then the added ones."""
        if plan is None:
            return
        wanted = {}
        self.draining = {p: t for p, t in self.draining.items() if t > self.now}
        for m, labels in plan.replicas.items():  # every removal first, so that additions can use the room
            group, want = self.groups[m], list(labels)
            keep = []
            index = {id(r): i for i, r in enumerate(group.replicas)}
            for replica in sorted(group.replicas, key=self.cluster.pairing):
                if replica.shape.label in want:
                    want.remove(replica.shape.label)
                    keep.append(replica)
                else:
                    self.cluster.remove(replica)
                    busy_until = group.free[index[id(replica)]]
                    if replica.loaded_at > self.now:  # cancelled while loading: it ran no batch
                        self.loading_seconds -= replica.loaded_at - self.now
                    elif busy_until > self.now:
                        self.draining[replica.pnpu] = max(self.draining.get(replica.pnpu, 0.0), busy_until)
            group.free = np.array([group.free[index[id(r)]] for r in keep], dtype=float)
            group.batch = np.array([group.batch[index[id(r)]] for r in keep], dtype=np.int64)
            group.replicas = keep
            wanted[m] = want
        for m, want in wanted.items():
            group = self.groups[m]
            added = []
            for label in want:
                if label not in self.shape_by_label:
                    raise ClusterError(f"policy {self.policy.name}: unknown vNPU shape {label!r}")
                try:
                    added.append(self.cluster.place(m, self.shape_by_label[label]))
                except ClusterError as exc:
                    if initial:
                        raise ClusterError(f"model {self.context.models[m].name!r}: {exc}") from None
                    self.refused += 1
            group.replicas = group.replicas + added
            group.free = np.concatenate((group.free, [self.now if initial else self._ready(r) for r in added]))
            group.batch = np.concatenate((group.batch, np.full(len(added), group.batch[0] if group.batch.size else 1)))
            group.reset_stats()
        if plan.replicas or initial:
            self._charge_neighbours()
        for m, caps in plan.batch.items():
            group = self.groups[m]
            if isinstance(caps, dict):
                caps = [caps[r.shape.label] for r in group.replicas]
            caps = np.broadcast_to(np.asarray(caps, dtype=np.int64), (len(group.replicas),)).copy()
            if caps.size and not (1 <= caps.min() and caps.max() <= self.context.max_batch):
                raise ClusterError(f"policy {self.policy.name}: batch {caps.tolist()} of model "
                                   f"{self.context.models[m].name!r} outside 1..{self.context.max_batch}")
            group.batch = caps
        for m, delay in plan.delay.items():
            self.groups[m].delay = float(delay)

    def _charge_neighbours(self):
        """Set every replica's factor from the models its pNPU holds (see the class notes)."""
        models_on = {}
        for group in self.groups:
            for replica in group.replicas:
                models_on.setdefault(replica.pnpu, set()).add(group.index)
        factors = self.context.neighbour_slowdown
        for group in self.groups:
            group.slowdown = np.array([max((factors[group.index, n] for n in models_on[r.pnpu] if n != group.index),
                                           default=1.0) for r in group.replicas])

    def _ready(self, replica):
        """When an added ``replica`` can start its first batch (see the class notes)."""
        p = replica.pnpu
        start = max(self.now, self.link_free.get(p, 0.0), self.draining.get(p, 0.0))
        replica.loaded_at = self.link_free[p] = start + self.context.load_seconds[replica.model][replica.shape.label]
        self.added += 1
        self.loading_seconds += replica.loaded_at - self.now
        return replica.loaded_at

    def observe(self):
        """The state a policy sees at the end of an interval (per-model arrays)."""
        groups, dt = self.groups, self.context.interval
        return {
            "time": self.now,
            "arrival_rate": np.array([g.i_arrived / dt for g in groups]),
            "queue": np.array([g.queue.size - g.head for g in groups]),
            "served": np.array([g.i_served for g in groups]),
            "good": np.array([g.i_good for g in groups]),
            "p99": np.array([percentile(g.i_hist, 0.99) for g in groups]),
            "replicas": [[r.shape.label for r in g.replicas] for g in groups],
            "batch": [g.batch.copy() for g in groups],
            "max_service": [g.i_max_service.copy() for g in groups],
            "busy": [g.i_busy / dt for g in groups],
            "free_mes": int(self.cluster.free_mes.sum()),
            "free_ves": int(self.cluster.free_ves.sum()),
        }

    def step(self):
        """Simulate one control interval and let the policy decide."""
        dt = self.context.interval
        t1 = round(self.now + dt, 9)
        for group, times in zip(self.groups, self.arrivals.until(t1)):
            group.add_arrivals(times)
            group.run(t1)
        for group in self.groups:
            group.shed(t1 - self.shed_factor * group.slo)
            self.cost += dt * sum(self.context.prices[r.shape.label] for r in group.replicas)
        self.now = t1
        obs = self.observe_last = self.observe()
        self.timeline.append({"time": t1, "replicas": [len(r) for r in obs["replicas"]],
                              "batch": [float(b.mean()) if b.size else 0.0 for b in obs["batch"]],
                              "arrival_rate": obs["arrival_rate"].tolist(), "served": obs["served"].tolist(),
                              "good": obs["good"].tolist()})
        for group in self.groups:
            group.close_interval(np.array([r.spec.mes for r in group.replicas], dtype=float))
        plan = self.policy.decide(obs)
        for group in self.groups:
            group.reset_stats()
        self.apply(plan)

    def run(self, duration, progress=None, warmup=0.0):
        """Simulate ``warmup`` + ``duration`` seconds and return :meth:`results` of the last
        ``duration`` (the warm-up lets adaptive policies settle). ``progress(now, total)``."""
        total = warmup + duration
        intervals = {}
        for name, value in (("warmup", warmup), ("duration", duration)):
            count = round(value / self.context.interval) if math.isfinite(value) else -1
            if count < (name == "duration") or not math.isclose(count * self.context.interval, value,
                                                                 rel_tol=1e-9, abs_tol=1e-12):
                raise ClusterError(f"--{name} {value!r} must be a whole number of control intervals (--interval "
                                   f"{self.context.interval:g} s){', at least one' if name == 'duration' else ''}")
            intervals[name] = count
        for _ in range(intervals["warmup"]):
            self.step()
            if progress:
                progress(self.now, total)
        self.start = self.now
        self.cost = 0.0
        for g in self.groups:
            g.hist[:] = 0
            g.arrived = g.served = g.good = g.dropped = g.batches = 0
            g.busy_engine_seconds = 0.0
        self.refused = self.added = 0
        self.loading_seconds = 0.0
        for _ in range(intervals["duration"]):
            self.step()
            if progress:
                progress(self.now, total)
        return self.results()

    def results(self):
        """Overall and per-model metrics (requests/s, seconds, fractions, price units)."""
        t = max(self.now - self.start, 1e-12)
        per_model = {}
        for model, g, slo in zip(self.context.models, self.groups, self.context.slos):
            per_model[model.name] = _metrics(g.arrived, g.served, g.good, g.dropped, g.hist, t, slo)
        total_hist = sum(g.hist for g in self.groups)
        served = sum(g.served for g in self.groups)
        overall = _metrics(sum(g.arrived for g in self.groups), served, sum(g.good for g in self.groups),
                           sum(g.dropped for g in self.groups), total_hist, t, None)
        busy = sum(g.busy_engine_seconds for g in self.groups)
        overall["utilization"] = busy / (self.cluster.total_mes * t)
        overall["cost"] = self.cost
        overall["cost_per_1000"] = 1000 * self.cost / served if served else float("inf")
        overall["refused_placements"] = self.refused
        overall["replicas_added"] = self.added
        overall["replica_seconds_loading"] = self.loading_seconds
        overall["batches"] = sum(g.batches for g in self.groups)
        for model, g in zip(self.context.models, self.groups):
            per_model[model.name]["utilization"] = g.busy_engine_seconds / (self.cluster.total_mes * t)
        return {"overall": overall, "models": per_model}


def _metrics(arrived, served, good, dropped, hist, seconds, slo):
    out = {"offered": arrived / seconds, "throughput": served / seconds, "goodput": good / seconds,
           "slo_attainment": good / (served + dropped) if served + dropped else 1.0, "dropped": dropped,
           "p50": percentile(hist, 0.5), "p99": percentile(hist, 0.99)}
    if slo is not None:
        out["slo"] = float(slo)
    return out
