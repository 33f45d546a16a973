"""Text assembler and disassembler for TCloud programs.

Syntax
------
One instruction or directive per line; ``#`` or ``;`` starts a comment. An instruction is its
mnemonic followed by ``field=value`` pairs (any order; fields with a table default may be left
out)::

    utop cls=me signal=t2 wait0=t0 count0=1          # len is counted when omitted
      me.loadw  w=0x400 k=4 n=4 w_stride=4
      me.matmul a=0x0 out=0x800 m=16 a_stride=4 out_stride=16
    halt

Values are integers (``12``, ``0x40``, ``-3``, ``1_024``); token fields take ``t5``; signal masks
take ``t0|t3`` (or an integer); ``cls`` takes ``dma``, ``me`` or ``ve``. Addresses, strides and
sizes are in bytes and must be multiples of 4.

Directives describe the rest of the program image::

    .config small                        # target ArchConfig preset (or give config= to assemble)
    .fingerprint 0123456789abcdef        # only for non-preset configs
    .footprint hbm=0x2000 sram=0x1000    # window sizes the program needs
    .entry 0x1000                        # HBM address of the first instruction (default 0)
    .input  A i8 16x16 offset=0x0 stride=16
    .output C i32 16x16 offset=0x400     # stride defaults to the row size rounded up to 4
    .data 0x1800 00010203                # a data segment: offset, then hex bytes
    .data+ 04050607                      # continues the previous segment

Checks
------
:func:`assemble` refuses, with an :class:`AsmError` naming the line, a program the hardware could
only fault on: a ``utop`` whose explicit ``len`` differs from the number of body instructions that
follow it, a body instruction of another engine class than its header (or outside any uTOp), and a
program without ``halt``. It then runs the program once in the golden model
(:func:`tcloud.isa.golden.run_alone`) and issues an :class:`AsmWarning` at the line of the first
fault that run takes — an address outside the ``.footprint``, a wait no earlier uTOp can satisfy,
a tile larger than the array, a privileged instruction. That is a warning, not an error, because a
program written to provoke a fault (a test of the hardware's isolation) is legitimate; the hardware
check stays the last line of defence. The run needs the configuration, so it is skipped for a
non-preset configuration given only by ``.fingerprint``. :func:`assemble_code` encodes any
instruction stream (fragments, arbitrary test code) and checks none of this.
"""

import re
import warnings

from .config import PRESETS, get_config
from .encoding import Instr, decode_stream
from .errors import AsmError, AsmWarning, EncodingError, HostCommandError, ImageError, TcloudError
from .golden import run_alone
from .image import ProgramImage, Segment, Symbol
from .table import INSTRUCTION_BYTES, UTOP_CLASSES, WORD_BYTES, ContextStatus, EngineClass, FaultCode, spec_for

_CLASS_NAMES = {c.name.lower(): int(c) for c in UTOP_CLASSES}
_BOUNDS_FAULTS = (FaultCode.SRAM_BOUNDS, FaultCode.HBM_BOUNDS, FaultCode.FETCH_BOUNDS)
_TOKEN = re.compile(r"t(\d+)$")


def _parse_int(text):
    return int(text.replace("_", ""), 0)


def _parse_value(field, text):
    lowered = text.lower()
    if field.kind == "class" and lowered in _CLASS_NAMES:
        return _CLASS_NAMES[lowered]
    if field.kind == "flag" and lowered in ("true", "false"):
        return int(lowered == "true")
    if field.kind == "token" and _TOKEN.match(lowered):
        return int(_TOKEN.match(lowered).group(1))
    if field.kind == "mask" and "t" in lowered:
        mask = 0
        for part in lowered.split("|"):
            match = _TOKEN.match(part.strip())
            if not match:
                raise ValueError(f"bad token {part!r} in mask (write t0|t3)")
            mask |= 1 << int(match.group(1))
        return mask
    return _parse_int(text)


def _format_value(field, value):
    if field.kind == "class":
        return EngineClass(value).name.lower() if value in _CLASS_NAMES.values() else str(value)
    if field.kind == "token":
        return f"t{value}"
    if field.kind == "mask":
        return "|".join(f"t{i}" for i in range(field.width) if value >> i & 1) or "0"
    if field.scale > 1:
        return hex(value)
    return str(value)


