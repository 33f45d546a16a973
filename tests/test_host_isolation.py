"""The host side is as strict as the hardware: a tenant cannot reach another tenant's HBM through the
loader, the input writes or the output reads (attacks reproduced from the isolation review)."""

import dataclasses

import numpy as np
import pytest

from tcloud.firmware import gemm
from tcloud.isa import EngineClass, Instr, ProgramImage, Segment, Symbol, encode_stream, get_config
from tcloud.isa.errors import ImageError
from tcloud.runtime import FunctionalDevice, HbmWindow, HostAccessError, Placement, load_image, plan_load
from tcloud.runtime.hypervisor import MIB, Hypervisor, VNPUSpec

from conftest import utop

HALT_CODE = encode_stream(utop(EngineClass.VE, [Instr("ve.fill", dst=0, n=1)]) + [Instr("halt")])


def gemm_inputs(rng, m=16, k=16, n=16):
    return {"A": rng.integers(-128, 128, (m, k), dtype=np.int8), "B": rng.integers(-128, 128, (k, n), dtype=np.int8)}


@pytest.mark.parametrize("build", [
    lambda: Symbol("L", "output", "i8", (16, 16), -(1 << 20), 16),
    lambda: Symbol("L", "output", "i8", (4,), -4, 4),
    lambda: Symbol("L", "output", "i8", (4,), 2, 4),
    lambda: Symbol("L", "output", "i8", (4,), 1 << 32, 4),
    lambda: Symbol("L", "output", "i8", (2, 4), (1 << 32) - 8, 8),
    lambda: Symbol("L", "output", "i8", (4,), 4.0, 4),
    lambda: Symbol("L", "output", "i8", (4,), True, 4),
    lambda: Segment(-(1 << 20), b"\xee" * 16),
    lambda: Segment(-4, b"\xee"),
    lambda: Segment((1 << 32) - 4, b"\xee" * 8),
    lambda: Segment(0, "not bytes"),
])
def test_symbols_and_segments_are_validated_on_construction(build):
    with pytest.raises(ImageError, match="must be|beyond"):
        build()


def test_images_are_immutable_and_copy_their_data():
    data = bytearray(b"\x01" * 16)
    segment = Segment(0x100, data)
    data[0] = 0xEE
    assert segment.data == b"\x01" * 16 and isinstance(segment.data, bytes)
    image = ProgramImage.for_config("small", HALT_CODE, entry=0, hbm_bytes=0x200, segments=[segment],
                                    symbols=[Symbol("Z", "output", "i8", (4,), 0x180, 4)])
    assert isinstance(image.symbols, tuple) and isinstance(image.segments, tuple)
    with pytest.raises(AttributeError):
        image.symbols.append(Symbol("L", "output", "i8", (4,), 0x1C0, 4))
    with pytest.raises(dataclasses.FrozenInstanceError):
        image.hbm_bytes = 1 << 30
    with pytest.raises(ImageError, match="must hold Symbol objects"):
        ProgramImage.for_config("small", HALT_CODE, entry=0, hbm_bytes=0x200, symbols=["Z"])


def test_the_window_check_names_what_was_refused():
    window = HbmWindow(base=0x100000, size=0x1000)
    assert window.address(0xFF0, 16, "x") == 0x100FF0
    for offset, size in ((-4, 4), (0xFFC, 8), (0x1000, 1), (0, -1)):
        with pytest.raises(HostAccessError, match=r"output 'L' \[.*\) lies outside the context's 0x1000-byte"):
            window.address(offset, size, "output 'L'")


def forged(valid, **changes):
    """A copy of ``valid`` with fields changed past its constructor's checks (a hostile caller)."""
    copy = dataclasses.replace(valid)
    for name, value in changes.items():
        object.__setattr__(copy, name, value)
    return copy


def test_plan_load_refuses_forged_pieces_outside_the_window():
    image, config = gemm("small", 8, 8, 8), get_config("small")
    inputs = gemm_inputs(np.random.default_rng(0), 8, 8, 8)
    bad_symbol = forged(image.inputs[0], offset=-(1 << 20))
    with pytest.raises(HostAccessError, match="input 'A'"):
        plan_load(config, forged(image, symbols=(bad_symbol, *image.symbols[1:])), inputs)
    bad_segment = forged(Segment(0, b"\xee" * 16), offset=-(1 << 20))
    with pytest.raises(HostAccessError, match="data segment"):
        plan_load(config, forged(image, segments=(bad_segment,)), inputs)


@pytest.mark.parametrize("backend", ["functional", "verilator"])
def test_an_attacker_cannot_read_or_overwrite_a_victim_through_the_hypervisor(backend):
    rng = np.random.default_rng(5)
    with Hypervisor("small", backend, "harvest") as hv:
        victim = hv.create_vnpu(VNPUSpec(mes=2, ves=1, hbm_mib=1))
        attacker = hv.create_vnpu(VNPUSpec(mes=2, ves=1, hbm_mib=1))
        assert attacker._grant.hbm_base == victim._grant.hbm_base + MIB
        image = gemm("small", 16, 16, 16)
        victim.load(image)
        x = gemm_inputs(rng)
        expected = x["A"].astype(np.int32) @ x["B"].astype(np.int32)
        assert np.array_equal(victim.run(x)["C"], expected)
        victim_a = image.symbol("A").offset

        honest = ProgramImage.for_config("small", HALT_CODE, entry=0, hbm_bytes=0x200, sram_bytes=64,
                                         symbols=[Symbol("Z", "output", "i8", (16, 16), 0x100, 16)])
        peek = forged(honest.symbol("Z"), offset=-MIB + victim_a)
        with pytest.raises(HostAccessError, match="output 'Z'"):
            attacker.load(forged(honest, symbols=(peek,)))
            attacker.run({})
        overwrite = forged(Segment(0x100, b"\xee" * 16), offset=-MIB + image.entry)
        with pytest.raises(HostAccessError, match="data segment"):
            attacker.load(forged(honest, segments=(overwrite,)))

        attacker.load(honest)
        object.__setattr__(attacker.image, "symbols", (peek,))  # mutating what was loaded, past the guard
        with pytest.raises(HostAccessError, match="output 'Z'"):
            attacker.run({})
        assert np.array_equal(victim.run(x)["C"], expected)  # code intact, driver alive


def test_load_image_writes_only_inside_the_window():
    device = FunctionalDevice("small")
    sentinel = b"\x5a" * 64
    device.write_hbm(0x200000 - 64, sentinel)
    image = gemm("small", 8, 8, 8)
    rng = np.random.default_rng(2)
    load_image(device, image, gemm_inputs(rng, 8, 8, 8), Placement(context=1, hbm_base=0x200000))
    assert device.read_hbm(0x200000 - 64, 64) == sentinel
    assert device.run()
