"""Per-layer timing of a compiled model on an RTL backend.

The compiler ends every operator with a ``fence``, so the context's ``PC`` register moves past an
operator's code only once all of its uTOps have completed. :func:`profile` runs the model once,
reads ``PC``, the cycle counter and the engines' busy counters every ``poll_cycles`` cycles, and
charges each interval to the operators whose code ``PC`` passed; times are exact to within one poll.
"""

import io
from dataclasses import dataclass

from tcloud.isa import csr

from ..api import InputError, run_timing
from ..backends import TIMED_BACKENDS, make_device
from ..execute import RunLimitError, load_image, read_outputs
from ..files import write_file


@dataclass(frozen=True)
class LayerProfile:
    """Timing of one operator.

    Attributes
    ----------
    name, op : str
    cycles : int
    macs : int
    array_efficiency : float
        MACs over the matrix engines' peak for those cycles (``me_count × rows × cols`` a cycle).
    utilization : dict
        Busy fraction per engine class (``dma``, ``me``, ``ve``) over the layer's cycles.
    """

    name: str
    op: str
    cycles: int
    macs: int
    array_efficiency: float
    utilization: dict

    def to_dict(self):
        return {"name": self.name, "op": self.op, "cycles": self.cycles, "macs": self.macs,
                "array_efficiency": round(self.array_efficiency, 4), "utilization": self.utilization}


def profile(compiled, inputs=None, *, backend="verilator", poll_cycles=64, seed=0, max_cycles=10**9, **hbm_timing):
    """Run ``compiled`` once on a timed backend and time each operator.

    Parameters
    ----------
    compiled : CompiledModel
    inputs : dict, optional
        Float inputs (default: seeded standard-normal samples).
    backend : str
        ``verilator`` or ``amaranth``.
    poll_cycles : int
        Cycles between two readings of the context's ``PC`` (the timing resolution).

    Returns
    -------
    tuple
        ``(layers, total)``: a :class:`LayerProfile` per operator and the whole run's
        :func:`~tcloud.runtime.api.run_timing` from the model's start, with ``setup_cycles``: what
        the host's commands before it took (configuring the context and scrubbing its HBM window).

    Raises
    ------
    InputError
        For an untimed backend.
    """
    if backend not in TIMED_BACKENDS:
        raise InputError(f"profiling needs a timed backend ({', '.join(TIMED_BACKENDS)}), not {backend!r}")
    if inputs is None:
        inputs = compiled.random_inputs(seed)
    device = make_device(backend, compiled.config, **hbm_timing)
    try:
        return _profile(device, compiled, inputs, poll_cycles, max_cycles)
    finally:
        close = getattr(device, "close", None)
        if close is not None:
            close()


def _profile(device, compiled, inputs, poll_cycles, max_cycles):
    cfg = compiled.config
    before_load = device.stats()
    load_image(device, compiled.image, compiled.device_inputs(inputs))
    start = device.stats()  # the host's setup (configuring and scrubbing the context) is not a layer's
    ends = [layer["code"][1] for layer in compiled.layers]
    marks, done, spent = [], False, 0
    while not done:
        if spent > max_cycles:
            raise RunLimitError(f"the model did not finish within {max_cycles} cycles")
        done = device.run(poll_cycles)
        spent += poll_cycles
        pc = device.csr_read(csr.context_csr(0, "PC"))
        stats = device.stats()
        while len(marks) < len(ends) and (done or pc >= ends[len(marks)]):
            marks.append(stats)
    read_outputs(device, compiled.image)  # raises if the run faulted
    peak = cfg.me_count * cfg.me_rows * cfg.me_cols
    layers, before = [], start
    for layer, after in zip(compiled.layers, marks):
        timing = run_timing(before, after)
        cycles = timing["cycles"]
        layers.append(LayerProfile(layer["name"], layer["op"], cycles, layer["macs"],
                                   layer["macs"] / (cycles * peak) if cycles else 0.0, timing["utilization"]))
        before = after
    total = run_timing(start, marks[-1] if marks else device.stats())
    total["setup_cycles"] = run_timing(before_load, start)["cycles"]
    return layers, total


def profile_table(layers, total):
    """The per-layer profile as text lines."""
    lines = [f"{'layer':<28} {'op':<14} {'cycles':>10} {'share':>6} {'MACs':>12} {'array':>6} {'ME':>5} {'VE':>5} "
             f"{'DMA':>5}"]
    for layer in layers:
        u = layer.utilization
        lines.append(f"{layer.name[:28]:<28} {layer.op[:14]:<14} {layer.cycles:>10,} "
                     f"{layer.cycles / max(total['cycles'], 1):>6.1%} {layer.macs:>12,} {layer.array_efficiency:>6.1%} "
                     f"{u['me']:>5.0%} {u['ve']:>5.0%} {u['dma']:>5.0%}")
    lines.append(f"{'total':<28} {'':<14} {total['cycles']:>10,}")
    lines.append(f"{'(context setup before it)':<28} {'':<14} {total['setup_cycles']:>10,}")
    return lines


def profile_plot(layers, path, title):
    """Bar chart of cycles per layer with the matrix-array efficiency, written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{layer.name} ({layer.op})" for layer in layers]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(layers) + 1.5))
    ax.barh(names, [layer.cycles for layer in layers], color="tab:blue")
    for y, layer in enumerate(layers):
        ax.text(layer.cycles, y, f"  {layer.array_efficiency:.0%} of array", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.3 * max((layer.cycles for layer in layers), default=1))
    ax.set_xlabel("cycles")
    ax.set_title(title)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return write_file(path, png.getvalue(), "profile plot")
