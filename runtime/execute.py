"""Load a program image into a context of any :class:`~tcloud.runtime.device.Device` and run it."""

from dataclasses import dataclass

from tcloud.isa import ContextStatus, FaultCode, Instr, ProgramImage
from tcloud.isa.errors import ImageError, TcloudError
from tcloud.isa.table import FAULT_DOCS


class DeviceFault(TcloudError):
    """A context stopped with a fault.

    Attributes
    ----------
    context : int
    fault : FaultCode
    pc : int
        Context-relative address of the faulting instruction.
    """

    def __init__(self, context, fault, pc, detail=""):
        self.context, self.fault, self.pc = context, FaultCode(fault), pc
        text = f"context {context} faulted with {self.fault.name} at pc {pc:#x}: {FAULT_DOCS[self.fault]}"
        super().__init__(text + (f" ({detail})" if detail else ""))


class RunLimitError(TcloudError):
    """The device hit its run limit before the program finished."""


@dataclass(frozen=True)
class Placement:
    """Where a context's windows sit in physical memory."""

    context: int = 0
    hbm_base: int = 0
    sram_base: int = 0
    me_mask: int | None = None
    ve_mask: int | None = None


@dataclass(frozen=True)
class LoadPlan:
    """What loading an image into a context takes, independent of how a device is driven.

    Attributes
    ----------
    image : ProgramImage
    setup : list of Instr
        Host commands that configure and scrub the context (in order).
    writes : list of (int, bytes)
        Physical HBM writes: code, data segments and inputs.
    start : Instr
        The ``ctx.start`` command, issued last.
    """

    image: object
    setup: list
    writes: list
    start: object


def plan_load(config, image, inputs, placement=Placement()):
    """Check ``image`` and ``inputs`` against ``config`` and return the :class:`LoadPlan`.

    Raises
    ------
    ImageError
        Missing, unexpected or mis-shaped inputs, or an image built for another config.
    """
    if isinstance(image, (bytes, bytearray)):
        image = ProgramImage.from_bytes(image, config)
    image.check_config(config)
    expected = {s.name for s in image.inputs}
    missing, unexpected = sorted(expected - set(inputs)), sorted(set(inputs) - expected)
    if missing or unexpected:
        raise ImageError(f"inputs do not match the image: missing {missing}, unexpected {unexpected}")
    index, base = placement.context, placement.hbm_base
    all_me, all_ve = (1 << config.me_count) - 1, (1 << config.ve_count) - 1
    setup = [
        Instr("ctx.hbm", ctx=index, base=base, size=image.hbm_bytes),
        Instr("ctx.sram", ctx=index, base=placement.sram_base, size=image.sram_bytes),
        Instr("ctx.engines", ctx=index, me_mask=all_me if placement.me_mask is None else placement.me_mask,
              ve_mask=all_ve if placement.ve_mask is None else placement.ve_mask),
        Instr("ctx.scrub", ctx=index),
    ]
    writes = [(base + image.entry, image.code)]
    writes += [(base + segment.offset, segment.data) for segment in image.segments]
    writes += [(base + symbol.offset, symbol.pack(inputs[symbol.name])) for symbol in image.inputs]
    return LoadPlan(image, setup, writes, Instr("ctx.start", ctx=index, pc=image.entry))


def load_image(device, image, inputs, placement=Placement()):
    """Configure a context for ``image``, write its code, data and inputs, and start it.

    Parameters
    ----------
    device : Device
    image : ProgramImage or bytes
        Bytes are loaded with :meth:`ProgramImage.from_bytes` against the device's config.
    inputs : dict of str to array_like
        One array per input symbol of the image.
    placement : Placement

    Raises
    ------
    ImageError
        Missing, unexpected or mis-shaped inputs, or an image built for another config.
    HostCommandError
        If the windows do not fit the device.
    """
    plan = plan_load(device.config, image, inputs, placement)
    for command in plan.setup:
        device.host(command)
    for address, data in plan.writes:
        device.write_hbm(address, data)
    device.host(plan.start)
    return plan.image


def read_outputs(device, image, placement=Placement()):
    """Read every output symbol of a finished context; raise :class:`DeviceFault` if it faulted."""
    info = device.context(placement.context)
    if info.status == ContextStatus.FAULTED:
        raise DeviceFault(placement.context, info.fault, info.fault_pc, info.detail)
    if info.status != ContextStatus.DONE:
        raise RunLimitError(f"context {placement.context} is {info.status.name}, not DONE")
    return {s.name: s.unpack(device.read_hbm(placement.hbm_base + s.offset, s.nbytes))
            for s in image.outputs}


def run_image(device, image, inputs, placement=Placement(), max_cycles=None):
    """Load ``image`` into one context, run the device and return ``(outputs, context info)``.

    Raises
    ------
    DeviceFault
        If the context faulted (the message names the fault code and pc).
    RunLimitError
        If ``max_cycles`` ran out first.
    """
    image = load_image(device, image, inputs, placement)
    if not device.run(max_cycles):
        raise RunLimitError(f"the program did not finish within {max_cycles} steps/cycles")
    outputs = read_outputs(device, image, placement)
    return outputs, device.context(placement.context)
