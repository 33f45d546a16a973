"""Serving policies behind one interface: observe the cluster → allocation changes and batch sizes.

A policy has :meth:`Policy.reset` (the first :class:`~.simulate.Plan`, from the
:class:`~.simulate.Context`) and :meth:`Policy.decide` (after each control interval, from the
observation dict of :meth:`~.simulate.Simulator.observe`; ``None`` keeps everything).

* :class:`Static` — replicas per model in proportion to its provisioned load over its per-replica
  throughput, all of the reference shape, filling the cluster; fixed batch: the largest with
  ``2 × latency <= SLO``.
* :class:`Clipper` — Static's replicas; AIMD batch size per replica: +1 while the replica's longest
  batch of the interval took at most ``target × SLO``, × 0.9 (at least 1) otherwise.
* :class:`Triton` — Static's replicas; dynamic batching with max batch size (Static's) and a max
  queue delay ``delay × SLO``.
* :class:`Nexus` — batch from the SLO budget per shape, replicas re-planned every ``epoch``
  intervals from the measured (EWMA) arrival rates: whole replicas of the most engine-efficient shape
  plus one residual replica of the smallest shape that carries the rest (squishy bin packing onto
  vNPU shapes), scaled down to the cluster's engines when over-subscribed.
"""

from abc import ABC, abstractmethod

import numpy as np

from .simulate import Plan, best_batch
from .workload import ClusterError


class Policy(ABC):
    """Base class: ``name``, :meth:`reset`, :meth:`decide`."""

    name = "policy"

    @abstractmethod
    def reset(self, context):
        """The allocation and batch sizes to start with."""

    def decide(self, observation):
        """Changes after an interval (``None``: none)."""
        return None


def reference_shape(context):
    return context.shapes[1] if len(context.shapes) > 1 else context.shapes[0]


def proportional(weights, total):
    """Integers ≥ 1 summing to ``total`` in proportion to ``weights`` (largest remainder)."""
    weights = np.asarray(weights, dtype=float)
    if total < len(weights):
        raise ClusterError(f"allocation does not fit: {len(weights)} models need at least one replica each, the "
                           f"cluster holds {total}")
    share = weights / weights.sum() * (total - len(weights))
    counts = np.floor(share).astype(int) + 1
    rest = total - counts.sum()
    counts[np.argsort(-(share - np.floor(share)), kind="stable")[:rest]] += 1
    return counts


class Static(Policy):
    """Fixed replicas and batch sizes (see the module docstring)."""

    name = "static"

    def reset(self, context):
        self.context = context
        shape = reference_shape(context)
        self.batch = [best_batch(c[shape.label], slo) for c, slo in zip(context.curves, context.slos)]
        per_replica = np.array([b / c[shape.label][b] for b, c in zip(self.batch, context.curves)])
        slots = context.per_pnpu[shape.label] * context.pnpus
        counts = proportional(context.rates / per_replica, slots)
        return Plan(replicas={m: [shape.label] * int(k) for m, k in enumerate(counts)},
                    batch=dict(enumerate(self.batch)))


class Clipper(Static):
    """Static's replicas with AIMD batch sizes per replica (see the module docstring)."""

    name = "clipper"

    def __init__(self, target=0.5, step=1, backoff=0.9):
        self.target, self.step, self.backoff = target, step, backoff

    def reset(self, context):
        plan = super().reset(context)
        plan.batch = {m: 1 for m in plan.replicas}
        return plan

    def decide(self, observation):
        plan = Plan()
        for m, (caps, longest) in enumerate(zip(observation["batch"], observation["max_service"])):
            limit = self.target * self.context.slos[m]
            grown = np.minimum(caps + self.step, self.context.max_batch)
            shrunk = np.maximum(np.floor(caps * self.backoff).astype(np.int64), 1)
            plan.batch[m] = np.where(longest <= limit, grown, shrunk)
        return plan


class Triton(Static):
    """Static's replicas with a max queue delay (see the module docstring)."""

    name = "triton"

    def __init__(self, delay=0.2):
        self.delay = delay

    def reset(self, context):
        plan = super().reset(context)
        plan.delay = {m: self.delay * slo for m, slo in enumerate(context.slos)}
        return plan


