"""The RL policy, run with NumPy alone: observation features, action decoding and the shipped network.

One small network is shared by every model: it reads one model's features next to the cluster's
and outputs that model's three action numbers. So the policy serves any number of models, and
what it learns on the models that need many replicas on the small training cluster carries over
to those that need many only on a large one.

* :func:`features` — what the agent observes after each interval, all scale-free (ratios and
  fractions, so that a policy trained on 16 pNPUs runs on 1000). Per model (:data:`PER_MODEL`):
  queue over the SLO budget (log), arrival rate over the replicas' capacity, SLO slack
  (1 − p99/SLO), busy fraction, share of the cluster's price held, batch cap over its
  SLO-feasible maximum, fraction of the interval's arrivals served within SLO, arrival rate over
  the provisioned one, mean replica size (MEs over a whole pNPU's), the relative Poisson noise of
  its arrivals within one SLO, ``1 / sqrt(1 + rate × SLO)`` (the one feature that tells a small
  cluster from a large one, and tends to 0 as it grows), and three constants of the
  model: the largest batch within the SLO over the table's largest, the throughput gained by
  batching (log ratio, batch ``b_max`` over batch 1, over log of the largest batch) and the
  batch-1 speed-up of a whole pNPU over the smallest shape; and what a burst left behind: the slow
  rate estimate (:class:`RateMemory`) over the replicas' capacity and over the measured rate (1
  in a steady state, above it in the lull after a burst; rates below 1 request/s count as 1, so an
  idle model reads 1). For the cluster (:data:`GLOBAL`):
  free shares of its MEs and VEs, and the measured demand over the cluster's capacity at the
  reference shape.
* :func:`decode` — the action, three numbers in [-1, 1] per model, as a :class:`~.simulate.Plan`.
  Each is a bounded residual around the rule (the all-zero action, :class:`FloorRule`):

  - ``a0``: the model's weight in sharing the engines beyond the floors: ``2 ** (0.5 × a0)``
    (:data:`MAX_WEIGHT_LOG2`; 0.71 to 1.41) × its provisioned mean rate in replicas of its shape;
  - ``a1``: the vNPU shape (:func:`shape_for`): the rule's (the middle of the SLO-feasible shapes),
    or for ``a1 < -1/3`` (``> 1/3``) the next smaller (larger) shape whose throughput per pNPU at
    its middle batch is within :data:`SHAPE_TOLERANCE` of the best shape's; all the model's
    replicas take it, so a change of ``a1`` resizes its vNPUs;
  - ``a2``: the batch cap (:func:`batch_for`): the rule's is the middle of 1 to ``b_max`` rounded
    half up, ``b_max // 2 + 1``, with ``b_max`` the largest batch whose latency on that shape is
    within the SLO; ``a2`` moves it by whole batches, none for ``|a2| <= 1/3`` and at most about
    an eighth of the range (:data:`BATCH_RESIDUAL`).

  The first network (ranges ``2 ** (±2)``, every shape, every batch) sustained nothing at 99 %
  under MMPP and the Azure sample at 250 × 4 where the rule alone sustained 0.3–0.4 and 0.2: it
  chose the ``m1v1`` shape (0.93 × ``m2v1``'s throughput per pNPU for ResNet-50 on the
  neighbour table), batches above the middle, and weights that left bursting models short.

  The allocation is a rule with learned parameters: every model first gets its floor, the
  replicas needed at the shape and batch it chose (``ceil(rate / throughput)``, at least one) by
  the larger of its measured rate and a slow estimate (:class:`RateMemory`, a maximum of recent
  rates that decays with a half-life of :data:`SLOW_HALF_LIFE` seconds), so a lull between two
  bursts does not take the replicas the next burst needs. The rest of the cluster is shared as
  static shares it, in proportion to the provisioned mean rates (weighted by ``a0``): each model
  gets the larger of its floor and its share (:func:`share`), so one model's share never takes
  another's floor, and the whole cluster is held, as static holds it. When the floors alone
  exceed the cluster they are scaled down in proportion. The all-zero action is the rule on its
  own (middle shape, middle batch, static's split by mean rates wherever the floor is below
  it); the network learns the departures from it. Adding, removing and resizing vNPUs are thus
  one action, and the simulator places them with the hypervisor's allocator (refusals are
  counted).
* :class:`ShippedPolicy` — the committed weights (:data:`WEIGHTS`), trained by
  :mod:`.rl_train` (``tcloud cluster train``).
"""

