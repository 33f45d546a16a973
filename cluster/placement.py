"""The cluster's pNPUs and the vNPUs placed on them, with the hypervisor's allocator.

Every pNPU is the allocator's own :class:`~tcloud.runtime.hypervisor.allocator.PNPUState` (without
a device): :meth:`Cluster.place` asks :func:`~tcloud.runtime.hypervisor.allocator.fit` exactly as
:meth:`Hypervisor.create_vnpu <tcloud.runtime.hypervisor.Hypervisor.create_vnpu>` does (no
oversubscription), so a placement the hypervisor would refuse is refused here, with its reasons.
Which pNPU to ask is the cluster scheduler's choice: one that holds only the model's own replicas,
else an empty one, else the one where the model and its neighbours slow each other least.
"""

from dataclasses import dataclass, field

import numpy as np

from tcloud.isa import get_config
from tcloud.runtime.hypervisor.allocator import FreeList, PNPUState, fit, release, reserve

from .workload import ClusterError

MAX_PNPUS = 10_000
"""The most pNPUs a cluster model holds (ten times the 1,000 of the evaluation; its state grows with them)."""


@dataclass(eq=False)
class Replica:
    """A vNPU serving one model: what the allocator reserved (``_pnpu``, ``_grant``), its spec, and
    when its model is loaded (``loaded_at``, seconds; set by the simulator)."""

    model: int
    shape: object
    spec: object
    _pnpu: object = field(repr=False)
    _grant: object = field(repr=False)
    loaded_at: float = 0.0

    @property
    def pnpu(self):
        return self._pnpu.index


def check_fits(config, shape):
    """Raise :class:`ClusterError` with the allocator's reasons if ``shape`` does not fit an empty
    pNPU of ``config``."""
    cfg = get_config(config)
    reasons = []
    if fit(_empty(cfg, 0), shape.spec(), cfg, False, reasons) is None:
        raise ClusterError(f"vNPU shape {shape.label} ({shape.spec()}) does not fit a {cfg.name} pNPU: "
                           + "; ".join(reasons))


def _empty(cfg, index):
    return PNPUState(index, None, list(range(cfg.contexts)), [set() for _ in range(cfg.me_count)],
                     [set() for _ in range(cfg.ve_count)], [set() for _ in range(cfg.dma_count)],
                     FreeList(cfg.sram_bytes), FreeList(cfg.hbm_bytes))