def format_instr(instr):
    """Return the assembly text of one instruction (fields at their default are left out)."""
    parts = [instr.mnemonic]
    for f in instr.spec.fields:
        value = instr.values[f.name]
        if f.default is None or value != f.default:
            parts.append(f"{f.name}={_format_value(f, value)}")
    return " ".join(parts)


def _parse_instr(tokens, line, source):
    mnemonic = tokens[0].lower()
    try:
        spec = spec_for(mnemonic)
    except EncodingError as exc:
        raise AsmError(str(exc), line=line, source=source) from None
    values = {}
    for token in tokens[1:]:
        name, sep, text = token.partition("=")
        if not sep or not name or not text:
            raise AsmError(f"{mnemonic}: expected field=value, got {token!r}", line=line, source=source)
        if name in values:
            raise AsmError(f"{mnemonic}: field {name!r} given twice", line=line, source=source)
        try:
            values[name] = _parse_value(spec.field(name), text)
        except (EncodingError, ValueError) as exc:
            raise AsmError(f"{mnemonic}: field {name!r}: {exc}", line=line, source=source) from None
    return spec, values


def _split(text):
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = re.split(r"[#;]", raw, maxsplit=1)[0].replace(",", " ").split()
        if stripped:
            yield number, stripped


def assemble_code(text, *, source=None):
    """Assemble instruction text (no directives) into a code segment.

    Any instruction stream is accepted (fragments, test code): unlike :func:`assemble`, this checks
    neither the uTOp structure nor a run.

    Raises
    ------
    AsmError
        Naming the line of the first error.
    """
    return _encode(_assemble(text, source=source, allow_directives=False)[0])


def assemble(text, *, config=None, source=None):
    """Assemble a complete program (directives and code) into a :class:`ProgramImage`.

    The program is checked as the module docstring says (Checks).

    Parameters
    ----------
    text : str
        Assembly source.
    config : ArchConfig or str, optional
        Target configuration; required unless the text has a ``.config`` directive (if both are
        given they must agree).
    source : str, optional
        File name used in error and warning messages.

    Raises
    ------
    AsmError
        Naming the line of the first error.

    Warns
    -----
    AsmWarning
        At the line where the program would fault when run.
    """
    listing, directives = _assemble(text, source=source, allow_directives=True)
    image, config = _build_image(_encode(listing), directives, config, source)
    _check_structure(listing, source)
    if config is not None:
        _check_run(image, config, [line for line, _ in listing], source)
    return image


def instruction_lines(text):
    """Return the source line of each instruction of assembly ``text``, in program order.

    ``lines[i]`` is the line of the instruction at ``entry + 16 * i`` of the assembled code.
    """
    return [line for line, tokens in _split(text) if not tokens[0].startswith(".")]


def _encode(listing):
    return b"".join(instr.encode() for _, instr in listing)


def _check_structure(listing, source):
    """Refuse uTOp bodies that do not match their headers, and a program without ``halt``."""
    index = 0
    while index < len(listing):
        line, instr = listing[index]
        index += 1
        if instr.engine in UTOP_CLASSES:
            raise AsmError(f"{instr.mnemonic} is outside a uTOp (body instructions follow a utop header)",
                           line=line, source=source)
        if instr.mnemonic != "utop":
            continue
        body = []
        while index < len(listing) and listing[index][1].engine in UTOP_CLASSES:
            body.append(listing[index])
            index += 1
        if instr["len"] != len(body):
            raise AsmError(f"utop declares len={instr['len']} but {len(body)} body instruction(s) follow it "
                           f"(leave len out to have it counted)", line=line, source=source)
        cls = EngineClass(instr["cls"])
        for body_line, body_instr in body:
            if body_instr.engine != cls:
                raise AsmError(f"{body_instr.mnemonic} is a {body_instr.engine.name} instruction in the "
                               f"{cls.name} uTOp of line {line}", line=body_line, source=source)
    if not any(instr.mnemonic == "halt" for _, instr in listing):
        raise AsmError("the program has no halt: it would run off its end (add halt after the last uTOp)",
                       line=listing[-1][0], source=source)


