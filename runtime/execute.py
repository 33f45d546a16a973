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
    if isinstance(image, (bytes, bytearray)):
        image = ProgramImage.from_bytes(image, device.config)
    image.check_config(device.config)
    expected = {s.name for s in image.inputs}
    missing, unexpected = sorted(expected - set(inputs)), sorted(set(inputs) - expected)
    if missing or unexpected:
        raise ImageError(f"inputs do not match the image: missing {missing}, unexpected {unexpected}")
    packed = {s.name: s.pack(inputs[s.name]) for s in image.inputs}
    cfg, index = device.config, placement.context
    all_me, all_ve = (1 << cfg.me_count) - 1, (1 << cfg.ve_count) - 1
    device.host(Instr("ctx.hbm", ctx=index, base=placement.hbm_base, size=image.hbm_bytes))
    device.host(Instr("ctx.sram", ctx=index, base=placement.sram_base, size=image.sram_bytes))
    device.host(Instr("ctx.engines", ctx=index,
                      me_mask=all_me if placement.me_mask is None else placement.me_mask,
                      ve_mask=all_ve if placement.ve_mask is None else placement.ve_mask))
    device.host(Instr("ctx.scrub", ctx=index))
    device.write_hbm(placement.hbm_base + image.entry, image.code)
    for segment in image.segments:
        device.write_hbm(placement.hbm_base + segment.offset, segment.data)
    for symbol in image.inputs:
        device.write_hbm(placement.hbm_base + symbol.offset, packed[symbol.name])
    device.host(Instr("ctx.start", ctx=index, pc=image.entry))
    return image


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