class Nexus(Policy):
    """Batch-aware re-planning with squishy packing onto vNPU shapes (see the module docstring)."""

    name = "nexus"

    def __init__(self, epoch=2, headroom=1.15, smoothing=0.5, fill=True):
        self.epoch, self.headroom, self.smoothing, self.fill = epoch, headroom, smoothing, fill

    def reset(self, context):
        self.context, self.ticks = context, 0
        self.rate = np.array(context.rates, dtype=float)
        self.options = []  # per model: (label, mes, ves, batch, throughput) per usable shape
        for c, slo in zip(context.curves, context.slos):
            found = []
            for shape in context.shapes:
                b = best_batch(c[shape.label], slo)
                if b:
                    found.append((shape.label, shape.mes, shape.ves, b, b / c[shape.label][b]))
            self.options.append(found)
        return self.plan()

    def plan(self):
        context = self.context
        replicas, batch = {}, {}
        whole = context.shapes[-1]
        me_total, ve_total = whole.mes * context.pnpus, whole.ves * context.pnpus
        for m, options in enumerate(self.options):
            demand = self.rate[m] * self.headroom
            best = max(options, key=lambda o: (o[4] / max(o[1] / whole.mes, o[2] / whole.ves), -o[1]))
            count = int(demand // best[4])
            labels = [best[0]] * count
            rest = demand - count * best[4]
            if rest > 0 or not labels:
                small = [o for o in options if o[4] >= rest]
                labels.append(min(small, key=lambda o: (o[1] + o[2], o[1]))[0] if small else best[0])
            replicas[m] = labels
            batch[m] = {o[0]: o[3] for o in options}
        replicas = self.fit(replicas, me_total, ve_total)
        if self.fill:
            self.grow(replicas, me_total, ve_total)
        return Plan(replicas=replicas, batch=batch, delay={m: 0.0 for m in replicas})

    def fit(self, replicas, me_total, ve_total):
        """Scale the counts down, the largest first, until the MEs and VEs suffice."""
        cost = {s.label: (s.mes, s.ves) for s in self.context.shapes}

        def used():
            return (sum(cost[l][0] for ls in replicas.values() for l in ls),
                    sum(cost[l][1] for ls in replicas.values() for l in ls))

        mes, ves = used()
        while (mes > me_total or ves > ve_total) and any(len(ls) > 1 for ls in replicas.values()):
            m = max((k for k in replicas if len(replicas[k]) > 1),
                    key=lambda k: len(replicas[k]) - self.rate[k] / self.rate.sum() * sum(map(len, replicas.values())))
            removed = replicas[m].pop()
            mes, ves = mes - cost[removed][0], ves - cost[removed][1]
        return replicas

    def grow(self, replicas, me_total, ve_total):
        """Spend the engines left on more replicas of each model's best shape, the model with the
        highest demand over planned throughput first (a serving cluster's spare capacity absorbs
        bursts instead of idling)."""
        best = {m: max(o, key=lambda x: x[4]) for m, o in enumerate(self.options)}
        thr = {m: {o[0]: o[4] for o in options} for m, options in enumerate(self.options)}
        shape = {s.label: s for s in self.context.shapes}
        mes = sum(shape[l].mes for ls in replicas.values() for l in ls)
        ves = sum(shape[l].ves for ls in replicas.values() for l in ls)
        capacity = {m: sum(thr[m][l] for l in ls) for m, ls in replicas.items()}
        while True:
            m = max(replicas, key=lambda k: self.rate[k] / capacity[k])
            label = best[m][0]
            if mes + shape[label].mes > me_total or ves + shape[label].ves > ve_total:
                return replicas
            replicas[m].append(label)
            capacity[m] += thr[m][label]
            mes, ves = mes + shape[label].mes, ves + shape[label].ves

    def decide(self, observation):
        self.rate = (1 - self.smoothing) * self.rate + self.smoothing * observation["arrival_rate"]
        self.ticks += 1
        if self.ticks % self.epoch:
            return None
        return self.plan()


POLICIES = {"static": Static, "clipper": Clipper, "triton": Triton, "nexus": Nexus}
"""The baselines: name → class (``rl`` is :class:`~.rl.ShippedPolicy`)."""


def make_policy(name, **options):
    """An instance of policy ``name`` (a baseline or ``rl``); :class:`ClusterError` naming the known ones."""
    if name == "rl":
        from .rl import ShippedPolicy

        return ShippedPolicy(**options)
    if name not in POLICIES:
        raise ClusterError(f"unknown policy {name!r}; choose one of {', '.join([*POLICIES, 'rl'])}")
    return POLICIES[name](**options)