class Cluster:
    """``nodes`` × ``pnpus_per_node`` pNPUs of ``config`` and the replicas placed on them.

    Parameters
    ----------
    nodes, pnpus_per_node : int
    config : str
    """

    def __init__(self, nodes=250, pnpus_per_node=4, config="small"):
        for name, value in (("nodes", nodes), ("pnpus_per_node", pnpus_per_node)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ClusterError(f"{name} must be a positive integer, got {value!r}")
        if nodes * pnpus_per_node > MAX_PNPUS:
            raise ClusterError(f"nodes x pnpus_per_node must be at most {MAX_PNPUS:,} pNPUs, got "
                               f"{nodes} x {pnpus_per_node} = {nodes * pnpus_per_node:,}")
        self.config = get_config(config)
        self.nodes, self.pnpus_per_node = nodes, pnpus_per_node
        self.pnpus = [_empty(self.config, i) for i in range(nodes * pnpus_per_node)]
        self.free_mes = np.full(len(self.pnpus), self.config.me_count)
        self.free_ves = np.full(len(self.pnpus), self.config.ve_count)
        self.free_contexts = np.full(len(self.pnpus), self.config.contexts)
        self.replica_count = np.zeros(len(self.pnpus), dtype=np.int64)
        self.model_count = {}  # model → replicas of it per pNPU
        self.neighbour_slowdown = None
        """``[model, other model]`` factors (:attr:`.simulate.Context.neighbour_slowdown`) that rank
        the pNPUs holding other models; ``None``: first fit among them."""
        self.replicas = []

    def place(self, model, shape):
        """Create a replica of ``model`` (index) with ``shape`` on the pNPU that fits it and suits it
        best: one holding only replicas of ``model``, else an empty one, else the one whose models
        slow it or are slowed by it least (the larger of the two :attr:`neighbour_slowdown` factors,
        for the worst of its models); the lowest-numbered among equals.

        Raises
        ------
        ClusterError
            No pNPU can host it; the message gives the allocator's reasons for the nearest one.
        """
        spec = shape.spec()
        ok = (self.free_mes >= spec.mes) & (self.free_ves >= spec.ves) & (self.free_contexts >= 1)
        reasons = []
        for index in self._preference(model, ok):
            grant = fit(self.pnpus[index], spec, self.config, False, reasons)
            if grant is not None:
                replica = Replica(model, shape, spec, self.pnpus[index], grant)
                reserve(grant, spec, replica)
                self._account(index, spec, -1)
                self._count(model, index, +1)
                self.replicas.append(replica)
                return replica
        if not reasons:
            fit(self.pnpus[int(np.argmax(self.free_mes + self.free_ves))], spec, self.config, False, reasons)
        raise ClusterError(f"allocation does not fit: no pNPU of {len(self.pnpus)} can host a vNPU of shape "
                           f"{shape.label} ({reasons[0] if reasons else 'no free engines'})")

    def remove(self, replica):
        """Free ``replica``'s resources."""
        release(replica)
        self._account(replica.pnpu, replica.spec, +1)
        self._count(replica.model, replica.pnpu, -1)
        self.replicas.remove(replica)

    def _count(self, model, index, sign):
        if model not in self.model_count:
            self.model_count[model] = np.zeros(len(self.pnpus), dtype=np.int64)
        self.model_count[model][index] += sign
        self.replica_count[index] += sign

    def _preference(self, model, ok):
        """The pNPUs in ``ok`` in the order :meth:`place` tries them."""
        mine = self.model_count.get(model)
        own = ok & (mine > 0) & (mine == self.replica_count) if mine is not None else np.zeros_like(ok)
        empty = ok & (self.replica_count == 0)
        mixed = np.flatnonzero(ok & ~own & ~empty)
        if mixed.size and self.neighbour_slowdown is not None:
            mixed = mixed[np.argsort(self._worst_pairing(model, mixed, 0.0), kind="stable")]
        return np.concatenate((np.flatnonzero(own), np.flatnonzero(empty), mixed))

    def pairing(self, replica):
        """How badly ``replica`` and the other models on its pNPU slow each other: the larger
        :attr:`neighbour_slowdown` factor of the worst pair; 1 where its pNPU holds no other model
        (the entries' own neighbour) or the factors are unknown."""
        if self.neighbour_slowdown is None:
            return 1.0
        return float(self._worst_pairing(replica.model, np.array([replica.pnpu]), 1.0)[0])

    def _worst_pairing(self, model, indices, alone):
        """Per pNPU in ``indices``: the larger factor of the worst pair of ``model`` and another
        model it holds; ``alone`` where it holds none."""
        factors = self.neighbour_slowdown
        others = [n for n in self.model_count if n != model]
        held = np.array([self.model_count[n][indices] > 0 for n in others]).reshape(len(others), indices.size)
        worst = np.array([max(factors[model, n], factors[n, model]) for n in others])
        return np.where(held.any(axis=0), np.where(held, worst[:, None], -np.inf).max(axis=0, initial=-np.inf), alone)

    def _account(self, index, spec, sign):
        self.free_mes[index] += sign * spec.mes
        self.free_ves[index] += sign * spec.ves
        self.free_contexts[index] += sign

    @property
    def total_mes(self):
        return len(self.pnpus) * self.config.me_count

    def engines_used(self):
        """(MEs, VEs) reserved by replicas."""
        return int(self.total_mes - self.free_mes.sum()), int(len(self.pnpus) * self.config.ve_count
                                                              - self.free_ves.sum())
