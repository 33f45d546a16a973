"""Program image: the binary container a tenant hands to a vNPU.

Layout (all integers little-endian)::

    header (64 bytes)
      magic        8s   b"TCNPUIMG"
      version      H    FORMAT_VERSION
      reserved     H    0
      crc32        I    CRC-32 of everything after the header
      fingerprint  8s   ArchConfig.fingerprint() of the target
      config_name  16s  UTF-8, NUL padded (informational)
      hbm_bytes    I    HBM window the program needs
      sram_bytes   I    scratchpad window the program needs
      entry        I    entry point (context-relative HBM address of the code)
      code_bytes   I    length of the code segment
      n_segments   I
      n_symbols    I
      payload      I    bytes after the header
    code           code_bytes bytes, loaded at ``entry``
    segments       n_segments × (offset I, length I, data)
    symbols        n_symbols × (name_len H, name, kind B, dtype B, ndim B, shape ndim×I,
                                offset I, row_stride I)
    metadata       metadata_len I, then that many bytes of UTF-8 text (version 2; version 1
                   images end after the symbols and read with empty metadata)

All addresses are context-relative: the image is placed at the start of the context's HBM window.
"""

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import (BadMagicError, ConfigMismatchError, CorruptImageError, ImageError,
                     TruncatedImageError, UnsupportedVersionError)
from .table import INSTRUCTION_BYTES, WORD_BYTES

MAGIC = b"TCNPUIMG"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_HEADER = struct.Struct("<8sHHI8s16sIIIIIII")
HEADER_BYTES = _HEADER.size

DTYPES = {"i8": np.int8, "i32": np.int32}
_U32_LIMIT = 1 << 32
"""Offsets, sizes and strides are stored as 32-bit fields: every byte a piece spans lies below this."""
_DTYPE_CODES = {"i8": 0, "i32": 1}
_KIND_CODES = {"input": 0, "output": 1}


@dataclass(frozen=True)
class Symbol:
    """A named tensor in the context's HBM window.

    Parameters
    ----------
    name : str
        Tensor name (unique in the image).
    kind : str
        ``"input"`` (the runtime writes it before the run) or ``"output"`` (read after).
    dtype : str
        ``"i8"`` or ``"i32"``.
    shape : tuple of int
        1-D ``(n,)`` or 2-D ``(rows, cols)``.
    offset : int
        Context-relative HBM byte address of row 0 (a non-negative multiple of 4).
    row_stride : int
        Bytes between row starts (a multiple of 4, at least one row's bytes).

    Raises
    ------
    ImageError
        Naming the field that is malformed; a symbol is valid from construction on.
    """

    name: str
    kind: str
    dtype: str
    shape: tuple
    offset: int
    row_stride: int

    def __post_init__(self):
        if not self.name or len(self.name.encode()) > 0xFFFF:
            raise ImageError(f"symbol name {self.name!r} must be 1..65535 bytes")
        if self.kind not in _KIND_CODES:
            raise ImageError(f"symbol {self.name!r}: kind {self.kind!r} is not 'input' or 'output'")
        if self.dtype not in DTYPES:
            raise ImageError(f"symbol {self.name!r}: dtype {self.dtype!r} is not one of {list(DTYPES)}")
        shape = tuple(int(d) for d in self.shape)
        object.__setattr__(self, "shape", shape)
        if len(shape) not in (1, 2) or any(d < 1 for d in shape):
            raise ImageError(f"symbol {self.name!r}: shape {shape} must be 1-D or 2-D with positive sizes")
        _check_offset(f"symbol {self.name!r}: offset", self.offset)
        _check_offset(f"symbol {self.name!r}: row_stride", self.row_stride)
        if self.row_stride < self.row_bytes:
            raise ImageError(f"symbol {self.name!r}: row_stride {self.row_stride} is smaller than a "
                             f"row ({self.row_bytes} bytes)")
        if self.offset + self.nbytes > _U32_LIMIT:
            raise ImageError(f"symbol {self.name!r} ends at {self.offset + self.nbytes:#x}, beyond the "
                             f"{_U32_LIMIT:#x}-byte address space of an image")

    @property
    def rows(self):
        return self.shape[0] if len(self.shape) == 2 else 1

    @property
    def cols(self):
        return self.shape[-1]

    @property
    def itemsize(self):
        return np.dtype(DTYPES[self.dtype]).itemsize

    @property
    def row_bytes(self):
        return self.cols * self.itemsize

    @property
    def nbytes(self):
        """Bytes the tensor spans in HBM (last row without trailing padding)."""
        return (self.rows - 1) * self.row_stride + self.row_bytes

    def pack(self, array):
        """Lay ``array`` out as this symbol's bytes (padding between rows is zero).

        Raises
        ------
        ImageError
            If the shape differs or a value does not fit the dtype.
        """
        array = np.asarray(array)
        if array.shape != self.shape:
            raise ImageError(f"input {self.name!r} must have shape {self.shape}, got {array.shape}")
        info = np.iinfo(DTYPES[self.dtype])
        if array.dtype.kind not in "iub":
            raise ImageError(f"input {self.name!r} must be an integer array, got dtype {array.dtype}")
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ImageError(f"input {self.name!r} has values outside {self.dtype} "
                             f"[{info.min}, {info.max}]")
        rows = array.astype(DTYPES[self.dtype]).reshape(self.rows, self.cols)
        padded = np.zeros((self.rows, self.row_stride), dtype=np.uint8)
        padded[:, :self.row_bytes] = rows.view(np.uint8).reshape(self.rows, self.row_bytes)
        return padded.reshape(-1)[:self.nbytes].tobytes()

    def unpack(self, data):
        """Inverse of :meth:`pack`: turn the symbol's HBM bytes into an array."""
        buf = np.frombuffer(bytes(data).ljust(self.rows * self.row_stride, b"\0"), dtype=np.uint8)
        rows = buf.reshape(self.rows, self.row_stride)[:, :self.row_bytes].copy()
        return rows.view(DTYPES[self.dtype]).reshape(self.shape)


