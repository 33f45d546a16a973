"""The scripting entry point and the device-independent image runner."""

import numpy as np
import pytest

from tcloud.firmware import Requant, gemm
from tcloud.isa import ConfigError, ConfigMismatchError, FaultCode, ImageError, assemble
from tcloud.isa.errors import AsmWarning
from tcloud.runtime import (Device, DeviceError, DeviceFault, FunctionalDevice, InputError, RunLimitError,
                            matmul, run_image)

rng = np.random.default_rng(1)
A = rng.integers(-128, 128, (10, 20), dtype=np.int8)
B = rng.integers(-128, 128, (20, 7), dtype=np.int8)


def test_matmul_int32_and_stats():
    result, stats = matmul(A, B, config="tiny", return_stats=True)
    assert result.dtype == np.int32
    assert np.array_equal(result, A.astype(np.int32) @ B.astype(np.int32))
    assert stats["macs"] == 10 * 20 * 7
    assert stats["utops_total"] == sum(stats["utops"].values()) > 0
    assert stats["instructions"] > stats["utops_total"]
    assert stats["backend"] == "functional" and stats["config"] == "tiny"


def test_matmul_bias_and_requant_tuple():
    bias = np.arange(7, dtype=np.int32) * 100
    out = matmul(A, B, bias=bias, requant=(1 << 30, 38, 5))
    acc = A.astype(np.int64) @ B.astype(np.int64) + bias
    assert out.dtype == np.int8
    assert out.tolist() == np.clip(np.round(acc / 256.0) + 5, -128, 127).astype(int).tolist()
    assert np.array_equal(out, matmul(A, B, bias=bias, requant=Requant(1 << 30, 38, 5)))


def test_matmul_accepts_python_lists_in_range():
    assert matmul([[1, 2]], [[3], [4]]).tolist() == [[11]]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(a=np.zeros((2, 3)), b=B), InputError, "a must hold integers"),
    (dict(a=np.full((2, 20), 200), b=B), InputError, r"a has values outside int8 \[-128, 127\]"),
    (dict(a=A, b=B[:5]), InputError, r"inner dimensions differ: a is \(10, 20\), b is \(5, 7\)"),
    (dict(a=A[0], b=B), InputError, "a must be 2-D"),
    (dict(a=A, b=B, bias=np.zeros(6, np.int32)), InputError, r"bias must have shape \(7,\)"),
    (dict(a=A, b=B, requant=(1, 2, 3, 4)), InputError, "requant must be a Requant"),
    (dict(a=A, b=B, config="huge"), ConfigError, "unknown config 'huge'"),
    (dict(a=A, b=B, backend="gpu"), DeviceError, "unknown backend 'gpu'; available: functional"),
    (dict(a=np.zeros((0, 20), np.int8), b=B), InputError, "empty operands"),
])
def test_matmul_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        matmul(**kwargs)


def test_functional_device_implements_the_protocol():
    assert isinstance(FunctionalDevice("tiny"), Device)


def test_run_image_raises_device_fault_with_code_and_pc():
    with pytest.warns(AsmWarning, match="SRAM_BOUNDS"):  # the assembler sees it coming; the hardware stops it
        image = assemble("""
            .config tiny
            .footprint hbm=0x100 sram=0x40
            utop cls=ve
              ve.fill dst=0x40 n=1
            halt
        """)
    with pytest.raises(DeviceFault, match=r"context 0 faulted with SRAM_BOUNDS at pc 0x10") as info:
        run_image(FunctionalDevice("tiny"), image, {})
    assert info.value.fault == FaultCode.SRAM_BOUNDS


def test_run_image_checks_inputs_and_config():
    image = gemm("tiny", 2, 2, 2)
    with pytest.raises(ImageError, match=r"missing \['B'\], unexpected \['X'\]"):
        run_image(FunctionalDevice("tiny"), image, {"A": np.zeros((2, 2), np.int8), "X": 1})
    with pytest.raises(ConfigMismatchError, match="built for config 'tiny'"):
        run_image(FunctionalDevice("small"), image.to_bytes(), {})
    with pytest.raises(RunLimitError, match="did not finish within 1"):
        run_image(FunctionalDevice("tiny"), image, {"A": np.zeros((2, 2), np.int8), "B": np.zeros((2, 2), np.int8)},
                  max_cycles=1)


def test_functional_device_rejects_out_of_range_hbm():
    with pytest.raises(DeviceError, match="outside the"):
        FunctionalDevice("tiny").write_hbm(16 * 1024 * 1024 - 2, b"abcd")
