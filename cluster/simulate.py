"""Batch-granularity simulation of the cluster in virtual time.

Why not one event per batch (SimPy or a heap): counted first, a saturated cluster of 1000 pNPUs
completes 10⁵–10⁶ batches per simulated second (several thousand replicas, batch times of
0.01–10 ms; with the ``small`` table's six models about 10⁶), so ten simulated minutes are 10⁸–10⁹
events, each a Python generator resumption in SimPy (microseconds): hours, against a 2-minute
target. SimPy serves instead as the per-request reference (:mod:`.reference`) that validates this
simulator at small scale.

How this one works: each model has one FIFO queue and a group of replicas (vNPUs). Within a control
interval, every replica's next batches are laid out as *slots* assuming full batches; all slots of a
model are sorted by start time and the requests each takes follow from one vectorised scan,

    C_j = min(C_{j-1} + b_j, A(s_j))  =>  C_j = P_j + min(C_0, min_{k<=j} (A(s_k) - P_k)),

with ``A(s)`` the requests arrived by ``s`` and ``P`` the prefix sum of batch caps. The slots are
exact up to the first one that was not full (an idle replica, a partial batch, or a Triton-style
replica that waits for a fuller batch): that one is applied as well, and the slots starting after
its replica's next event are laid out again. A saturated model thus advances a whole interval in one
scan, and the result is the same schedule as the per-request simulation (the test checks it).
Latencies are computed per request (vectorised) into log-spaced histograms.
"""

import bisect
from dataclasses import dataclass, field

import numpy as np

from .workload import ClusterError

