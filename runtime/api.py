"""Scripting entry points: one call from NumPy arrays to a result computed on a (virtual) NPU."""

import numpy as np

from tcloud.firmware import Requant, gemm
from tcloud.isa import decode_stream, get_config
from tcloud.isa.errors import TcloudError

from .backends import make_device
from .execute import RunLimitError, load_image, read_outputs


class InputError(TcloudError, ValueError):
    """An argument of a scripting call has the wrong type, shape or value range."""


def _int_matrix(name, value, dtype, ndim):
    array = np.asarray(value)
    if array.ndim != ndim:
        raise InputError(f"{name} must be {ndim}-D, got shape {array.shape}")
    if array.dtype.kind not in "iub":
        raise InputError(f"{name} must hold integers, got dtype {array.dtype}")
    info = np.iinfo(dtype)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise InputError(f"{name} has values outside {np.dtype(dtype).name} [{info.min}, {info.max}]")
    return array.astype(dtype)


def matmul(a, b, *, bias=None, requant=None, config="small", backend="functional",
           return_stats=False, vnpu=None):
    """Multiply int8 matrices on an NPU: ``requant(a @ b + bias)``.

    Parameters
    ----------
    a : array_like, int8, shape (M, K)
    b : array_like, int8, shape (K, N)
    bias : array_like, int32, shape (N,), optional
        Added to every row of the int32 product.
    requant : Requant or tuple, optional
        ``(multiplier, shift, zero_point)``: the result becomes int8
        ``saturate(round_half_even((a @ b + bias) * multiplier / 2**shift) + zero_point)``.
    config : str or ArchConfig
        pNPU configuration (preset name or object).
    backend : str
        Device backend (``"functional"``: the golden model).
    return_stats : bool
        Also return a dict of instruction, uTOp and traffic counts.
    vnpu : VNPU, optional
        Run on this vNPU of a :class:`~tcloud.runtime.Hypervisor` (its config and
        backend apply; ``config`` and ``backend`` are ignored). The GEMM program replaces the
        program loaded in the vNPU. Statistics then include the run's latency in cycles.

    Returns
    -------
    numpy.ndarray or (numpy.ndarray, dict)
        int32 (or int8 with ``requant``) array of shape (M, N).

    Raises
    ------
    InputError
        Wrong shapes, dtypes or values.
    TcloudError
        For an unknown config or backend, or a device fault.

    Examples
    --------
    >>> import numpy as np
    >>> matmul(np.ones((2, 3), np.int8), np.ones((3, 2), np.int8)).tolist()
    [[3, 3], [3, 3]]
    """
    cfg = vnpu.config if vnpu is not None else get_config(config)
    a = _int_matrix("a", a, np.int8, 2)
    b = _int_matrix("b", b, np.int8, 2)
    if a.shape[1] != b.shape[0]:
        raise InputError(f"inner dimensions differ: a is {a.shape}, b is {b.shape}")
    if a.size == 0 or b.size == 0:
        raise InputError(f"empty operands are not supported: a is {a.shape}, b is {b.shape}")
    inputs = {"A": a, "B": b}
    if bias is not None:
        bias = _int_matrix("bias", bias, np.int32, 1)
        if bias.shape != (b.shape[1],):
            raise InputError(f"bias must have shape ({b.shape[1]},), got {bias.shape}")
        inputs["bias"] = bias
    if requant is not None and not isinstance(requant, Requant):
        try:
            requant = Requant(*requant)
        except TypeError:
            raise InputError(f"requant must be a Requant or (multiplier, shift, zero_point), "
                             f"got {requant!r}") from None
    (m, k), n = a.shape, b.shape[1]
    image = gemm(cfg, m, k, n, bias=bias is not None, requant=requant)
    if vnpu is not None:
        return _matmul_on_vnpu(vnpu, image, inputs, return_stats)
    device = make_device(backend, cfg)
    image = load_image(device, image, inputs)
    before = device.stats()
    if not device.run():
        raise RunLimitError("the device stopped before the GEMM finished")
    after = device.stats()
    result = read_outputs(device, image)["C"]
    if not return_stats:
        return result
    info = device.context(0)
    stats = {
        "backend": backend,
        "config": cfg.name,
        "instructions": len(decode_stream(image.code)),
        "utops": info.counters["utops"],
        "utops_total": sum(info.counters["utops"].values()),
        "macs": info.counters["macs"],
        "hbm_bytes_read": info.counters["hbm_bytes_read"],
        "hbm_bytes_written": info.counters["hbm_bytes_written"],
        **run_timing(before, after),
    }
    return result, stats


def _matmul_on_vnpu(vnpu, image, inputs, return_stats):
    before = vnpu.usage()
    vnpu.load(image)
    result = vnpu.run(inputs)["C"]
    if not return_stats:
        return result
    after = vnpu.usage()
    delta = {name: getattr(after, name) - getattr(before, name)
             for name in ("me_owned_cycles", "me_harvested_cycles", "ve_owned_cycles", "ve_harvested_cycles",
                          "dma_cycles", "macs", "hbm_bytes_read", "hbm_bytes_written")}
    return result, {"backend": vnpu._hv.backend, "config": vnpu.config.name, "vnpu": vnpu.name,
                    "instructions": len(decode_stream(image.code)), "cycles": vnpu.runs[-1].latency_cycles,
                    **delta}


def run_timing(before, after):
    """Cycles, busy cycles and utilization per engine and per engine class between two
    ``Device.stats()`` snapshots.

    Backends without timing (``functional``) give only their name.
    """
    out = {"backend": after["backend"]}
    if "cycles" not in after:
        return out
    cycles = after["cycles"] - before["cycles"]
    busy = {name: after["engine_busy_cycles"][name] - before["engine_busy_cycles"][name]
            for name in after["engine_busy_cycles"]}
    out["cycles"] = cycles
    out["engine_busy_cycles"] = busy
    out["engine_utilization"] = {name: round(value / cycles, 4) if cycles else 0.0 for name, value in busy.items()}
    out["utilization"] = {}
    for cls in ("dma", "me", "ve"):
        names = [name for name in busy if name.rstrip("0123456789") == cls]
        out["utilization"][cls] = round(sum(busy[n] for n in names) / (cycles * len(names)), 4) if cycles else 0.0
    return out


def format_utilization(utilization):
    """``{"dma": 0.5, "me": 0.25}`` as ``"DMA 50.0%, ME 25.0%"`` (per class or per engine)."""
    return ", ".join(f"{name.upper()} {value:.1%}" for name, value in utilization.items())