from pathlib import Path

import numpy as np

from .policies import Policy, Static
from .simulate import best_batch
from .simulate import Plan
from .workload import ClusterError

WEIGHTS = Path(__file__).with_name("data") / "rl_policy.npz"
PER_MODEL = 15
"""Observation features per model (plus :data:`GLOBAL` for the whole cluster)."""
GLOBAL = 3
ACTIONS = 3
"""Action numbers per model."""
NETWORK_FORMAT = 2
"""Version of the observation and action encoding (:func:`features`, :func:`decode`), recorded in
every weight file and with a training run's settings, so that weights or a checkpoint made for
another encoding are refused by name: 2 is the 15-feature observation and the whole-batch ``a2``
with a dead zone (files made before it recorded no version)."""
MAX_WEIGHT_LOG2 = 0.5
"""``a0`` tilts a model's share by at most ``2 ** ±MAX_WEIGHT_LOG2`` (the first network's ``2 ** ±2``
gave BERT-base 1.6 × its share under MMPP and left the other models' bursts short)."""
SHAPE_TOLERANCE = 0.02
"""``a1`` may leave the rule's shape only for one whose throughput per pNPU at its middle batch is
within this fraction of the best shape's (on the ``tpu_like`` neighbour table: ``m1v1`` for
MobileNetV2, 1.5 % below ``m2v1``, and for DLRM and NCF, where they tie; not ResNet-50's 7 % or
BERT-base's 5 %)."""
BATCH_RESIDUAL = 0.25
"""``a2`` moves the batch cap by at most this fraction of half the SLO-feasible range around the
middle (the first network's full range put ResNet-50 at 8 instead of the middle's 7 on the alone table,
and lost diurnal load)."""


def observation_size(models):
    """Length of the observation vector for ``models`` models."""
    return models * PER_MODEL + GLOBAL


def per_model(x, models):
    """Split observation vectors ``x`` (``[..., observation_size]``) into the shared network's
    inputs: ``[..., models, PER_MODEL + GLOBAL]`` (each model's features, then the cluster's)."""
    x = np.asarray(x)
    own = x[..., :models * PER_MODEL].reshape(*x.shape[:-1], models, PER_MODEL)
    shared = np.broadcast_to(x[..., None, models * PER_MODEL:], (*x.shape[:-1], models, GLOBAL))
    return np.concatenate([own, shared], axis=-1)


def model_options(context):
    """Per model and shape label: ``(batch with 2 × latency <= SLO, largest batch with latency <=
    SLO, throughput per replica at each batch 0..max_batch)``; shapes where even batch 1 misses the
    SLO are left out."""
    out = []
    for curves, slo in zip(context.curves, context.slos):
        found = {}
        for shape in context.shapes:
            curve = curves[shape.label]
            bmax = best_batch(curve, slo, divisor=1.0)
            if bmax:
                thr = np.zeros_like(curve)
                thr[1:] = np.arange(1, curve.size) / curve[1:]
                found[shape.label] = (max(best_batch(curve, slo), 1), bmax, thr)
        out.append(found)
    return out