EDGES = np.geomspace(1e-7, 1e4, 6001)
"""Latency histogram bin edges (seconds): 0.42 % per bin."""


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
        one cap per replica (in the order of :meth:`Simulator.observe`'s ``replicas``).
    delay : dict, optional
        Model index → seconds a replica waits for a full batch (0: start with whatever is queued).
    """

    replicas: dict = field(default_factory=dict)
    batch: dict = field(default_factory=dict)
    delay: dict = field(default_factory=dict)


class ModelGroup:
    """One model's queue and replicas (see the module docstring)."""

    SEQUENTIAL_BATCHES = 4096
    """Events simulated one at a time when a round of slots made little progress."""
    SLOTS_WORTH_A_ROUND = 256
    """A round that applies fewer slots than this (or a quarter of its slots) costs more than
    simulating those batches one at a time (a few microseconds each)."""

    def __init__(self, index, slo, curves):
        self.index, self.slo, self.curves = index, slo, curves
        self.queue = np.empty(0)
        self.head = 0
        self.replicas = []
        self.free = np.empty(0)
        self.batch = np.empty(0, dtype=np.int64)
        self.delay = 0.0
        self.chunk = 64
        self.horizon = None
        self._arrivals = None
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
        return np.array([self.curves[r.shape.label] for r in self.replicas]).reshape(len(self.replicas), -1)

    def run(self, t1):
        """Serve the queue with the replicas until ``t1``."""
        if not self.replicas:
            return
        lat = self.shape_curves()
        full_time = lat[np.arange(len(self.replicas)), self.batch]
        if self.horizon is None:
            self.horizon = 8 * float(full_time.max())
        uniform = self.delay == 0 and len({r.shape.label for r in self.replicas}) == 1
        light, sequential = True, 0
        self._arrivals = None  # the queue as a list, for _sequential (built once per call)
        while True:
            active = np.flatnonzero(self.free < t1)
            if not active.size:
                break
            if uniform and light and self.head < self.queue.size and self._unqueued(lat[0, 1]):
                continue
            if sequential:
                self._sequential(t1, lat, sequential)
                sequential = 0
                continue
            limit = min(t1, float(self.free[active].min()) + self.horizon)
            count = np.clip(np.ceil((limit - self.free[active]) / full_time[active]).astype(np.int64), 1, None)
            rep = np.repeat(active, count)
            ordinal = np.arange(rep.size) - np.repeat(np.cumsum(count) - count, count)
            start = self.free[rep] + ordinal * full_time[rep]
            slots = self._scan(rep, start, lat, t1)
            last = np.append(rep[1:] != rep[:-1], True)
            assumed = np.where(last, limit, np.append(start[1:], limit))
            moved = np.where(last, slots["next"] < limit, slots["next"] != assumed)
            changed = ~slots["take"] & ~slots["idle"]  # a replica that waits for a fuller batch
            order = np.lexsort((rep, start))
            stop = self._apply(rep[order], ordinal[order], start[order], slots["n"][order], slots["next"][order],
                               changed[order], moved[order], assumed[order], lat)
            light = not slots["n"][order][0]
            self.horizon = self.horizon * 2 if stop == rep.size else max(self.horizon / 2, float(full_time.min()))
            if stop < min(rep.size // 4, self.SLOTS_WORTH_A_ROUND):
                sequential = self.SEQUENTIAL_BATCHES  # slots advance too little: a stretch batch by batch

    def _scan(self, rep, start, lat, t1):
        """Requests taken by each slot (``rep``, ``start``) assuming every slot starts a batch, the
        slot's own decision (``take``: start a batch rather than wait; ``idle``: nothing waiting),
        its batch size and its replica's next event; arrays in the slots' order."""
        queue, head = self.queue, self.head
        order = np.lexsort((rep, start))
        r, s = rep[order], start[order]
        cap = self.batch[r]
        b = cap
        arrived = np.searchsorted(queue, s, side="right")
        prefix = np.cumsum(b)
        taken = prefix + np.minimum(np.minimum.accumulate(arrived - prefix), head)
        before = np.concatenate(([head], taken[:-1]))
        last = queue.size - 1
        oldest = queue[np.minimum(before, last)] if queue.size else np.full(r.size, np.inf)
        waiting = arrived - before
        decide = (waiting >= cap) | (self.delay == 0) | (s >= oldest + self.delay)
        decide &= waiting > 0
        n = np.where(decide, np.minimum(cap, waiting), 0)
        nxt = s + lat[r, n]
        idle = waiting <= 0
        nxt[idle] = np.where(before[idle] <= last, oldest[idle], t1)
        wait = ~decide & ~idle
        if wait.any():
            fill = before[wait] + cap[wait] - 1
            full_at = np.where(fill <= last, queue[np.minimum(fill, last)] if queue.size else np.inf, np.inf)
            nxt[wait] = np.minimum(full_at, oldest[wait] + self.delay)
        out = {"take": decide, "next": nxt, "n": n, "idle": idle}
        back = np.empty_like(order)
        back[order] = np.arange(order.size)
        return {k: v[back] for k, v in out.items()}

    def _sequential(self, t1, lat, batches):
        """Up to ``batches`` events (batches or waits) one at a time, earliest replica first (ties:
        lowest index, as the slots are ordered), for the stretches where few of a round's slots are
        exact (many replicas, short partial batches and idle gaps).

        Free replicas wait in a pool behind the model's one batcher, as in Triton's dynamic batcher
        (one per model, dispatching to whichever instance is free): the batcher forms the next batch
        when it is due (at once when the queue holds a full batch or without a queue delay; else
        when the queue fills to the cap or its oldest request has waited the delay) and hands it to
        the lowest-numbered free replica. With a queue delay this is one event per batch; a batcher
        per replica, each waiting for its own fuller batch, is one event per free replica per
        arrival (what made Triton-style runs at 250 × 4 pNPUs not finish). The schedule is the
        same: the replicas waiting on their own would all be woken at the due time, and the
        lowest-numbered would take the batch."""
        import heapq

        queue = self.queue
        if self._arrivals is None:
            self._arrivals = queue.tolist()
        arrivals = self._arrivals
        size, head = len(arrivals), self.head
        caps, delay = self.batch.tolist(), self.delay
        busy, idle = [], []
        for r, f in enumerate(self.free.tolist()):
            if f < t1:
                if bisect.bisect_right(arrivals, f, head) > head or f == t1:
                    busy.append((f, r))
                else:
                    idle.append(r)
        heapq.heapify(busy)
        heapq.heapify(idle)
        ends, counts, reps = [], [], []
        for _ in range(batches):
            due = self._due(arrivals, head, caps[idle[0]], t1) if idle else t1
            if idle and (not busy or due < busy[0][0]):
                if due >= t1:
                    break
                f, r = due, heapq.heappop(idle)
            elif busy:
                f, r = heapq.heappop(busy)
            else:
                break
            waiting = bisect.bisect_right(arrivals, f, head) - head
            cap = caps[r]
            if waiting <= 0 or (delay > 0 and waiting < cap and f < arrivals[head] + delay):
                heapq.heappush(idle, r)  # free: the batcher hands it the next batch when due
                self.free[r] = f
                continue
            n = min(cap, waiting)
            nxt = f + lat[r, n]
            ends.append(nxt)
            counts.append(n)
            reps.append(r)
            head += n
            self.free[r] = nxt
            if nxt < t1:
                heapq.heappush(busy, (nxt, r))
        for r in idle:
            self.free[r] = max(self.free[r], self._due(arrivals, head, caps[r], t1))
        if counts:
            counts, reps = np.array(counts), np.array(reps)
            self._record(np.repeat(ends, counts) - queue[self.head:head])
            service = lat[reps, counts]
            np.add.at(self.i_busy, reps, service)
            np.maximum.at(self.i_max_service, reps, service)
            self.batches += counts.size
            self.head = head

    def _due(self, arrivals, head, cap, t1):
        """When the batcher forms the next batch for a free replica of batch cap ``cap``: the next
        arrival without a queue delay; with one, when the queue holds ``cap`` requests or its oldest
        has waited the delay (``t1`` if no request is queued)."""
        if head >= len(arrivals):
            return t1
        if self.delay <= 0:
            return arrivals[head]
        fill = head + cap - 1
        return min(arrivals[fill] if fill < len(arrivals) else float("inf"), arrivals[head] + self.delay)

    def _apply(self, rep, ordinal, start, n, nxt, changed, moved, assumed, lat):
        """Apply the exact prefix of a round's slots (in time order) and return its length.

        A slot is exact when every slot before it is. A slot whose decision (start a batch or wait)
        was assumed wrongly is still exact itself, but the scan gave the slots after it the wrong
        requests: it ends the prefix. After a slot whose replica's next event was assumed wrongly,
        only slots of other replicas that start before both the true and the assumed event stay
        exact."""
        bound = np.where(moved, np.minimum(nxt, assumed), np.inf)
        bound = np.concatenate(([np.inf], np.minimum.accumulate(bound)[:-1]))
        first_moved = np.full(len(self.replicas), np.iinfo(np.int64).max)
        np.minimum.at(first_moved, rep[moved], ordinal[moved])
        bad = (start >= bound) | (ordinal > first_moved[rep])
        if changed.any():
            bad[np.argmax(changed) + 1:] = True
        stop = int(np.argmax(bad)) if bad.any() else rep.size
        rep, n, nxt = rep[:stop], n[:stop], nxt[:stop]
        served = int(n.sum())
        self.batches += int(np.count_nonzero(n))
        if served:
            end_head = self.head + served
            self._record(np.repeat(nxt, n) - self.queue[self.head:end_head])
            service = lat[rep, n]
            np.add.at(self.i_busy, rep, service)
            np.maximum.at(self.i_max_service, rep, service)
            self.head = end_head
        np.maximum.at(self.free, rep, nxt)
        return stop

    def _unqueued(self, service):
        """Serve at once, alone, the waiting requests that find a free replica on arrival (the light
        regime, where slots would advance one request at a time). Only for replicas of one shape
        without a queue delay: then which replica serves does not matter, and the free times after
        the stretch follow from counting. Returns whether any request was served."""
        queue, free = self.queue[self.head:self.head + self.chunk], self.free
        count = len(free)
        busy_before = count - np.searchsorted(np.sort(free), queue, side="right")
        started = np.arange(queue.size)
        busy_new = started - np.searchsorted(queue + service, queue, side="right")
        fits = busy_before + busy_new < count
        stop = int(np.argmin(fits)) if not fits.all() else queue.size
        self.chunk = self.chunk * 2 if stop == queue.size else max(64, self.chunk // 4)
        if stop == 0:
            return False
        served = queue[:stop]
        self.batches += stop
        self._record(np.full(stop, service))
        last = served[-1]
        ends = served + service
        available = np.flatnonzero(free <= last)
        running = ends[ends > last]
        free[available] = np.concatenate((running, np.full(available.size - running.size, last)))
        self.i_busy += stop * service / count
        self.i_max_service = np.maximum(self.i_max_service, service)
        self.head += stop
        return True

    def _record(self, latency):
        bins = np.searchsorted(EDGES, latency)
        counts = np.bincount(bins, minlength=len(EDGES) + 1)
        good = int(np.count_nonzero(latency <= self.slo))
        self.i_hist += counts
        self.i_served += latency.size
        self.i_good += good

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


def make_context(models, table, pnpus, load, interval=1.0, reference=None):
    """The :class:`Context` for ``models`` at ``load`` × the cluster's capacity.

    Capacity: the request rate (split by the models' shares) that ``pnpus`` pNPUs sustain when each
    model runs on vNPUs of the ``reference`` shape (default the second standard one, two MEs and a
    VE) at the largest batch with ``2 × latency <= SLO``. SLO: ``slo_factor`` × the model's batch-1
    latency alone on a whole pNPU (the last standard shape).

    Raises
    ------
    ClusterError
        A model's SLO is below its fastest batch-1 latency on every shape (naming the model and
        ``slo_factor``), or the table lacks the model.
    """
    if not (isinstance(load, (int, float)) and load > 0):
        raise ClusterError(f"--load must be a positive fraction of capacity, got {load!r}")
    curves = [{s.label: table.curve(m.name, s.label) for s in table.shapes} for m in models]
    whole = table.shapes[-1].label
    slos = np.array([m.slo_factor * c[whole][1] for m, c in zip(models, curves)])
    for m, c, slo in zip(models, curves, slos):
        fastest = min(curve[1] for curve in c.values())
        if slo < fastest:
            raise ClusterError(f"model {m.name!r}: impossible SLO: field slo_factor={m.slo_factor} gives "
                               f"{slo * 1e6:.1f} us, below its fastest batch-1 latency {fastest * 1e6:.1f} us")
    ref = reference or (table.shapes[1] if len(table.shapes) > 1 else table.shapes[0])
    per_pnpu = {s.label: fits_per_pnpu(table.config, s) for s in table.shapes}
    shares = np.array([m.share for m in models], dtype=float)
    shares /= shares.sum()
    per_replica = []
    for m, c, slo in zip(models, curves, slos):
        b = best_batch(c[ref.label], slo)
        if b == 0:
            raise ClusterError(f"model {m.name!r}: impossible SLO: field slo_factor={m.slo_factor} leaves no batch "
                               f"size with 2 x latency within {slo * 1e6:.1f} us on shape {ref.label}")
        per_replica.append(b / c[ref.label][b])
    capacity = per_pnpu[ref.label] * pnpus / float(np.sum(shares / np.array(per_replica)))
    prices = {s.label: shape_price(s, table.clock_mhz) for s in table.shapes}
    return Context(tuple(models), slos, curves, table.shapes, table.max_batch, load * capacity * shares, pnpus,
                   per_pnpu, interval, prices)


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
    """

    def __init__(self, context, cluster, policy, arrivals, shed_factor=2.0):
        self.context, self.cluster, self.policy, self.arrivals = context, cluster, policy, arrivals
        self.shed_factor = shed_factor
        self.groups = [ModelGroup(i, slo, curves)
                       for i, (slo, curves) in enumerate(zip(context.slos, context.curves))]
        self.now = self.start = 0.0
        self.refused = 0
        self.cost = 0.0
        self.timeline = []
        self.shape_by_label = {s.label: s for s in context.shapes}
        self.apply(policy.reset(context), initial=True)

    def apply(self, plan, initial=False):
        """Carry out ``plan``: remove and place replicas (refusals raise at the start, are counted
        later), then set batch caps and delays."""
        if plan is None:
            return
        wanted = {}
        for m, labels in plan.replicas.items():  # every removal first, so that additions can use the room
            group, want = self.groups[m], list(labels)
            keep = []
            for replica in group.replicas:
                if replica.shape.label in want:
                    want.remove(replica.shape.label)
                    keep.append(replica)
                else:
                    self.cluster.remove(replica)
            index = {id(r): i for i, r in enumerate(group.replicas)}
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
            group.free = np.concatenate((group.free, np.full(len(added), self.now)))
            group.batch = np.concatenate((group.batch, np.full(len(added), group.batch[0] if group.batch.size else 1)))
            group.reset_stats()
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
        for _ in range(int(round(warmup / self.context.interval))):
            self.step()
            if progress:
                progress(self.now, total)
        self.start = self.now
        self.cost = 0.0
        for g in self.groups:
            g.hist[:] = 0
            g.arrived = g.served = g.good = g.dropped = g.batches = 0
            g.busy_engine_seconds = 0.0
        for _ in range(int(round(duration / self.context.interval))):
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