@dataclass(frozen=True)
class Segment:
    """Initialised data (weights, constants) at a context-relative HBM offset.

    Parameters
    ----------
    offset : int
        Context-relative HBM byte address (a non-negative multiple of 4).
    data : bytes-like
        Copied into immutable ``bytes``.

    Raises
    ------
    ImageError
        A malformed offset, or data that is not bytes-like.
    """

    offset: int
    data: bytes

    def __post_init__(self):
        _check_offset("data segment offset", self.offset)
        if not isinstance(self.data, (bytes, bytearray, memoryview)):
            raise ImageError(f"data segment at {self.offset:#x}: data must be bytes, got "
                             f"{type(self.data).__name__}")
        object.__setattr__(self, "data", bytes(self.data))
        if self.offset + len(self.data) > _U32_LIMIT:
            raise ImageError(f"data segment at {self.offset:#x} ends beyond the {_U32_LIMIT:#x}-byte "
                             f"address space of an image")


def _check_offset(what, value):
    """Raise :class:`ImageError` unless ``value`` is a non-negative 32-bit multiple of a word."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ImageError(f"{what} must be an integer, got {value!r}")
    if value < 0 or value >= _U32_LIMIT or value % WORD_BYTES:
        raise ImageError(f"{what} {value} must be a non-negative multiple of {WORD_BYTES} "
                         f"below {_U32_LIMIT:#x}")


@dataclass(frozen=True)
class ProgramImage:
    """A program built for one :class:`~tcloud.isa.config.ArchConfig`.

    Images are immutable and validated on construction: the code is stored as ``bytes`` and the
    segments and symbols as tuples, so what a vNPU loaded is what it runs and reads back.

    Parameters
    ----------
    fingerprint : bytes
        Target configuration fingerprint (8 bytes).
    config_name : str
        Target configuration name, for messages.
    code : bytes
        Encoded instructions, placed at ``entry``.
    entry : int
        Context-relative HBM address of the first instruction.
    hbm_bytes, sram_bytes : int
        Window sizes the program needs.
    segments : sequence of Segment
    symbols : sequence of Symbol
    metadata : str
        Free text the producer attaches (the model compiler stores JSON describing how to quantize
        the inputs and dequantize the outputs); the loader does not interpret it.

    Raises
    ------
    ImageError
        See :meth:`validate`.
    """

    fingerprint: bytes
    config_name: str
    code: bytes
    entry: int = 0
    hbm_bytes: int = 0
    sram_bytes: int = 0
    segments: tuple = ()
    symbols: tuple = ()
    metadata: str = ""

    def __post_init__(self):
        for name, kind in (("segments", Segment), ("symbols", Symbol)):
            items = tuple(getattr(self, name))
            for item in items:
                if not isinstance(item, kind):
                    raise ImageError(f"{name} must hold {kind.__name__} objects, got {item!r}")
            object.__setattr__(self, name, items)
        if not isinstance(self.code, (bytes, bytearray, memoryview)):
            raise ImageError(f"code must be bytes, got {type(self.code).__name__}")
        object.__setattr__(self, "code", bytes(self.code))
        if not isinstance(self.metadata, str):
            raise ImageError(f"metadata must be text, got {type(self.metadata).__name__}")
        self.validate()

    @classmethod
    def for_config(cls, config, code, **kwargs):
        """Build an image targeting ``config`` (an ArchConfig or preset name)."""
        from .config import get_config
        config = get_config(config)
        return cls(fingerprint=config.fingerprint(), config_name=config.name, code=code, **kwargs)

    def validate(self):
        """Check that code, segments and symbols fit the footprint and do not overlap.

        Raises
        ------
        ImageError
            Naming the offending piece.
        """
        if len(self.fingerprint) != 8:
            raise ImageError("fingerprint must be 8 bytes")
        if len(self.code) % INSTRUCTION_BYTES or not self.code:
            raise ImageError(f"code must be a non-empty multiple of {INSTRUCTION_BYTES} bytes, "
                             f"got {len(self.code)}")
        for name, value in (("entry", self.entry), ("hbm_bytes", self.hbm_bytes),
                            ("sram_bytes", self.sram_bytes)):
            _check_offset(name, value)
        names = [s.name for s in self.symbols]
        if len(set(names)) != len(names):
            raise ImageError(f"duplicate symbol names in {names}")
        regions = [("code", self.entry, len(self.code))]
        regions += [(f"segment@{s.offset:#x}", s.offset, len(s.data)) for s in self.segments]
        regions += [(f"symbol {s.name!r}", s.offset, s.nbytes) for s in self.symbols]
        for what, start, size in regions:
            if start < 0 or start + size > self.hbm_bytes:
                raise ImageError(f"{what} [{start:#x}, {start + size:#x}) lies outside the image's "
                                 f"HBM footprint of {self.hbm_bytes:#x} bytes")
        spans = sorted((start, start + size, what) for what, start, size in regions if size)
        for (s0, e0, w0), (s1, _, w1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise ImageError(f"{w0} overlaps {w1}")

    def symbol(self, name):
        for s in self.symbols:
            if s.name == name:
                return s
        raise ImageError(f"image has no symbol {name!r}; symbols are {[s.name for s in self.symbols]}")

    @property
    def inputs(self):
        return [s for s in self.symbols if s.kind == "input"]

    @property
    def outputs(self):
        return [s for s in self.symbols if s.kind == "output"]

    def to_bytes(self):
        """Serialise to the binary format described in this module's docstring."""
        body = bytearray(self.code)
        for seg in self.segments:
            body += struct.pack("<II", seg.offset, len(seg.data)) + seg.data
        for sym in self.symbols:
            name = sym.name.encode()
            body += struct.pack("<H", len(name)) + name
            body += struct.pack("<BBB", _KIND_CODES[sym.kind], _DTYPE_CODES[sym.dtype], len(sym.shape))
            body += struct.pack(f"<{len(sym.shape)}I", *sym.shape)
            body += struct.pack("<II", sym.offset, sym.row_stride)
        metadata = self.metadata.encode()
        body += struct.pack("<I", len(metadata)) + metadata
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, zlib.crc32(body), self.fingerprint,
                              self.config_name.encode()[:16], self.hbm_bytes, self.sram_bytes,
                              self.entry, len(self.code), len(self.segments), len(self.symbols),
                              len(body))
        return header + bytes(body)

    @classmethod
    def from_bytes(cls, data, config=None):
        """Load an image, optionally checking it targets ``config``.

        Raises
        ------
        BadMagicError, UnsupportedVersionError, TruncatedImageError, CorruptImageError,
        ConfigMismatchError
            Each names what was expected and what was found.
        """
        data = bytes(data)
        if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
            raise BadMagicError(f"not a TCloud program image (magic {data[:len(MAGIC)]!r}, "
                                f"expected {MAGIC!r})")
        if len(data) < HEADER_BYTES:
            raise TruncatedImageError(f"image header needs {HEADER_BYTES} bytes, file has {len(data)}")
        (_, version, _, crc, fingerprint, name, hbm_bytes, sram_bytes, entry, code_bytes,
         n_segments, n_symbols, payload) = _HEADER.unpack_from(data)
        if version not in READABLE_VERSIONS:
            raise UnsupportedVersionError(f"image format version {version}; this loader reads "
                                          f"versions {', '.join(map(str, READABLE_VERSIONS))}")
        if len(data) < HEADER_BYTES + payload:
            raise TruncatedImageError(f"image is truncated: header announces {HEADER_BYTES + payload} "
                                      f"bytes, file has {len(data)}")
        if len(data) > HEADER_BYTES + payload:
            raise CorruptImageError(f"{len(data) - HEADER_BYTES - payload} unexpected bytes after "
                                    f"the image")
        if zlib.crc32(data[HEADER_BYTES:]) != crc:
            raise CorruptImageError("checksum mismatch: the image is corrupt")
        reader = _Reader(data, HEADER_BYTES)
        code = reader.take(code_bytes, "code")
        segments = []
        for _ in range(n_segments):
            offset, length = reader.unpack("<II", "segment header")
            segments.append(Segment(offset, reader.take(length, "segment data")))
        symbols = []
        for _ in range(n_symbols):
            (name_len,) = reader.unpack("<H", "symbol name length")
            sym_name = reader.take(name_len, "symbol name").decode("utf-8", "replace")
            kind, dtype, ndim = reader.unpack("<BBB", "symbol header")
            shape = reader.unpack(f"<{ndim}I", "symbol shape")
            offset, row_stride = reader.unpack("<II", "symbol layout")
            try:
                symbols.append(Symbol(sym_name, _decode_code(_KIND_CODES, kind, "kind"),
                                      _decode_code(_DTYPE_CODES, dtype, "dtype"), shape, offset,
                                      row_stride))
            except ImageError as exc:
                raise CorruptImageError(f"bad symbol: {exc}") from None
        metadata = ""
        if version >= 2:
            (metadata_len,) = reader.unpack("<I", "metadata length")
            try:
                metadata = reader.take(metadata_len, "metadata").decode("utf-8")
            except UnicodeDecodeError:
                raise CorruptImageError("the image's metadata is not UTF-8 text") from None
        if reader.pos != len(data):
            raise CorruptImageError(f"{len(data) - reader.pos} unexpected bytes after the last "
                                    f"{'symbol' if version < 2 else 'metadata'}")
        config_name = name.rstrip(b"\0").decode("utf-8", "replace")
        if config is not None and fingerprint != config.fingerprint():
            raise ConfigMismatchError(f"image was built for config {config_name!r} "
                                      f"(fingerprint {fingerprint.hex()}), not for {config.name!r} "
                                      f"(fingerprint {config.fingerprint().hex()})")
        try:
            return cls(fingerprint=fingerprint, config_name=config_name, code=code, entry=entry,
                       hbm_bytes=hbm_bytes, sram_bytes=sram_bytes, segments=segments,
                       symbols=symbols, metadata=metadata)
        except ImageError as exc:
            raise CorruptImageError(str(exc)) from None

    def check_config(self, config):
        """Raise :class:`ConfigMismatchError` unless the image targets ``config``."""
        if self.fingerprint != config.fingerprint():
            raise ConfigMismatchError(f"image was built for config {self.config_name!r}, not for "
                                      f"{config.name!r} (fingerprints {self.fingerprint.hex()} vs "
                                      f"{config.fingerprint().hex()})")


def _decode_code(table, code, what):
    for key, value in table.items():
        if value == code:
            return key
    raise CorruptImageError(f"unknown symbol {what} code {code}")


class _Reader:
    def __init__(self, data, pos):
        self.data = data
        self.pos = pos

    def take(self, n, what):
        if self.pos + n > len(self.data):
            raise CorruptImageError(f"image layout is inconsistent: its {what} needs {n} bytes at "
                                    f"offset {self.pos}, the payload ends at {len(self.data)}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt, what):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size, what))
