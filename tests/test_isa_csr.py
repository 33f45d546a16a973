"""The host's contract with the pNPU: the CSR map, its counters schema and its documentation."""

import importlib

import pytest

from tcloud.isa import csr


def test_the_csr_map_is_part_of_the_isa_and_nowhere_else():
    assert importlib.import_module("tcloud.isa.csr") is csr
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("tcloud.rtl.csr")