def constants(context, options):
    """The three per-model constants of :func:`features` (``[models, 3]``)."""
    out = []
    smallest, whole = context.shapes[0].label, context.shapes[-1].label
    for m, found in enumerate(options):
        label = max(found, key=lambda l: found[l][2][found[l][1]])
        _, bmax, thr = found[label]
        curves = context.curves[m]
        out.append([bmax / context.max_batch, np.log(thr[bmax] / thr[1]) / np.log(context.max_batch),
                    min(curves[smallest][1] / curves[whole][1] - 1, 4.0)])
    return np.array(out, dtype=np.float32)


def demand_over_capacity(rates, context, options):
    """Measured demand over the cluster's capacity when every model runs on the reference shape
    (the second) at its batch with ``2 × latency <= SLO``: how oversubscribed the cluster is."""
    ref = context.shapes[1] if len(context.shapes) > 1 else context.shapes[0]
    slots = context.per_pnpu[ref.label] * context.pnpus
    need = 0.0
    for rate, found, curves, slo in zip(rates, options, context.curves, context.slos):
        b = max(best_batch(curves[ref.label], slo), 1)
        need += rate / (b / curves[ref.label][b])
    return need / slots


def features(observation, context, options, slow=None):
    """The observation vector (:func:`observation_size` numbers, all of order 1, float32);
    ``slow``: the :class:`RateMemory` estimate per model (default: the measured rates, i.e. no
    burst remembered)."""
    rows = []
    rates = np.asarray(observation["arrival_rate"], dtype=float)
    slow = rates if slow is None else np.maximum(np.asarray(slow, dtype=float), rates)
    whole = context.shapes[-1]
    price_total = context.prices[whole.label] * context.pnpus
    mes = {s.label: s.mes for s in context.shapes}
    dt = context.interval
    fixed = constants(context, options)
    for m in range(len(context.models)):
        curves, slo = context.curves[m], context.slos[m]
        caps, replicas = observation["batch"][m], observation["replicas"][m]
        capacity = sum(int(b) / curves[r][int(b)] for r, b in zip(replicas, caps))
        bmax = max((options[m][r][1] for r in set(replicas) if r in options[m]), default=context.max_batch)
        rate = observation["arrival_rate"][m]
        p99 = observation["p99"][m]
        slack = 1.0 if np.isnan(p99) else float(np.clip(1 - p99 / slo, -1, 1))
        busy = observation["busy"][m]
        rows.append([np.log1p(observation["queue"][m] / max(rate * slo, 1.0)),
                     min(rate / max(capacity, 1.0), 4.0), slack, min(float(busy.mean()), 1.0) if busy.size else 0.0,
                     sum(context.prices[r] for r in replicas) / price_total,
                     min(float(caps.mean()) / bmax, 1.0) if caps.size else 0.0,
                     min(observation["good"][m] / max(rate * dt, 1.0), 1.0),
                     min(rate / max(context.rates[m], 1.0), 4.0),
                     float(np.mean([mes[r] for r in replicas])) / whole.mes if replicas else 0.0,
                     1 / np.sqrt(1 + rate * slo), *fixed[m], min(slow[m] / max(capacity, 1.0), 4.0),
                     min(max(slow[m], 1.0) / max(rate, 1.0), 4.0)])
    total_mes, total_ves = whole.mes * context.pnpus, whole.ves * context.pnpus
    extra = [observation["free_mes"] / total_mes, observation["free_ves"] / total_ves,
             min(demand_over_capacity(observation["arrival_rate"], context, options), 4.0)]
    return np.append(np.array(rows, dtype=np.float32).ravel(), extra).astype(np.float32)


SLOW_HALF_LIFE = 4.0
"""Seconds over which the slow rate estimate (:class:`RateMemory`) halves after a burst: long
enough that a model measured between two MMPP bursts (2 s in 10 s on average) keeps most of the
replicas its last burst needed, short enough to follow a diurnal mix."""


