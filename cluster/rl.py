"""The RL policy, run with NumPy alone: observation features, action decoding and the shipped network.

* :func:`features` — what the agent observes after each interval, per model: queue over SLO budget,
  arrival rate over the replicas' capacity, SLO slack (1 − p99/SLO), busy fraction, share of the
  cluster's engines, batch cap over its SLO-feasible maximum, fraction served within SLO, and rate
  over the provisioned one; plus the free share of the cluster's vector engines.
* :func:`decode` — the action (two numbers in [-1, 1] per model) as a :class:`~.simulate.Plan`:
  scale the model's replicas by ``2 ** (a0 / 2)`` (add or remove vNPUs of its most
  engine-efficient shape) and set its batch cap to ``1 + (a1 + 1) / 2 × (b_max − 1)``.
* :class:`ShippedPolicy` — the committed weights (:data:`WEIGHTS`), trained by
  :mod:`.rl_train` (``tcloud cluster train``).
"""

from pathlib import Path

import numpy as np

from .policies import Policy, Static
from .simulate import Plan, best_batch
from .workload import ClusterError

WEIGHTS = Path(__file__).with_name("data") / "rl_policy.npz"
PER_MODEL = 8


def model_options(context):
    """Per model: (shape label, its batch for ``2 × latency <= SLO``, max batch within the SLO)."""
    out = []
    for curves, slo in zip(context.curves, context.slos):
        scored = []
        for shape in context.shapes:
            b = best_batch(curves[shape.label], slo)
            if b:
                whole = context.shapes[-1]
                share = max(shape.mes / whole.mes, shape.ves / whole.ves)
                scored.append((b / curves[shape.label][b] / share, shape.label, b))
        _, label, b = max(scored)
        out.append((label, b, max(best_batch(curves[label], slo, divisor=1.0), 1)))
    return out


def features(observation, context, options):
    """The observation vector (``len(models) * 8 + 1`` numbers, all of order 1)."""
    rows = []
    whole = context.shapes[-1]
    ves_total = whole.ves * context.pnpus
    shape_ves = {s.label: s.ves for s in context.shapes}
    dt = context.interval
    for m, (label, _, bmax) in enumerate(options):
        curves, slo = context.curves[m], context.slos[m]
        caps, replicas = observation["batch"][m], observation["replicas"][m]
        capacity = sum(int(b) / curves[r][int(b)] for r, b in zip(replicas, caps))
        rate = observation["arrival_rate"][m]
        p99 = observation["p99"][m]
        slack = 1.0 if np.isnan(p99) else float(np.clip(1 - p99 / slo, -1, 1))
        busy = observation["busy"][m]
        rows.append([np.log1p(observation["queue"][m] / max(rate * slo, 1.0)),
                     min(rate / max(capacity, 1.0), 4.0), slack, float(busy.mean()) if busy.size else 0.0,
                     sum(shape_ves[r] for r in replicas) / ves_total,
                     float(caps.mean()) / bmax if caps.size else 0.0,
                     observation["good"][m] / max(rate * dt, 1.0),
                     min(rate / max(context.rates[m], 1.0), 4.0)])
    return np.append(np.array(rows, dtype=np.float32).ravel(), observation["free_ves"] / ves_total).astype(np.float32)


def decode(action, observation, context, options):
    """The :class:`~.simulate.Plan` for ``action`` (see the module docstring)."""
    action = np.clip(np.asarray(action, dtype=float).reshape(len(options), 2), -1, 1)
    whole = context.shapes[-1]
    shape = {s.label: s for s in context.shapes}
    counts = []
    for m, (label, _, _) in enumerate(options):
        now = max(len(observation["replicas"][m]), 1)
        counts.append(max(1, int(round(now * 2 ** (action[m, 0] / 2)))))
    counts = np.array(counts)
    ves = np.array([shape[label].ves for label, _, _ in options])
    mes = np.array([shape[label].mes for label, _, _ in options])
    while (counts @ ves > whole.ves * context.pnpus or counts @ mes > whole.mes * context.pnpus) and counts.max() > 1:
        counts[np.argmax(counts * ves)] -= 1
    replicas, batch = {}, {}
    for m, (label, _, bmax) in enumerate(options):
        replicas[m] = [label] * int(counts[m])
        batch[m] = int(round(1 + (action[m, 1] + 1) / 2 * (bmax - 1)))
    return Plan(replicas=replicas, batch=batch, delay={m: 0.0 for m in replicas})


class NumpyPolicy(Policy):
    """A policy network of dense ``tanh`` layers run with NumPy (the mean action, no sampling).

    Parameters
    ----------
    layers : list of (weight, bias)
    """

    name = "rl"

    def __init__(self, layers):
        self.layers = layers

    def act(self, x):
        for i, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if i < len(self.layers) - 1:
                x = np.tanh(x)
        return x

    def reset(self, context):
        self.context, self.options = context, model_options(context)
        expected = self.layers[0][0].shape[0]
        if expected != len(context.models) * PER_MODEL + 1:
            raise ClusterError(f"the RL policy was trained for {(expected - 1) // PER_MODEL} models, the workload has "
                               f"{len(context.models)}")
        return initial_plan(context)

    def decide(self, observation):
        return decode(self.act(features(observation, self.context, self.options)), observation, self.context,
                      self.options)


class ShippedPolicy(NumpyPolicy):
    """The committed RL policy (:data:`WEIGHTS`)."""

    def __init__(self, path=WEIGHTS):
        path = Path(path)
        if not path.exists():
            raise ClusterError(f"no trained RL policy at {path}; run `tcloud cluster train`")
        with np.load(path) as data:
            count = len([k for k in data.files if k.startswith("w")])
            super().__init__([(data[f"w{i}"], data[f"b{i}"]) for i in range(count)])


def initial_plan(context):
    """Static's replica counts on each model's most engine-efficient shape, at its SLO batch."""
    options = model_options(context)
    plan = Static().reset(context)
    plan.replicas = {m: [options[m][0]] * len(labels) for m, labels in plan.replicas.items()}
    plan.batch = {m: o[1] for m, o in enumerate(options)}
    return plan


