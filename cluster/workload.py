"""What the cluster serves: models with SLOs, and request arrival traces.

A :class:`ModelSpec` names a builder of the compiler's zoo (with its options) and an SLO on response
time. A trace gives each model a *rate multiplier* over time (mean 1); :class:`Arrivals` turns the
multiplier and a mean rate into Poisson arrival times, window by window, so that the batch simulator
and the per-request reference simulator consume exactly the same requests.

Traces:

* ``poisson``: constant rate;
* ``mmpp``: a two-state Markov-modulated Poisson process per model (bursts of ``burst`` × the base
  rate, mean sojourns ``high_s``/``low_s`` seconds), normalised to mean 1;
* ``diurnal``: ``1 + amplitude·sin(2πt/period)``, each model phase-shifted;
* a path: the Azure Functions 2019 invocation-count format (``HashOwner,HashApp,HashFunction,Trigger,
  1,...,1440`` with one row per function and one column per minute). Functions are taken by total
  invocations, the busiest first, one per model; each trace minute lasts ``seconds_per_minute``
  simulated seconds.
"""

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tcloud.isa.errors import TcloudError
from tcloud.runtime.files import read_text

RATE_STEP = 0.1
"""Seconds over which a trace's rate is constant (MMPP switching and Poisson sampling grid)."""

TRACES = ("poisson", "mmpp", "diurnal")
AZURE_SAMPLE = Path(__file__).with_name("data") / "azure_functions_sample.csv"
"""A small synthetic file in the Azure Functions 2019 per-minute invocation-count format."""
AZURE_KEYS = ("HashOwner", "HashApp", "HashFunction", "Trigger")
MAX_COUNT = 10 ** 12
"""The largest invocation count a trace minute may hold (sums over a day then stay exact in int64)."""


class ClusterError(TcloudError, ValueError):
    """Bad input to the cluster layer (a trace, a model, an SLO, an allocation); the message names
    the file, line or field."""