def _check_run(image, config, lines, source):
    """Warn at the line of the first fault the program takes in the golden model."""
    try:
        context = run_alone(image, config).contexts[0]
    except HostCommandError as exc:
        raise AsmError(f"the footprint (hbm={image.hbm_bytes:#x} sram={image.sram_bytes:#x}) does not fit "
                       f"config {config.name!r}: {exc}", source=source) from None
    if context.status != ContextStatus.FAULTED:
        return
    index = (context.fault_pc - image.entry) // INSTRUCTION_BYTES
    line = lines[index] if 0 <= index < len(lines) else 0
    footprint = (f" (.footprint hbm={image.hbm_bytes:#x} sram={image.sram_bytes:#x})"
                 if context.fault in _BOUNDS_FAULTS else "")
    warnings.warn_explicit(f"the program faults here with {context.fault.name} when run: "
                           f"{context.fault_detail}{footprint}", AsmWarning, source or "<text>", line)


def _assemble(text, *, source, allow_directives):
    """Return ``[(line, Instr)]`` and the directives' state."""
    pending = []  # (line, spec, values)
    directives = {"symbols": [], "segments": []}
    for line, tokens in _split(text):
        head = tokens[0]
        if head.startswith("."):
            if not allow_directives:
                raise AsmError(f"directive {head} is not allowed here", line=line, source=source)
            _directive(directives, head, tokens[1:], line, source)
            continue
        spec, values = _parse_instr(tokens, line, source)
        pending.append((line, spec, values))
    instrs = []
    for index, (line, spec, values) in enumerate(pending):
        if spec.mnemonic == "utop" and "len" not in values:
            body = 0
            for _, later, _ in pending[index + 1:]:
                if later.engine not in UTOP_CLASSES:
                    break
                body += 1
            if body == 0:
                raise AsmError("utop has no body instructions after it", line=line, source=source)
            values["len"] = body
        try:
            instrs.append((line, Instr(spec, **values)))
        except EncodingError as exc:
            raise AsmError(str(exc), line=line, source=source) from None
    return instrs, directives


def _keywords(tokens, allowed, head, line, source):
    out = {}
    for token in tokens:
        name, sep, text = token.partition("=")
        if not sep or name not in allowed:
            raise AsmError(f"{head}: expected one of {', '.join(k + '=' for k in allowed)}, got "
                           f"{token!r}", line=line, source=source)
        try:
            out[name] = _parse_int(text)
        except ValueError:
            raise AsmError(f"{head}: {name}={text!r} is not an integer", line=line, source=source) from None
    return out


