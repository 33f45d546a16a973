"""The host's contract with the pNPU: the CSR map and its counters schema."""

import importlib

import pytest

from tcloud.isa import csr, get_config
from tcloud.isa.golden import Counters
from tcloud.rtl.scheduler import ContextTable, UtopScheduler


def test_the_csr_map_is_part_of_the_isa_and_nowhere_else():
    assert importlib.import_module("tcloud.isa.csr") is csr
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("tcloud.rtl.csr")


def test_the_counters_schema_declares_the_registers_the_rtl_counters_and_the_report():
    registers = [name for counter in csr.COUNTERS for name in counter.registers]
    assert set(registers) <= set(csr.CONTEXT)
    cfg = get_config("tiny")
    scheduler = UtopScheduler(cfg, ContextTable(cfg), [], None)
    scheduler._MustUse__used = True  # only its counters are inspected
    rtl = scheduler.counters
    assert {name: len(values[0]) for name, values in rtl.items()} == {c.name: c.bits for c in csr.COUNTERS}
    words = {name: i + 1 for i, name in enumerate(registers)}
    report = csr.counter_report(words)
    assert report["counters"].keys() == Counters().as_dict().keys()
    assert report["counters"]["utops"].keys() == Counters().utops.keys()
    assert report["counters"]["macs"] == words["MACS_HI"] << 32 | words["MACS_LO"]
    assert report["timing"]["engine_cycles"]["me_harvested"] == words["ME_HARVESTED"]


def test_every_command_error_is_documented():
    assert list(csr.COMMAND_ERROR_DOCS) == list(csr.CommandError)
    text = csr.csr_markdown()
    for error, doc in csr.COMMAND_ERROR_DOCS.items():
        assert f"| {error.name} | {int(error)} | {doc} |" in text


def test_engines_are_named_by_class_and_index_within_the_class():
    small = get_config("small")
    assert csr.engine_names(small) == ["dma0", "dma1", "me0", "me1", "me2", "me3", "ve0", "ve1"]
    assert "`dma0`, `me0`, `ve0`" in csr.csr_markdown()


def test_rtl_statistics_use_the_engine_names():
    from tcloud.runtime.backends.amaranth import AmaranthDevice

    device = AmaranthDevice("tiny")
    try:
        assert list(device.stats()["engine_busy_cycles"]) == csr.engine_names(device.config)
    finally:
        device.close()