@dataclass(frozen=True)
class ModelSpec:
    """A served model.

    Parameters
    ----------
    name : str
        Name in results (unique in a workload).
    builder : str
        A key of :data:`tcloud.runtime.compiler.zoo.BUILDERS`.
    settings : tuple of str
        Builder options as ``"key=value"`` text (as ``tcloud zoo export --set``).
    slo_factor : float
        The SLO is ``slo_factor`` × the model's solo batch-1 latency on the reference vNPU shape.
    share : float
        Relative share of the workload's requests.
    """

    name: str
    builder: str
    settings: tuple = ()
    slo_factor: float = 10.0
    share: float = 1.0

    def __post_init__(self):
        from tcloud.runtime.compiler import zoo

        if not isinstance(self.name, str) or not self.name:
            raise ClusterError(f"a model's field name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.builder, str) or self.builder not in zoo.BUILDERS:
            raise ClusterError(f"model {self.name!r}: field builder: no model {self.builder!r} in the zoo; "
                               f"choose one of {', '.join(zoo.BUILDERS)}")
        known = zoo.options(self.builder)
        for setting in self.settings:
            key = setting.partition("=")[0] if isinstance(setting, str) else None
            if key not in known:
                raise ClusterError(f"model {self.name!r}: field settings: {setting!r}; {self.builder} takes "
                                   f"{', '.join(known)}")
        for what in ("slo_factor", "share"):
            value = getattr(self, what)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ClusterError(f"model {self.name!r}: field {what} must be a positive finite number, "
                                   f"got {value!r}")

    def build(self):
        """The float ONNX model."""
        from tcloud.runtime.compiler import zoo

        return zoo.build(self.builder, self.settings)


DEFAULT_MODELS = (
    ModelSpec("dlrm_mlp", "dlrm_mlp"),
    ModelSpec("ncf", "ncf"),
    ModelSpec("mobilenetv2_block", "mobilenetv2_block", ("channels=16", "size=14")),
    ModelSpec("resnet50_block", "resnet50_block", ("channels=64", "width=16", "size=14")),
    ModelSpec("bert_tiny", "bert_encoder", ("shape=tiny",)),
    ModelSpec("decoder_block", "decoder_block"),
)
"""Six heterogeneous models (recommenders, CNN blocks, transformers), sized so that every batch of
the service-time table runs on the ``small`` configuration's Verilator model in seconds."""


TPU_MODELS = (
    ModelSpec("resnet50", "resnet50", slo_factor=10.0),
    ModelSpec("mobilenetv2", "mobilenetv2", ("image_size=112",), slo_factor=10.0),
    ModelSpec("bert_base", "bert_encoder", ("shape=base", "seq=128"), slo_factor=10.0),
    ModelSpec("dlrm", "dlrm", slo_factor=10.0),
    ModelSpec("ncf", "ncf", slo_factor=10.0),
    ModelSpec("dlrm_mlp", "dlrm_mlp", slo_factor=10.0),
)
"""Six full-size models for the ``tpu_like`` configuration: ResNet-50 (224 × 224), MobileNetV2
(112 × 112: chosen when 224 did not compile; it does now, the table was not re-measured), BERT-base
(12 layers, hidden 768, 128 tokens), DLRM with embeddings, NCF and the MLPerf DLRM MLP towers; the
SLO of each is 10 × its solo batch-1 latency on a whole pNPU."""

MODEL_SETS = {"small": DEFAULT_MODELS, "tpu_like": TPU_MODELS}
"""Configuration → the models its service-time table is built for (:func:`default_models`)."""


def default_models(config):
    """The models served on ``config`` by default: :data:`TPU_MODELS` on ``tpu_like``, else
    :data:`DEFAULT_MODELS`."""
    return MODEL_SETS.get(config, DEFAULT_MODELS)


def model_by_name(models, name):
    """The :class:`ModelSpec` called ``name`` in ``models``; :class:`ClusterError` naming the known ones."""
    for model in models:
        if model.name == name:
            return model
    raise ClusterError(f"unknown model {name!r}; known: {', '.join(m.name for m in models)}")


@dataclass
class Trace:
    """Rate multipliers (mean about 1) on a :data:`RATE_STEP` grid, one row per model.

    Attributes
    ----------
    name : str
    multipliers : numpy.ndarray
        ``[models, steps]``; beyond the last step the trace repeats.
    """

    name: str
    multipliers: np.ndarray = field(repr=False)

    def at(self, model, t):
        """Multiplier of model index ``model`` at time ``t`` seconds."""
        row = self.multipliers[model]
        return row[int(t / RATE_STEP) % len(row)]

    def peak_to_mean(self, window=1.0):
        """Per model, the largest mean multiplier over ``window``-second windows: its peak rate over
        its provisioned mean (the multipliers' nominal mean 1; dividing by the realized mean instead
        gave a model that burst more often under MMPP a lower ratio, and fewer replicas, than the
        others). What an operator who knows the trace in advance provisions for."""
        k = max(1, round(window / RATE_STEP))
        rows = self.multipliers
        usable = rows[:, :max(rows.shape[1] // k, 1) * k]
        return usable.reshape(rows.shape[0], -1, min(k, usable.shape[1])).mean(axis=2).max(axis=1)


def make_trace(kind, models, duration, seed=0, *, burst=4.0, high_s=2.0, low_s=8.0, amplitude=0.5, period=None,
               seconds_per_minute=1.0, start_minute=0):
    """The :class:`Trace` of ``kind`` (``poisson``, ``mmpp``, ``diurnal`` or a path to an Azure file).

    Parameters
    ----------
    kind : str or path
    models : sequence of ModelSpec
    duration : float
        Seconds to cover.
    seed : int
    burst, high_s, low_s : float
        MMPP: high-state rate over low-state rate, and the mean sojourn in each state.
    amplitude, period : float
        Diurnal: relative swing and period (default ``duration``, one compressed day).
    seconds_per_minute : float
        Azure replay: simulated seconds per trace minute.
    start_minute : int
        Azure replay: the trace minute at simulated time 0 (0: the file's first).

    Raises
    ------
    ClusterError
        Unknown trace kind, or a malformed Azure file (naming the file, line and field).
    """
    steps = max(1, int(np.ceil(duration / RATE_STEP)))
    n = len(models)
    rng = np.random.default_rng([seed, 0x7ace])
    if kind == "poisson":
        return Trace("poisson", np.ones((n, steps)))
    if kind == "mmpp":
        if not (burst >= 1 and high_s > 0 and low_s > 0):
            raise ClusterError(f"mmpp needs burst >= 1 and positive sojourns, got {burst}, {high_s}, {low_s}")
        rows = np.empty((n, steps))
        p_up, p_down = RATE_STEP / low_s, RATE_STEP / high_s
        for m in range(n):
            high = rng.random() < high_s / (high_s + low_s)
            flips = rng.random(steps)
            for s in range(steps):
                rows[m, s] = burst if high else 1.0
                high = (flips[s] >= p_down) if high else (flips[s] < p_up)
        mean = (burst * high_s + low_s) / (high_s + low_s)
        return Trace("mmpp", rows / mean)
    if kind == "diurnal":
        if not 0 <= amplitude < 1:
            raise ClusterError(f"diurnal amplitude must be in [0, 1), got {amplitude}")
        t = (np.arange(steps) + 0.5) * RATE_STEP
        phase = np.arange(n)[:, None] * 2 * np.pi / max(n, 1)
        return Trace("diurnal", 1 + amplitude * np.sin(2 * np.pi * t[None, :] / (period or duration) + phase))
    path = Path(kind)
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise ClusterError(f"trace {str(kind)!r} is neither one of {', '.join(TRACES)} nor an existing file") from None
    except OSError as exc:
        raise ClusterError(f"cannot read trace {path}: {exc.strerror}") from None
    counts = read_azure(path)
    if len(counts) < n:
        raise ClusterError(f"{path}: {len(counts)} function row(s) with invocations, the workload has {n} models")
    busiest = counts[np.argsort(-counts.sum(axis=1), kind="stable")[:n]].astype(float)
    t = np.arange(steps) * RATE_STEP
    minute = ((t / seconds_per_minute).astype(int) + int(start_minute)) % busiest.shape[1]
    rows = busiest[:, minute]
    means = rows.mean(axis=1, keepdims=True)
    if np.any(means == 0):
        raise ClusterError(f"{path}: a chosen function has no invocations within the "
                           f"{int(duration / seconds_per_minute) + 1} minute(s) simulated from minute {start_minute}")
    return Trace(f"azure:{path.name}", rows / means)


def read_azure(path):
    """Per-minute invocation counts ``[functions, minutes]`` of an Azure Functions 2019 trace file.

    Rows without any invocation are skipped.

    Raises
    ------
    ClusterError
        Naming the file, line and column of a bad header, a short or long row or a count that is
        not an integer in ``0..MAX_COUNT``; or a file that is not a regular text file
        (:func:`~tcloud.runtime.files.read_text`).
    """
    path = Path(path)
    try:
        text = read_text(path, "a trace (CSV text)")
    except TcloudError as exc:
        raise ClusterError(str(exc)) from None
    try:
        return _parse_azure(path, csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise ClusterError(f"trace {path} is not CSV ({exc})") from None


def _parse_azure(path, reader):
    """:func:`read_azure`'s rows from ``reader``, a :func:`csv.reader` over the file ``path``."""
    header = next(reader, None)
    if header is None:
        raise ClusterError(f"{path}: empty file (expected the header {','.join(AZURE_KEYS)},1,2,...)")
    if tuple(header[:4]) != AZURE_KEYS:
        raise ClusterError(f"{path}:1: header must start with {','.join(AZURE_KEYS)}, got {','.join(header[:4])}")
    minutes = header[4:]
    if not minutes:
        raise ClusterError(f"{path}:1: no minute columns after {','.join(AZURE_KEYS)}")
    for i, text in enumerate(minutes, start=1):
        if text.strip() != str(i):
            raise ClusterError(f"{path}:1: column {i + 4} must be minute {i}, got {text!r}")
    rows = []
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ClusterError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
        values = []
        for column, text in enumerate(row[4:], start=4):
            try:
                values.append(int(text))
            except ValueError:
                raise ClusterError(f"{path}:{line}: field {header[column]!r} (column {column + 1}) must be a "
                                   f"non-negative integer, got {text!r}") from None
        bad = [i for i, v in enumerate(values) if not 0 <= v <= MAX_COUNT]
        if bad:
            raise ClusterError(f"{path}:{line}: field {header[bad[0] + 4]!r} must be an invocation count in "
                               f"0..{MAX_COUNT:.0e}, got {values[bad[0]]}")
        if any(values):
            rows.append(values)
    if not rows:
        raise ClusterError(f"{path}: no function has any invocation")
    return np.array(rows, dtype=np.int64)


def write_azure_sample(path, functions=8, minutes=60, seed=0):
    """Write a synthetic trace in the Azure Functions 2019 format: bursty, diurnal-ish per-minute
    counts for ``functions`` functions (the shipped :data:`AZURE_SAMPLE` was made by this)."""
    rng = np.random.default_rng(seed)
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*AZURE_KEYS, *range(1, minutes + 1)])
        for f in range(functions):
            base = 200 * rng.pareto(1.5) + 20
            shape = 1 + 0.6 * np.sin(2 * np.pi * (np.arange(minutes) / minutes + rng.random()))
            bursts = np.where(rng.random(minutes) < 0.1, rng.uniform(2, 5, minutes), 1.0)
            counts = rng.poisson(base * shape * bursts)
            writer.writerow([f"{rng.integers(1 << 60):016x}", f"{rng.integers(1 << 60):016x}",
                             f"{rng.integers(1 << 60):016x}", ("http", "queue", "timer", "event")[f % 4], *counts])


def sorted_uniform(rng, low, high, count):
    """``count`` sorted uniform samples in ``[low, high)``: the order statistics as normalised
    cumulative sums of exponential gaps (linear time; sorting uniforms costs ``log count`` more)."""
    if count == 0:
        return np.empty(0)
    gaps = np.cumsum(rng.standard_exponential(count + 1))
    return low + (high - low) * (gaps[:-1] / gaps[-1])


class Arrivals:
    """Poisson arrival times of each model, produced window by window in time order.

    Parameters
    ----------
    trace : Trace
    rates : sequence of float
        Mean requests per second of each model (the trace multiplies them).
    seed : int
    """

    def __init__(self, trace, rates, seed=0):
        self.trace, self.rates = trace, np.asarray(rates, dtype=float)
        self.rngs = [np.random.default_rng([seed, m, 0xa77]) for m in range(len(rates))]
        self.now = 0.0

    def until(self, t1):
        """Sorted arrival times in ``[now, t1)`` of each model (a list of arrays); ``now`` becomes ``t1``.

        ``t1`` should be a multiple of :data:`RATE_STEP` so that windows of any length give the same
        requests."""
        out = [[] for _ in self.rates]
        t = self.now
        while t < t1 - 1e-12:
            step_end = min((np.floor(t / RATE_STEP + 1e-9) + 1) * RATE_STEP, t1)
            for m, rng in enumerate(self.rngs):
                lam = self.rates[m] * self.trace.at(m, t) * (step_end - t)
                k = rng.poisson(lam)
                out[m].append(sorted_uniform(rng, t, step_end, k))
            t = step_end
        self.now = t1
        return [np.concatenate(parts) if parts else np.empty(0) for parts in out]