def _directive(state, head, args, line, source):
    def need(count):
        if len(args) < count:
            raise AsmError(f"{head} needs at least {count} argument(s)", line=line, source=source)

    try:
        if head == ".config":
            need(1)
            state["config"] = (args[0], line)
        elif head == ".fingerprint":
            need(1)
            value = bytes.fromhex(args[0])
            if len(value) != 8:
                raise ValueError("a fingerprint is 8 bytes (16 hex digits)")
            state["fingerprint"] = value
        elif head == ".footprint":
            state.update({f"{k}_bytes": v for k, v in
                          _keywords(args, ("hbm", "sram"), head, line, source).items()})
        elif head == ".entry":
            need(1)
            state["entry"] = _parse_int(args[0])
        elif head in (".input", ".output"):
            need(3)
            name, dtype, shape_text = args[:3]
            shape = tuple(_parse_int(d) for d in shape_text.lower().split("x"))
            kw = _keywords(args[3:], ("offset", "stride"), head, line, source)
            if "offset" not in kw:
                raise AsmError(f"{head} {name}: offset= is required", line=line, source=source)
            itemsize = 1 if dtype == "i8" else 4
            row = shape[-1] * itemsize
            stride = kw.get("stride", -(-row // WORD_BYTES) * WORD_BYTES)
            state["symbols"].append(Symbol(name, head[1:], dtype, shape, kw["offset"], stride))
        elif head == ".data":
            need(1)
            state["segments"].append([_parse_int(args[0]), bytearray.fromhex("".join(args[1:]))])
        elif head == ".data+":
            need(1)
            if not state["segments"]:
                raise AsmError(".data+ without a preceding .data", line=line, source=source)
            state["segments"][-1][1] += bytes.fromhex("".join(args))
        else:
            raise AsmError(f"unknown directive {head}", line=line, source=source)
    except (ValueError, ImageError) as exc:
        if isinstance(exc, AsmError):
            raise
        raise AsmError(f"{head}: {exc}", line=line, source=source) from None


def _build_image(code, state, config, source):
    named = state.get("config")
    if config is not None:
        config = get_config(config)
        if named and named[0] != config.name:
            raise AsmError(f".config {named[0]} disagrees with the requested config {config.name!r}",
                           line=named[1], source=source)
    elif named:
        try:
            config = get_config(named[0])
        except TcloudError:
            if "fingerprint" not in state:
                raise AsmError(f"unknown config {named[0]!r} and no .fingerprint; presets are "
                               f"{', '.join(PRESETS)}", line=named[1], source=source) from None
    elif "fingerprint" not in state:
        raise AsmError("no target configuration: add '.config NAME' or pass a config", source=source)
    fingerprint = state.get("fingerprint") or config.fingerprint()
    if config is not None and fingerprint != config.fingerprint():
        raise AsmError(f".fingerprint {fingerprint.hex()} does not match config {config.name!r} "
                       f"({config.fingerprint().hex()})", source=source)
    name = config.name if config is not None else named[0] if named else "custom"
    if not code:
        raise AsmError("the program has no instructions", source=source)
    segments = [Segment(offset, bytes(data)) for offset, data in state["segments"]]
    entry = state.get("entry", 0)
    ends = [entry + len(code)] + [s.offset + len(s.data) for s in segments]
    ends += [s.offset + s.nbytes for s in state["symbols"]]
    hbm_bytes = state.get("hbm_bytes", -(-max(ends) // WORD_BYTES) * WORD_BYTES)
    sram_bytes = state.get("sram_bytes", config.sram_bytes if config is not None else 0)
    try:
        image = ProgramImage(fingerprint=fingerprint, config_name=name, code=code, entry=entry,
                             hbm_bytes=hbm_bytes, sram_bytes=sram_bytes, segments=segments,
                             symbols=list(state["symbols"]))
    except ImageError as exc:
        raise AsmError(str(exc), source=source) from None
    return image, config


def disassemble_code(code):
    """Return assembly text for a code segment, one instruction per line, uTOp bodies indented."""
    lines = []
    remaining = 0
    for instr in decode_stream(code):
        indent = "  " if remaining > 0 and instr.engine in UTOP_CLASSES else ""
        remaining = instr["len"] if instr.mnemonic == "utop" else max(remaining - 1, 0)
        lines.append(indent + format_instr(instr))
    return "\n".join(lines) + "\n"


def disassemble(image):
    """Return assembly text that :func:`assemble` turns back into the same image."""
    out = [f".config {image.config_name}"]
    preset = PRESETS.get(image.config_name)
    if preset is None or preset.fingerprint() != image.fingerprint:
        out.append(f".fingerprint {image.fingerprint.hex()}")
    out.append(f".footprint hbm={image.hbm_bytes:#x} sram={image.sram_bytes:#x}")
    out.append(f".entry {image.entry:#x}")
    for s in image.symbols:
        shape = "x".join(str(d) for d in s.shape)
        out.append(f".{s.kind} {s.name} {s.dtype} {shape} offset={s.offset:#x} stride={s.row_stride}")
    for seg in image.segments:
        chunks = [seg.data[i:i + 32].hex() for i in range(0, len(seg.data), 32)] or [""]
        out.append(f".data {seg.offset:#x} {chunks[0]}".rstrip())
        out.extend(f".data+ {c}" for c in chunks[1:])
    return "\n".join(out) + "\n" + disassemble_code(image.code)


__all__ = ["assemble", "assemble_code", "instruction_lines", "disassemble", "disassemble_code", "format_instr",
           "INSTRUCTION_BYTES"]
