"""Serving policies behind one interface: observe the cluster → allocation changes and batch sizes.

A policy has :meth:`Policy.reset` (the first :class:`~.simulate.Plan`, from the
:class:`~.simulate.Context`) and :meth:`Policy.decide` (after each control interval, from the
observation dict of :meth:`~.simulate.Simulator.observe`; ``None`` keeps everything).

* :class:`Static` — what an operator deploys from the service-time table and the provisioned mean
  rates: replicas of the reference shape (two MEs and a VE: on ``tpu_like`` two fit a pNPU, as two
  of one ME do, so it is the most engine-efficient shape for every model) in proportion to each
  model's rate over its per-replica throughput, filling the cluster; fixed batch: the largest with
  ``divisor × latency <= SLO`` (``divisor`` 2: a request waits at most one batch and is served in
  the next; 1.5, 1.75 and 3 sustained no more on the ``tpu_like`` benchmark).
* :class:`Clipper` — Static's replicas; AIMD batch size per replica, as Clipper adapts it after every
  batch: +1 while a batch takes at most ``target × SLO``, × 0.9 (at least 1) otherwise. The
  simulator decides once per control interval, so each decision replays one AIMD step per batch the
  replica ran in the interval: the first judged on the longest batch it measured, the next ones on
  the latency of a full batch at the current cap (the service-time curve).
* :class:`Triton` — Static's replicas; dynamic batching with max batch size (Static's) and a max
  queue delay ``delay × SLO``.
* :class:`Nexus` — batch from the SLO budget per shape, replicas re-planned every ``epoch``
  intervals from the measured (EWMA) arrival rates: whole replicas of the most engine-efficient shape
  plus one residual replica of the smallest shape that carries the rest (squishy bin packing onto
  vNPU shapes) for ``headroom`` × the rate; when that over-subscribes the cluster, replicas are
  removed (and then moved) so that every model keeps the same spare capacity in square-root-staffing
  units; spare engines go to the model with the least.
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
    divisor = 2.0
    """The fixed batch is the largest with ``divisor × latency <= SLO``."""
    provision = None
    """Per model, a factor on the mean rate the replicas are split by (``None``: the mean rates;
    a trace's peak-to-mean ratios: each model provisioned for its peak)."""

    def __init__(self, divisor=2.0, provision=None):
        self.divisor = divisor
        self.provision = None if provision is None else np.asarray(provision, dtype=float)

    def reset(self, context):
        self.context = context
        shape = reference_shape(context)
        self.batch = [max(best_batch(c[shape.label], slo, self.divisor), 1) for c, slo in zip(context.curves, context.slos)]
        per_replica = np.array([b / c[shape.label][b] for b, c in zip(self.batch, context.curves)])
        slots = context.per_pnpu[shape.label] * context.pnpus
        rates = context.rates if self.provision is None else context.rates * self.provision
        counts = proportional(rates / per_replica, slots)
        return Plan(replicas={m: [shape.label] * int(k) for m, k in enumerate(counts)},
                    batch=dict(enumerate(self.batch)))


class Clipper(Static):
    """Static's replicas with AIMD batch sizes per replica (see the module docstring)."""

    name = "clipper"

    def __init__(self, target=0.5, step=1, backoff=0.9, max_steps=256):
        self.target, self.step, self.backoff, self.max_steps = target, step, backoff, max_steps

    def reset(self, context):
        plan = super().reset(context)
        plan.batch = {m: 1 for m in plan.replicas}
        return plan

    def aimd(self, caps, too_slow):
        """One AIMD step: the caps after batches that were (``too_slow``) or were not too slow."""
        grown = np.minimum(caps + self.step, self.context.max_batch)
        shrunk = np.maximum(np.floor(caps * self.backoff).astype(np.int64), 1)
        return np.where(too_slow, shrunk, grown)

    def decide(self, observation):
        plan = Plan()
        dt = self.context.interval
        for m, (labels, caps, longest, busy) in enumerate(zip(observation["replicas"], observation["batch"],
                                                              observation["max_service"], observation["busy"])):
            if not labels:
                continue
            limit = self.target * self.context.slos[m]
            curves = np.array([self.context.curves[m][label] for label in labels])
            rows = np.arange(len(labels))
            batches = np.clip(np.ceil(busy * dt / curves[rows, caps]), 1, self.max_steps).astype(np.int64)
            caps = self.aimd(caps, longest > limit)
            for i in range(1, int(batches.max())):
                caps = np.where(i < batches, self.aimd(caps, curves[rows, caps] > limit), caps)
            plan.batch[m] = caps
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
        whole = context.shapes[-1]
        me_total, ve_total = whole.mes * context.pnpus, whole.ves * context.pnpus
        replicas = self.fit(self.pack(self.rate * self.headroom), me_total, ve_total)
        self.balance(replicas, me_total, ve_total)
        if self.fill:
            self.grow(replicas, me_total, ve_total)
        batch = {m: {o[0]: o[3] for o in options} for m, options in enumerate(self.options)}
        return Plan(replicas=replicas, batch=batch, delay={m: 0.0 for m in replicas})

    def pack(self, demand):
        """Per model: whole replicas of its most engine-efficient shape for ``demand`` (requests/s)
        and one replica of the smallest shape that carries the rest."""
        whole = self.context.shapes[-1]
        replicas = {}
        for m, options in enumerate(self.options):
            best = max(options, key=lambda o: (o[4] / max(o[1] / whole.mes, o[2] / whole.ves), -o[1]))
            count = int(demand[m] // best[4])
            labels = [best[0]] * count
            rest = demand[m] - count * best[4]
            if rest > 0 or not labels:
                small = [o for o in options if o[4] >= rest]
                labels.append(min(small, key=lambda o: (o[1] + o[2], o[1]))[0] if small else best[0])
            replicas[m] = labels
        return replicas

    def fit(self, replicas, me_total, ve_total):
        """Remove replicas until the MEs and VEs suffice, each time from the model with the most
        spare capacity in square-root-staffing units: ``(capacity − rate) / sqrt(rate × one
        replica's throughput)``, the number of standard deviations of Poisson load it can absorb
        (the Halfin–Whitt rule). An overloaded cluster thus leaves every model the same safety
        margin, which a model served by one or two replicas needs as much as one served by a
        thousand. (Cutting the models with the most replicas first, as before, starved BERT;
        cutting every model's demand by the same factor left single-replica DLRM 91 % busy and late.)"""
        cost = {s.label: (s.mes, s.ves) for s in self.context.shapes}
        thr = [{o[0]: o[4] for o in options} for options in self.options]
        capacity = {m: sum(thr[m][l] for l in ls) for m, ls in replicas.items()}
        mes = sum(cost[l][0] for ls in replicas.values() for l in ls)
        ves = sum(cost[l][1] for ls in replicas.values() for l in ls)
        while (mes > me_total or ves > ve_total) and any(len(ls) > 1 for ls in replicas.values()):
            m = max((k for k in replicas if len(replicas[k]) > 1),
                    key=lambda k: self.margin(k, capacity[k] - thr[k][replicas[k][-1]]))
            removed = replicas[m].pop()
            capacity[m] -= thr[m][removed]
            mes, ves = mes - cost[removed][0], ves - cost[removed][1]
        return replicas

    def margin(self, m, capacity):
        """Spare capacity of model ``m`` in square-root-staffing units (see :meth:`fit`)."""
        rate = max(self.rate[m], 1e-9)
        return (capacity - rate) / np.sqrt(rate * max(o[4] for o in self.options[m]))

    def balance(self, replicas, me_total, ve_total):
        """Move replicas, one at a time, from the model with the largest margin (after the move)
        to the one with the smallest while that raises the smallest: the demand-driven plan gives
        a model served by one replica no second one however busy the first (DLRM at 91 %)."""
        whole = self.context.shapes[-1]
        best = {m: max(o, key=lambda x: (x[4] / max(x[1] / whole.mes, x[2] / whole.ves), -x[1]))
                for m, o in enumerate(self.options)}
        thr = [{o[0]: o[4] for o in options} for options in self.options]
        shape = {s.label: s for s in self.context.shapes}
        capacity = {m: sum(thr[m][l] for l in ls) for m, ls in replicas.items()}
        mes = sum(shape[l].mes for ls in replicas.values() for l in ls)
        for _ in range(sum(map(len, replicas.values()))):
            low = min(replicas, key=lambda k: self.margin(k, capacity[k]))
            donors = [k for k in replicas if k != low and len(replicas[k]) > 1]
            if not donors:
                return
            high = max(donors, key=lambda k: self.margin(k, capacity[k] - thr[k][replicas[k][-1]]))
            give, take = shape[replicas[high][-1]], best[low]
            after = min(self.margin(high, capacity[high] - thr[high][give.label]),
                        self.margin(low, capacity[low] + take[4]))
            if (after <= self.margin(low, capacity[low]) or take[2] > give.ves
                    or mes - give.mes + take[1] > me_total):
                return
            replicas[high].pop()
            replicas[low].append(take[0])
            capacity[high] -= thr[high][give.label]
            capacity[low] += take[4]
            mes += take[1] - give.mes

    def grow(self, replicas, me_total, ve_total):
        """Spend the engines left on more replicas of each model's most engine-efficient shape, the
        model with the least capacity over rate first, its rate being the larger of the measured
        and the provisioned mean one: a serving cluster's spare capacity absorbs bursts instead of
        idling, a burst multiplies a rate, and one shorter than a re-planning epoch must be absorbed
        by the replicas already there. (Filling by square-root-staffing margin, as :meth:`fit`
        trims, gave BERT-base's thousand replicas most of the spare ones; filling by the measured
        rates alone left a model measured between bursts too few for its next one.)"""
        whole = self.context.shapes[-1]
        best = {m: max(o, key=lambda x: (x[4] / max(x[1] / whole.mes, x[2] / whole.ves), -x[1]))
                for m, o in enumerate(self.options)}
        thr = {m: {o[0]: o[4] for o in options} for m, options in enumerate(self.options)}
        shape = {s.label: s for s in self.context.shapes}
        mes = sum(shape[l].mes for ls in replicas.values() for l in ls)
        ves = sum(shape[l].ves for ls in replicas.values() for l in ls)
        capacity = {m: sum(thr[m][l] for l in ls) for m, ls in replicas.items()}
        while True:
            m = min(replicas, key=lambda k: capacity[k] / max(self.rate[k], self.context.rates[k], 1e-9))
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
    """An instance of policy ``name`` (a baseline, ``rl``, or ``rl-floor``: the RL decode rule alone); :class:`ClusterError` naming the known ones."""
    if name == "rl":
        from .rl import ShippedPolicy

        return ShippedPolicy(**options)
    if name == "rl-floor":
        from .rl import FloorRule

        return FloorRule(**options)
    if name not in POLICIES:
        raise ClusterError(f"unknown policy {name!r}; choose one of {', '.join([*POLICIES, 'rl', 'rl-floor'])}")
    return POLICIES[name](**options)
