"""Backends by name: :data:`BACKENDS` and :func:`make_device`."""

from .device import DeviceError
from .functional import FunctionalDevice


def _amaranth(config, vcd=None, **timing):
    from .amaranth import AmaranthDevice
    if vcd is not None and str(vcd).endswith(".fst"):
        raise DeviceError(f"Amaranth's simulator writes VCD only, not {vcd}; name a .vcd file or use the "
                          f"verilator backend")
    return AmaranthDevice(config, vcd=vcd, **timing)


def _verilator(config, vcd=None, **timing):
    from .verilator import VerilatorDevice
    return VerilatorDevice(config, trace=vcd, **timing)


def _perf(config, **timing):
    from .perf import PerfDevice
    return PerfDevice(config, **timing)


BACKENDS = {"functional": FunctionalDevice, "amaranth": _amaranth, "verilator": _verilator, "perf": _perf}
"""Backend name → device factory: ``functional`` (golden model), ``amaranth`` (RTL in Amaranth's
simulator), ``verilator`` (RTL compiled with Verilator) and ``perf`` (the uTOp-level performance
model, :class:`~tcloud.runtime.backends.perf.PerfDevice`)."""

TIMED_BACKENDS = ("amaranth", "verilator", "perf")
WAVEFORM_BACKENDS = ("amaranth", "verilator")


def make_device(backend, config, *, vcd=None, **hbm_timing):
    """Create a device for ``backend`` (a name in :data:`BACKENDS`).

    Parameters
    ----------
    backend : str
    config : str or ArchConfig
    vcd : path, optional
        For the RTL backends: write a waveform of every signal here (FST if the name ends with
        ``.fst``, on ``verilator`` only; else VCD). The file is complete once the device is closed.
    **hbm_timing
        For the timed backends: ``hbm_latency``, ``hbm_jitter``, ``hbm_accept_probability``, ``seed``;
        ``perf`` also takes ``data`` (``False``: timing only, no data computed).

    Raises
    ------
    DeviceError
        If the backend is unknown, or HBM timing or a waveform is asked of the ``functional`` backend.
    """
    try:
        factory = BACKENDS[backend]
    except (KeyError, TypeError):
        raise DeviceError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}") from None
    if hbm_timing and backend not in TIMED_BACKENDS:
        raise DeviceError(f"the {backend} backend is untimed; HBM timing {sorted(hbm_timing)} applies only to "
                          f"{', '.join(TIMED_BACKENDS)}")
    if vcd is None:
        return factory(config, **hbm_timing)
    if backend not in WAVEFORM_BACKENDS:
        raise DeviceError(f"the {backend} backend has no signals to trace; waveforms come from "
                          f"{' and '.join(WAVEFORM_BACKENDS)}")
    return factory(config, vcd=vcd, **hbm_timing)
