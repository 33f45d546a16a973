"""Program image container: round trip and every way a load can fail."""

import dataclasses
import struct
import zlib

import numpy as np
import pytest

from tcloud.isa import (BadMagicError, ConfigMismatchError, CorruptImageError, ImageError,
                        ProgramImage, Segment, Symbol, TruncatedImageError, UnsupportedVersionError,
                        assemble_code, get_config)
from tcloud.isa.image import HEADER_BYTES


@pytest.fixture
def image():
    return ProgramImage.for_config(
        get_config("tiny"), assemble_code("nop\nhalt"), entry=0x200, hbm_bytes=0x400, sram_bytes=0x100,
        segments=[Segment(0x100, b"\x01\x02\x03\x04")],
        symbols=[Symbol("A", "input", "i8", (3, 5), 0x0, 8), Symbol("C", "output", "i32", (2, 2), 0x300, 8)])


def test_round_trip(image):
    blob = image.to_bytes()
    loaded = ProgramImage.from_bytes(blob, get_config("tiny"))
    assert loaded == image
    assert loaded.to_bytes() == blob


def test_every_truncation_is_detected(image):
    blob = image.to_bytes()
    for cut in range(len(blob)):
        with pytest.raises((TruncatedImageError, BadMagicError)):
            ProgramImage.from_bytes(blob[:cut])
    with pytest.raises(TruncatedImageError, match="header announces"):
        ProgramImage.from_bytes(blob[:-1])


def test_bad_magic_version_config_and_corruption(image):
    blob = bytearray(image.to_bytes())
    with pytest.raises(BadMagicError, match="not a TCloud program image"):
        ProgramImage.from_bytes(b"\x7fELF" + bytes(blob[4:]))
    versioned = bytearray(blob)
    struct.pack_into("<H", versioned, 8, 99)
    with pytest.raises(UnsupportedVersionError, match="version 99"):
        ProgramImage.from_bytes(bytes(versioned))
    with pytest.raises(ConfigMismatchError, match="built for config 'tiny'.*not for 'small'"):
        ProgramImage.from_bytes(bytes(blob), get_config("small"))
    flipped = bytearray(blob)
    flipped[HEADER_BYTES + 3] ^= 0x40
    with pytest.raises(CorruptImageError, match="checksum"):
        ProgramImage.from_bytes(bytes(flipped))
    with pytest.raises(CorruptImageError, match="unexpected bytes"):
        ProgramImage.from_bytes(bytes(blob) + b"\0")


def test_validation_rejects_overlaps_and_out_of_footprint(image):
    with pytest.raises(ImageError, match="overlaps"):
        ProgramImage.for_config(get_config("tiny"), image.code, entry=0x0, hbm_bytes=0x400,
                                symbols=[Symbol("A", "input", "i8", (4,), 0x0, 4)])
    with pytest.raises(ImageError, match="outside the image's HBM footprint"):
        ProgramImage.for_config(get_config("tiny"), image.code, entry=0x0, hbm_bytes=0x10)
    with pytest.raises(ImageError, match="duplicate symbol"):
        ProgramImage.for_config(get_config("tiny"), image.code, entry=0x100, hbm_bytes=0x400,
                                symbols=[Symbol("A", "input", "i8", (4,), 0x0, 4),
                                         Symbol("A", "output", "i8", (4,), 0x10, 4)])
    with pytest.raises(ImageError, match="row_stride 4 is smaller than a row"):
        Symbol("A", "input", "i32", (2, 2), 0, 4)


def test_symbol_pack_unpack_pads_rows():
    sym = Symbol("A", "input", "i8", (2, 3), 0, 8)
    data = sym.pack(np.array([[1, -2, 3], [4, 5, -128]]))
    assert data == bytes([1, 254, 3, 0, 0, 0, 0, 0, 4, 5, 128])
    assert sym.unpack(data).tolist() == [[1, -2, 3], [4, 5, -128]]
    with pytest.raises(ImageError, match=r"values outside i8 \[-128, 127\]"):
        sym.pack(np.array([[1, 2, 3], [4, 5, 128]]))
    with pytest.raises(ImageError, match=r"must have shape \(2, 3\)"):
        sym.pack(np.zeros((3, 2), np.int8))
    with pytest.raises(ImageError, match="integer array"):
        sym.pack(np.zeros((2, 3), np.float32))


def test_metadata_round_trips_and_version_1_images_still_load(image):
    tagged = dataclasses.replace(image, metadata='{"model": "digits"}')
    assert ProgramImage.from_bytes(tagged.to_bytes()).metadata == '{"model": "digits"}'
    blob = bytearray(image.to_bytes()[:-4])  # a version-1 image: no metadata length after the symbols
    struct.pack_into("<H", blob, 8, 1)
    struct.pack_into("<I", blob, 12, zlib.crc32(blob[HEADER_BYTES:]))
    struct.pack_into("<I", blob, HEADER_BYTES - 4, len(blob) - HEADER_BYTES)
    old = ProgramImage.from_bytes(bytes(blob))
    assert old.metadata == "" and old.code == image.code and old.symbols == image.symbols
    with pytest.raises(ImageError, match="metadata must be text"):
        dataclasses.replace(image, metadata=b"{}")
