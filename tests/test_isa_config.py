"""ArchConfig presets, derived values and validation."""

import pytest

from tcloud.isa import PRESETS, ArchConfig, ConfigError, get_config


def test_presets_match_the_documented_starting_points():
    tiny, small, tpu = PRESETS["tiny"], PRESETS["small"], PRESETS["tpu_like"]
    assert (tiny.me_count, tiny.me_rows, tiny.me_cols, tiny.ve_lanes, tiny.sram_kib, tiny.contexts) == (1, 4, 4, 4, 16, 2)
    assert (small.me_count, small.me_rows, small.ve_count, small.ve_lanes, small.sram_kib, small.contexts) == (4, 8, 2, 8, 256, 4)
    assert (tpu.me_rows, tpu.me_cols, tpu.ve_lanes, tpu.sram_kib, tpu.contexts) == (128, 128, 1024, 32768, 8)
    assert tpu.hbm_gbps == 1200.0 and tpu.clock_mhz == 1050.0
    assert tpu.peak_tops == pytest.approx(2 * 4 * 128 * 128 * 1.05e9 / 1e12)
    assert small.sram_bytes == 256 * 1024 and small.sram_bank_bytes == 16 * 1024
    assert (small.hbm_latency, small.hbm_bytes_per_cycle, small.hbm_latency_ns) == (120, 32.0, 120.0)
    assert tpu.hbm_latency_ns == pytest.approx(120.0)


def test_hbm_timing_and_queue_depths_are_not_part_of_the_fingerprint():
    small = PRESETS["small"]
    timing = small.replace(hbm_latency=400, hbm_gbps=8.0, dma_outstanding=16, fetch_depth=2)
    assert timing.fingerprint() == small.fingerprint()
    assert small.replace(sram_banks=8).fingerprint() != small.fingerprint()


@pytest.mark.parametrize("changes, message", [
    ({"sram_banks": 1}, r"sram_banks=1 is out of range \[2, 256\]"),
    ({"sram_line_words": 3}, r"sram_line_words=3 must be a power of two"),
    ({"sram_kib": 1, "sram_banks": 64, "sram_line_words": 8}, r"sram_kib=1 must hold a whole number of rows"),
    ({"hbm_latency": 0}, r"hbm_latency=0 is out of range"),
    ({"fetch_depth": 0}, r"fetch_depth=0 is out of range"),
])
def test_memory_system_fields_are_checked(changes, message):
    with pytest.raises(ConfigError, match=message):
        PRESETS["tiny"].replace(**changes)


def test_fingerprint_ignores_name_and_timing_but_not_structure():
    small = PRESETS["small"]
    assert small.replace(name="other", clock_mhz=500.0).fingerprint() == small.fingerprint()
    assert small.replace(me_count=2).fingerprint() != small.fingerprint()
    assert len({p.fingerprint() for p in PRESETS.values()}) == len(PRESETS)


@pytest.mark.parametrize("changes, message", [
    ({"me_rows": 0}, r"me_rows=0 is out of range"),
    ({"me_rows": 6}, r"me_rows=6 must be a multiple of 4"),
    ({"me_cols": 512}, r"me_cols=512 is out of range \[1, 255\]"),
    ({"me_count": 17}, r"me_count=17 is out of range \[1, 16\]"),
    ({"contexts": 17}, r"contexts=17 is out of range \[1, 16\]"),
    ({"sram_banks": 3}, r"sram_banks=3 must be a power of two"),
    ({"me_count": 2.0}, r"me_count must be an int"),
    ({"clock_mhz": 0}, r"clock_mhz must be a positive number"),
])
def test_bad_values_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        PRESETS["tiny"].replace(**changes)


def test_get_config():
    assert get_config("small") is PRESETS["small"]
    cfg = ArchConfig()
    assert get_config(cfg) is cfg
    with pytest.raises(ConfigError, match="unknown config 'huge'; presets are tiny, small, tpu_like, tpu_v4_like"):
        get_config("huge")
    with pytest.raises(ConfigError, match="no field"):
        cfg.replace(colour="red")