STAFFING = 0.5
"""A floor carries ``STAFFING × sqrt(n)`` replicas beyond the ``n`` its rate fills (square-root
staffing: the Poisson noise of ``n`` busy replicas' arrivals is about ``sqrt(n)`` replicas' worth, a
margin that a model on one replica needs as much as one on a thousand). Measured with the zero
action on 250 × 4 ``tpu_like`` pNPUs: 1 sustained diurnal at 0.7 (seeds 0, 1) but not MMPP at 0.4
(seeds 1, 2: bursting BERT-base's margin took ResNet-50's replicas); 0 and 0.5 sustained the
same loads on seed 0, and 0.5 sustained MMPP 0.4 on all three seeds."""


class RateMemory:
    """The slow-moving rate estimate behind the floors: a decaying maximum of the measured rates,
    ``slow = max(rate, slow × 0.5 ** (interval / half_life))`` per model. A model's floor is sized
    for it, so its replicas never drop to the rate of a lull between two bursts at once.

    Parameters
    ----------
    models : int
    interval : float
        Seconds between two updates (the control interval).
    half_life : float
        Seconds (0: no memory, the floor follows the last interval's rate alone).
    """

    def __init__(self, models, interval, half_life=SLOW_HALF_LIFE):
        self.decay = 0.5 ** (interval / half_life) if half_life > 0 else 0.0
        self.slow = np.zeros(models)

    def update(self, rates):
        """Fold in an interval's measured ``rates`` and return the estimate (at least ``rates``)."""
        self.slow = np.maximum(np.asarray(rates, dtype=float), self.slow * self.decay)
        return self.slow.copy()


def decode(action, observation, context, options, slow=None, provision=None):
    """The :class:`~.simulate.Plan` for ``action`` (see the module docstring).

    Every model first gets its *floor*, the replicas the larger of its measured arrival rate and
    the slow estimate ``slow`` (:class:`RateMemory`; default: the measured rate alone) need at the
    shape and batch it chose (``ceil(rate / throughput)``, at least one). The rest of the cluster
    is shared as static shares it, in proportion to each model's provisioned mean rate
    (``context.rates``, times ``provision`` when given: a peak-to-mean ratio per model, as
    :class:`~.policies.Static` takes it) in replicas of its shape, tilted by the learned weight ``2 ** (MAX_WEIGHT_LOG2 × a0)``:
    every model gets the larger of its floor and ``λ ×`` its weighted mean need, with the largest
    ``λ`` that fits (:func:`share`). So no model is cut below its floor for another's share, and
    the zero action holds a model between bursts at the share a static split by mean rates would
    give it. When the floors alone do not fit, they are scaled down in proportion (at least one
    replica each).

    Raises
    ------
    ClusterError
        ``action`` does not hold :data:`ACTIONS` numbers per model.
    """
    action = np.asarray(action, dtype=float)
    if action.size != ACTIONS * len(options):
        raise ClusterError(f"the RL action has {action.size} numbers; {len(options)} models need "
                           f"{ACTIONS * len(options)}")
    action = np.clip(np.nan_to_num(action.reshape(len(options), ACTIONS)), -1, 1)
    rates = np.asarray(observation["arrival_rate"], dtype=float)
    if slow is not None:
        rates = np.maximum(rates, slow)
    provisioned = context.rates if provision is None else context.rates * np.asarray(provision, dtype=float)
    shape = {s.label: s for s in context.shapes}
    labels, floors, batches, needs = [], [], [], []
    for m, found in enumerate(options):
        label = shape_for(action[m, 1], found, context)
        batch, thr = batch_for(action[m, 2], found[label])
        labels.append(label)
        batches.append(batch)
        need = rates[m] / thr[batch]
        floors.append(max(1, int(np.ceil(need + STAFFING * np.sqrt(need)))))
        needs.append(provisioned[m] / thr[batch])
    weights = np.array(needs) * 2 ** (MAX_WEIGHT_LOG2 * action[:, 0])
    counts = share(np.array(floors), weights, np.array([shape[label].mes for label in labels]),
                   np.array([shape[label].ves for label in labels]), context)
    return Plan(replicas={m: [label] * int(k) for m, (label, k) in enumerate(zip(labels, counts))},
                batch=dict(enumerate(batches)), delay={m: 0.0 for m in range(len(options))})


