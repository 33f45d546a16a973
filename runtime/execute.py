"""Load a program image into a context of any :class:`~tcloud.runtime.backends.Device` and run it."""

from dataclasses import dataclass

from tcloud.isa import ContextStatus, DecodeError, EngineClass, FaultCode, Instr, ProgramImage, decode
from tcloud.isa.errors import ImageError, TcloudError
from tcloud.isa.table import FAULT_DOCS, INSTRUCTION_BYTES


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


class HostAccessError(TcloudError):
    """A host access on behalf of a context would fall outside that context's HBM window."""


@dataclass(frozen=True)
class Placement:
    """Where a context's windows sit in physical memory."""

    context: int = 0
    hbm_base: int = 0
    sram_base: int = 0
    me_mask: int | None = None
    ve_mask: int | None = None
    dma_mask: int | None = None


@dataclass(frozen=True)
class HbmWindow:
    """A context's HBM window as the host sees it: the one place host accesses are checked.

    Every byte the host writes or reads on behalf of a context (code, data segments, inputs,
    outputs) goes through :meth:`address`, which applies the same rule as the hardware applies to
    the context's own accesses: ``0 <= offset`` and ``offset + size <= size of the window``.

    Parameters
    ----------
    base : int
        Physical HBM byte address of the window.
    size : int
        Window size in bytes.
    """

    base: int
    size: int

    def address(self, offset, size, what):
        """Physical address of ``size`` bytes at context-relative ``offset``.

        Raises
        ------
        HostAccessError
            Naming ``what`` and the window, if any byte lies outside it.
        """
        if offset < 0 or size < 0 or offset + size > self.size:
            raise HostAccessError(f"{what} [{offset:#x}, {offset + size:#x}) lies outside the context's "
                                  f"{self.size:#x}-byte HBM window")
        return self.base + offset


def engine_classes(image):
    """The engine classes of the uTOps ``image``'s program issues before its first ``halt``.

    The walk follows the program as a context runs it (a ``utop`` header, then its body); it stops
    at the first instruction that does not decode, where the hardware faults ``ILLEGAL`` anyway.

    Returns
    -------
    set of EngineClass
    """
    classes, pc = set(), 0
    while pc + INSTRUCTION_BYTES <= len(image.code):
        try:
            instr = decode(image.code[pc:pc + INSTRUCTION_BYTES])
        except DecodeError:
            break
        if instr.mnemonic == "halt":
            break
        if instr.mnemonic == "utop":
            classes.add(EngineClass(instr["cls"]))
            pc += INSTRUCTION_BYTES * instr["len"]
        pc += INSTRUCTION_BYTES
    return classes


def program_writes(window, image):
    """The physical writes that place ``image``'s code and data segments in ``window``."""
    writes = [(window.address(image.entry, len(image.code), "code"), image.code)]
    writes += [(window.address(segment.offset, len(segment.data), f"data segment @{segment.offset:#x}"),
                segment.data) for segment in image.segments]
    return writes


def input_writes(window, image, inputs):
    """The physical writes of ``inputs`` (one array per input symbol of ``image``) into ``window``.

    Raises
    ------
    ImageError
        Missing, unexpected or mis-shaped inputs.
    HostAccessError
        A symbol outside the window.
    """
    expected = {s.name for s in image.inputs}
    missing, unexpected = sorted(expected - set(inputs)), sorted(set(inputs) - expected)
    if missing or unexpected:
        raise ImageError(f"inputs do not match the image: missing {missing}, unexpected {unexpected}")
    return [(window.address(symbol.offset, symbol.nbytes, f"input {symbol.name!r}"),
             symbol.pack(inputs[symbol.name])) for symbol in image.inputs]


def read_symbols(read_hbm, window, symbols):
    """Read each symbol's array from ``window`` with ``read_hbm(physical_address, size) -> bytes``."""
    return {s.name: s.unpack(read_hbm(window.address(s.offset, s.nbytes, f"output {s.name!r}"), s.nbytes))
            for s in symbols}


@dataclass(frozen=True)
class LoadPlan:
    """What loading an image into a context takes, independent of how a device is driven.

    Attributes
    ----------
    image : ProgramImage
    window : HbmWindow
        The context's HBM window (read outputs through it).
    setup : list of Instr
        Host commands that configure and scrub the context (in order).
    writes : list of (int, bytes)
        Physical HBM writes: code, data segments and inputs, each checked against ``window``.
    start : Instr
        The ``ctx.start`` command, issued last.
    """

    image: object
    window: HbmWindow
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
    index = placement.context
    window = HbmWindow(placement.hbm_base, image.hbm_bytes)
    writes = program_writes(window, image) + input_writes(window, image, inputs)
    masks = {name: (1 << count) - 1 if getattr(placement, name) is None else getattr(placement, name)
             for name, count in (("me_mask", config.me_count), ("ve_mask", config.ve_count),
                                 ("dma_mask", config.dma_count))}
    setup = [
        Instr("ctx.hbm", ctx=index, base=window.base, size=window.size),
        Instr("ctx.sram", ctx=index, base=placement.sram_base, size=image.sram_bytes),
        Instr("ctx.engines", ctx=index, **masks),
        Instr("ctx.scrub", ctx=index),
    ]
    return LoadPlan(image, window, setup, writes, Instr("ctx.start", ctx=index, pc=image.entry))


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
    return read_symbols(device.read_hbm, HbmWindow(placement.hbm_base, image.hbm_bytes), image.outputs)


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