def batch_for(a2, option):
    """The batch cap for action number ``a2`` on one shape.

    The rule's batch is the middle of the SLO-feasible range, ``b_max // 2 + 1`` (the middle
    ``(1 + b_max) / 2`` rounded half up: on a tie, for an even ``b_max``, the larger of the two
    middle batches, which has the higher throughput and is still within the SLO). ``a2`` moves it
    by a whole number of batches with a dead zone as ``a1`` has: none for ``|a2| <= 1/3``, else
    ``sign(a2) × ceil((|a2| − 1/3) × 1.5 × K)``, 1 to ``K`` batches, with ``K`` the nearest whole
    number to ``BATCH_RESIDUAL × (b_max − 1) / 2`` (:data:`BATCH_RESIDUAL`). So an action near
    zero is the rule's batch exactly (the earlier continuous map sat on a rounding tie at
    ``a2 = 0`` for every even ``b_max``, and a network could change the batch by ``a2 = 1e-6``).
    (Centring on static's batch, ``2 × latency <= SLO``, was tried: with its lower throughput the
    rule sustained less, Poisson at 1.0 and MMPP at 0.4.)

    Parameters
    ----------
    a2 : float
        The action number, in [-1, 1] (clipped).
    option : tuple
        One shape's :func:`model_options` entry ``(static batch, b_max, throughput curve)``,
        ``b_max`` the largest batch within the SLO.

    Returns
    -------
    batch : int
        Between 1 and ``b_max``.
    thr : numpy.ndarray
        The shape's throughput per replica at each batch (from ``option``).
    """
    _, bmax, thr = option
    a2 = float(np.clip(np.nan_to_num(float(a2)), -1, 1))
    steps = int(np.floor(BATCH_RESIDUAL * (bmax - 1) / 2 + 0.5))
    offset = 0 if abs(a2) <= 1 / 3 else int(np.sign(a2)) * int(np.ceil((abs(a2) - 1 / 3) * 1.5 * steps - 1e-9))
    return int(min(max(bmax // 2 + 1 + offset, 1), bmax)), thr


def middle_batch_throughput(label, option, context):
    """Throughput per pNPU of one shape at the rule's batch (:func:`batch_for` at ``a2 = 0``).

    Parameters
    ----------
    label : str
        The shape's label.
    option : tuple
        The shape's :func:`model_options` entry for one model.
    context : Context
        The simulation context (``per_pnpu``: replicas of each shape per pNPU).

    Returns
    -------
    float
        Requests per second per pNPU.
    """
    batch, thr = batch_for(0.0, option)
    return context.per_pnpu[label] * thr[batch]


def efficient_shapes(found, context):
    """The shapes ``a1`` may choose for one model, smallest first.

    Parameters
    ----------
    found : dict
        The model's :func:`model_options` entry (shape label to option).
    context : Context
        The simulation context.

    Returns
    -------
    chosen : list of str
        The rule's shape (the middle of the SLO-feasible ones) and those whose throughput per pNPU
        at the rule's batch is within :data:`SHAPE_TOLERANCE` of the best.
    rule : int
        The rule's index in ``chosen``.
    """
    usable = [s.label for s in context.shapes if s.label in found]
    rule = usable[len(usable) // 2]
    speed = {label: middle_batch_throughput(label, found[label], context) for label in usable}
    best = max(speed.values())
    chosen = [label for label in usable if label == rule or speed[label] >= (1 - SHAPE_TOLERANCE) * best]
    return chosen, chosen.index(rule)


def shape_for(a1, found, context):
    """The vNPU shape for action number ``a1``.

    Parameters
    ----------
    a1 : float
        The action number: the rule's shape for ``|a1| <= 1/3``, else the next smaller
        (``a1 < -1/3``) or larger (``a1 > 1/3``) of :func:`efficient_shapes`, if there is one.
    found : dict
        The model's :func:`model_options` entry.
    context : Context
        The simulation context.

    Returns
    -------
    str
        The shape's label.
    """
    chosen, rule = efficient_shapes(found, context)
    step = -1 if a1 < -1 / 3 else 1 if a1 > 1 / 3 else 0
    return chosen[min(max(rule + step, 0), len(chosen) - 1)]


def share(floors, weights, me_cost, ve_cost, context):
    """Replica counts per model: ``max(floor, 1 + floor(λ × weight))`` (as static's split: one
    replica each, then the rest in proportion) with the largest ``λ`` whose
    counts fit the cluster's MEs and VEs (``me_cost``, ``ve_cost`` per replica), then one replica
    at a time to the model with the fewest replicas over its weight while any fits (water-filling:
    the engines the floors leave are shared in proportion to ``weights``, never below a floor).
    When the floors alone exceed the cluster they are scaled down by one factor and rounded (at
    least one replica each, the largest trimmed until they fit)."""
    whole = context.shapes[-1]
    total_mes, total_ves = whole.mes * context.pnpus, whole.ves * context.pnpus
    weights = np.maximum(np.asarray(weights, dtype=float), 1e-12)

    def fits(counts):
        return counts @ me_cost <= total_mes and counts @ ve_cost <= total_ves

    if fits(floors):
        low, high = 0.0, float(max(total_mes / (weights @ me_cost), total_ves / (weights @ ve_cost))) * 2 + 1
        for _ in range(60):  # bisection on λ
            middle = (low + high) / 2
            if fits(np.maximum(floors, 1 + np.floor(middle * weights).astype(int))):
                low = middle
            else:
                high = middle
        counts = np.maximum(floors, 1 + np.floor(low * weights).astype(int))
        while True:  # the rounding leaves a few replicas: each to the model furthest below its share
            order = np.argsort(counts / weights, kind="stable")
            for m in order:
                counts[m] += 1
                if fits(counts):
                    break
                counts[m] -= 1
            else:
                return counts
    scale = min(total_mes / (floors @ me_cost), total_ves / (floors @ ve_cost))
    counts = np.maximum(1, np.round(floors * scale).astype(int))  # rounded: a floor of 2 keeps 2
    while not fits(counts) and counts.max() > 1:
        counts[np.argmax(counts)] -= 1  # rounding and the one replica each can overshoot
    return counts


class NumpyPolicy(Policy):
    """The shared per-model network of dense ``tanh`` layers, run with NumPy (the mean action, no
    sampling): each model's :data:`PER_MODEL` features and the :data:`GLOBAL` ones in, that
    model's :data:`ACTIONS` numbers out.

    Parameters
    ----------
    layers : list of (weight, bias)
        ``weight`` is ``[inputs, outputs]``; the last layer is linear.
    slow_features : bool
        Whether the network sees the slow rate estimate (:class:`RateMemory`) in its two features;
        ``False`` (a network trained without them, ``tcloud cluster train --no-slow-features``) feeds
        them as if no burst were remembered. The decode's floors use the estimate either way.

    Raises
    ------
    ClusterError
        The layers do not take ``PER_MODEL + GLOBAL`` inputs or give ``ACTIONS`` outputs.
    """

    name = "rl"
    provision = None
    """Per model, a factor on the mean rate the engines beyond the floors are shared by (``None``: the
    mean rates), as :attr:`~.policies.Static.provision`: the benchmark's ``rl-peak`` gets the
    peak-to-mean ratios the peak-provisioned baselines get. The network's features still read the
    mean rates it was trained with."""

    def __init__(self, layers, slow_features=True):
        if layers[0][0].shape[0] != PER_MODEL + GLOBAL or layers[-1][0].shape[1] != ACTIONS:
            raise ClusterError(f"the RL policy network takes {layers[0][0].shape[0]} inputs and gives "
                               f"{layers[-1][0].shape[1]} outputs; this code expects {PER_MODEL + GLOBAL} and "
                               f"{ACTIONS} (retrain with `tcloud cluster train`)")
        if not isinstance(slow_features, bool):
            raise ClusterError(f"slow_features must be True or False, got {slow_features!r}")
        self.layers = layers
        self.slow_features = slow_features

    def act(self, x):
        """The action (``ACTIONS`` numbers per model, flat) for the observation vector ``x``."""
        models = (np.shape(x)[-1] - GLOBAL) // PER_MODEL
        h = per_model(x, models)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.tanh(h)
        return h.reshape(*np.shape(x)[:-1], models * ACTIONS)

    def reset(self, context):
        self.context, self.options = context, model_options(context)
        self.memory = RateMemory(len(context.models), context.interval)
        return initial_plan(context, self.provision)

    def decide(self, observation):
        slow = self.memory.update(observation["arrival_rate"])
        seen = slow if self.slow_features else None
        return decode(self.act(features(observation, self.context, self.options, seen)), observation,
                      self.context, self.options, slow, self.provision)


class ShippedPolicy(NumpyPolicy):
    """The committed RL policy (:data:`WEIGHTS`), or the weights in ``path`` (with ``slow_features``
    if the file records it, else ``True``).

    Raises
    ------
    ClusterError
        No file at ``path``, not a weight file (``format``, ``w0, b0, w1, b1, ...``), or weights for
        another :data:`NETWORK_FORMAT`.
    """

    def __init__(self, path=WEIGHTS):
        path = Path(path)
        if not path.exists():
            raise ClusterError(f"no trained RL policy at {path}; run `tcloud cluster train`")
        try:
            with np.load(path) as data:
                count = len([k for k in data.files if k.startswith("w")])
                layers = [(data[f"w{i}"], data[f"b{i}"]) for i in range(count)]
                found = int(data["format"]) if "format" in data.files else None
                slow_features = data["slow_features"] if "slow_features" in data.files else np.bool_(True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ClusterError(f"{path}: not an RL policy weight file ({exc})") from None
        if not layers or any(w.ndim != 2 or b.shape != (w.shape[1],) for w, b in layers):
            raise ClusterError(f"{path}: not an RL policy weight file (expected dense layers w0, b0, w1, b1, ...)")
        if slow_features.dtype != np.bool_ or slow_features.shape != ():
            raise ClusterError(f"{path}: not an RL policy weight file (slow_features must be one boolean, got "
                               f"{slow_features!r})")
        slow_features = bool(slow_features)
        if found != NETWORK_FORMAT:
            made = "records no network format (it predates them)" if found is None else f"is of network format {found}"
            raise ClusterError(f"{path}: the weights were trained for another observation and action encoding: the file "
                               f"{made}, this code reads format {NETWORK_FORMAT}; train a new policy "
                               "(`tcloud cluster train --fresh`)")
        try:
            super().__init__(layers, slow_features)
        except ClusterError as exc:
            raise ClusterError(f"{path}: {exc}") from None


class FloorRule(NumpyPolicy):
    """The decode rule alone: the all-zero action for every model (middle shape, middle batch,
    the larger of the floor and static's split by mean rates; see :func:`decode`). The shipped policy's learned
    contribution is what it gains over this."""

    name = "rl-floor"

    def __init__(self):
        super().__init__([(np.zeros((PER_MODEL + GLOBAL, ACTIONS)), np.zeros(ACTIONS))])  # a network of zeros


def initial_plan(context, provision=None):
    """Static's plan (provisioned by ``provision``, see :attr:`NumpyPolicy.provision`): the first
    interval runs before the policy has observed anything."""
    return Static(provision=provision).reset(context)
