"""Mutation testing: does the test suite notice a planted single-point bug?

A catalogue of single-point mutations (comparison off-by-ones, dropped ``+ 1``, swapped operands
or fields, a dropped term of an ``&``/``|`` chain, a wrong width or constant) of the RTL
(``rtl/``), the golden model (``isa/golden.py``) and the C++ Verilator harness
(``runtime/backends/verilator_harness.cpp``). Each entry names the exact source snippet it replaces (it must
occur exactly once in the file at ``HEAD``: the harness fails loudly otherwise, so the catalogue
cannot rot silently), what bug it models, and the fast tests that should notice it: golden-model
tests, Amaranth-simulator tests on ``tiny``, Verilator tests only where nothing else covers the code.

The repository itself is never touched: the harness checks ``HEAD`` out into a temporary git
worktree, imports ``tcloud`` from that copy (a ``tcloud/<folder>`` symlink tree on
``PYTHONPATH``, which wins over the editable install's finder), builds Verilator models into the
copy's own cache (``TCLOUD_CACHE``), applies one mutation at a time, runs its tests with
``pytest -x`` and restores the file byte for byte before the next. A mutation is *killed* when a
selected test fails or the run times out, *survived* when all pass (a survivor is a finding: a
test is missing). Tests run with ``CI=true`` (the suite's smaller, derandomised CI profile).

    python -m tcloud.verif.mutation                      # the whole catalogue -> benchmarks/results/mutation.json
    python -m tcloud.verif.mutation --list
    python -m tcloud.verif.mutation --only golden_bounds_off_by_one --timeout 300
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("isa", "rtl", "firmware", "runtime", "cluster", "verif")
"""Folders mapped to ``tcloud.<folder>`` (``[tool.setuptools.package-dir]`` in pyproject.toml)."""
DEFAULT_OUT = "benchmarks/results/mutation.json"
DEFAULT_TIMEOUT = 420


@dataclass(frozen=True)
class Mutation:
    """One planted bug: replace ``old`` (occurring exactly once in ``file``) by ``new``."""

    name: str
    file: str
    old: str
    new: str
    description: str
    tests: tuple                 # pytest node ids or paths
    k: str | None = None         # optional pytest -k expression applied to ``tests``

    def pytest_args(self):
        return [*self.tests, *(["-k", self.k] if self.k else [])]


# --- test selections --------------------------------------------------------------------------

GOLDEN = ("tests/test_golden_ops.py", "tests/test_golden_isolation.py", "tests/test_runtime.py",
          "tests/test_verif_races.py", "tests/test_guarantee_edges.py", "tests/test_isa_image.py",
          "tests/test_firmware_gemm.py",
          "tests/test_multitenant.py::test_golden_static_policy_faults_a_utop_without_an_owned_engine")
GOLDEN_K = "not amaranth and not verilator"
BODY_FAULTS = ("tests/test_body_faults.py",)
VALU = ("tests/test_rtl_vector_alu.py",)
SYSTOLIC = ("tests/test_rtl_systolic.py",)
SRAM = ("tests/test_rtl_scratchpad.py",)
DECODE = ("tests/test_rtl_decode.py",)


def _pnpu(*names):
    return tuple(f"tests/test_rtl_pnpu.py::{n}" for n in names)


def _edges(*names):
    return tuple(f"tests/test_guarantee_edges.py::{n}" for n in names)


def _fault(*cases):
    return _pnpu(*(f"test_fault_code_and_pc_match_the_golden_model[amaranth-{c}]" for c in cases))


GEMM_AMARANTH = _pnpu("test_gemm_images_are_bit_exact[amaranth]")
RANDOM_AMARANTH = _pnpu("test_random_programs_with_hbm_backpressure_are_bit_exact[amaranth]")
GEMM_VERILATOR = _pnpu("test_gemm_images_are_bit_exact[verilator]")


def _m(name, file, old, new, description, tests, k=None):
    return Mutation(name, file, old, new, description, tuple(tests), k)


G = "isa/golden.py"

CATALOGUE = [
    # --- golden model --------------------------------------------------------------------------
    _m("golden_bounds_off_by_one", G, "if end > window.size:", "if end >= window.size:",
       "an access ending exactly at the window end faults", GOLDEN, GOLDEN_K),
    _m("golden_extent_drops_minus_one", G, "end = addr + (rows - 1) * stride + row_bytes",
       "end = addr + rows * stride + row_bytes", "2-D extent counts one stride too many", GOLDEN, GOLDEN_K),
    _m("golden_fetch_bound", G, "if pc + INSTRUCTION_BYTES > ctx.hbm.size:",
       "if pc + INSTRUCTION_BYTES >= ctx.hbm.size:", "the last instruction of the HBM window cannot be fetched",
       GOLDEN, GOLDEN_K),
    _m("golden_window_host_check", G, "if base + size > physical:", "if base + size >= physical:",
       "ctx.sram/ctx.hbm refuse a window ending exactly at the end of physical memory",
       _pnpu("test_windows_may_end_exactly_at_the_end_of_memory[amaranth]")),
    _m("golden_token_wait_off_by_one", G, "if ctx.tokens[token] < count:", "if ctx.tokens[token] <= count:",
       "a uTOp needs one more signal than it waits for", GOLDEN, GOLDEN_K),
    _m("golden_repeated_waits_not_summed", G, "need[token] = need.get(token, 0) + count", "need[token] = count",
       "two wait slots on one token need only the last count", GOLDEN, GOLDEN_K),
    _m("golden_token_overflow_bound", G, "if ctx.tokens[token] >= TOKEN_MAX_COUNT:",
       "if ctx.tokens[token] > TOKEN_MAX_COUNT:", "a token may count one past TOKEN_MAX_COUNT", GOLDEN, GOLDEN_K),
    _m("golden_utop_pc_drops_plus_one", G, 'ctx.pc = pc + INSTRUCTION_BYTES * (instr["len"] + 1)',
       'ctx.pc = pc + INSTRUCTION_BYTES * instr["len"]', "the pc after a uTOp forgets its header",
       GOLDEN, GOLDEN_K),
    _m("golden_gather_drops_sign_check", G, "if i < 0 or table + (i + 1) * row_bytes > ctx.hbm.size:",
       "if table + (i + 1) * row_bytes > ctx.hbm.size:", "a negative gather index reads below the HBM window",
       ("tests/test_golden_ops.py",), "gather"),
    _m("golden_loadw_drops_n_check", G, 'if k > cfg.me_rows or n > cfg.me_cols:', 'if k > cfg.me_rows:',
       "me.loadw wider than the array is not ILLEGAL_FIELD", _fault("tile_too_wide")),
    _m("golden_requant_ties_away", G, "q = q + ((r > half) | ((r == half) & ((q & 1) == 1)))",
       "q = q + (r >= half)", "requant rounds ties up instead of to even", GOLDEN, GOLDEN_K),
    _m("golden_requant_drops_tie_term", G, "q = q + ((r > half) | ((r == half) & ((q & 1) == 1)))",
       "q = q + (r > half)", "requant rounds ties down (dropped term of the | chain)", GOLDEN, GOLDEN_K),
    _m("golden_int8_saturation_constant", G, "_I8 = (-128, 127)", "_I8 = (-127, 127)",
       "int8 results saturate at -127", GOLDEN, GOLDEN_K),
    _m("golden_max_min_swapped", G, '"ve.max": np.maximum, "ve.min": np.minimum',
       '"ve.max": np.minimum, "ve.min": np.maximum', "ve.max and ve.min swapped", GOLDEN, GOLDEN_K),
    _m("golden_macs_counter", G, "ctx.counters.macs += m * k * n", "ctx.counters.macs += m * n",
       "the MAC counter (billing) forgets the reduction depth", GOLDEN, GOLDEN_K),
    _m("golden_scrub_misses_last_byte", G, "self.sram[ctx.sram.base:ctx.sram.base + ctx.sram.size] = 0",
       "self.sram[ctx.sram.base:ctx.sram.base + ctx.sram.size - 1] = 0",
       "ctx.scrub leaves the last scratchpad byte of the window", GOLDEN, GOLDEN_K),
    _m("golden_no_engine_only_static", G, "if owned == 0 and self.policy in (Policy.STATIC, Policy.HARVEST):",
       "if owned == 0 and self.policy in (Policy.STATIC,):",
       "a context without engines of a class runs its uTOps under harvest", GOLDEN, GOLDEN_K),
    _m("golden_binary_src1_stride_swapped", G,
       '_read_elems(ctx, instr["src1"], rows, n, instr["src1_i8"], engine.src1_stride)',
       '_read_elems(ctx, instr["src1"], rows, n, instr["src1_i8"], engine.src2_stride)',
       "binary VE ops read src1 with src2's row stride", GOLDEN, GOLDEN_K),
    _m("golden_wrap_i32_mask", G, "return ((values + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)",
       "return ((values + (1 << 31)) & 0x7FFFFFFF) - (1 << 31)", "int32 wrap-around uses a 31-bit mask",
       GOLDEN, GOLDEN_K),
    _m("golden_redmax_is_min", G, 'x.sum(axis=1) if instr.mnemonic == "ve.redsum" else x.max(axis=1)',
       'x.sum(axis=1) if instr.mnemonic == "ve.redsum" else x.min(axis=1)', "ve.redmax reduces with min",
       GOLDEN, GOLDEN_K),
    # --- body faults without data (what timing-only perf runs check) ----------------------------
    _m("body_faults_bounds_off_by_one", "isa/body_faults.py", "if access.end > size:", "if access.end >= size:",
       "timing only faults an access ending exactly at the window end", BODY_FAULTS),
    _m("body_faults_store_order", "isa/body_faults.py", "yield from (hbm, sram) if hbm_first else (sram, hbm)",
       "yield from (hbm, sram)", "dma.store checks its HBM region before its scratchpad region", BODY_FAULTS),
    # --- RTL units (Amaranth simulator, component tests) ---------------------------------------
    _m("valu_max_operands_swapped", "rtl/vector_alu.py", "wide.eq(Mux(x > y, x, y))", "wide.eq(Mux(x > y, y, x))",
       "ve.max returns the smaller operand", VALU),
    _m("valu_sub_operands_swapped", "rtl/vector_alu.py", "wide.eq(x - y)", "wide.eq(y - x)",
       "ve.sub computes src2 - src1", VALU),
    _m("valu_requant_ties_drop_parity", "rtl/vector_alu.py", "(guard & (sticky | floor[0]))", "(guard & sticky)",
       "requant rounds ties toward -inf (dropped term of the | chain)", VALU),
    _m("valu_int8_high_constant", "rtl/vector_alu.py", "_INT8 = (-128, 127)", "_INT8 = (-128, 128)",
       "int8 saturation lets 128 through (wraps to -128)", VALU),
    _m("valu_requant_guard_bit", "rtl/vector_alu.py", "below.eq(shift - 1)", "below.eq(shift)",
       "requant takes the guard bit one place too high", VALU),
    _m("systolic_latency_plus_one", "rtl/systolic.py", "self.latency = rows + cols - 1",
       "self.latency = rows + cols", "out_valid one cycle late (wrong pipeline length)", SYSTOLIC),
    _m("systolic_drops_partial_sum", "rtl/systolic.py",
       "psum.eq(above[c] + (factors[0] * factors[1])[:ACC_BITS].as_signed())",
       "psum.eq((factors[0] * factors[1])[:ACC_BITS].as_signed())", "a PE forgets the partial sum from above",
       SYSTOLIC),
    _m("systolic_bank_free_delay", "rtl/systolic.py", "self.bank_free_delay = cols - 1",
       "self.bank_free_delay = cols - 2", "a weight bank is declared free one cycle too early", SYSTOLIC),
    _m("sram_bank_row_wrap", "rtl/scratchpad.py", '"row1": (line + 1)[bank_bits:]', '"row1": line[bank_bits:]',
       "an access crossing into the next line takes that line's row from the first line (wrong after bank "
       "sram_banks - 1)", SRAM),
    _m("sram_shared_read_any_row", "rtl/scratchpad.py", "(ri[\"lines\"][a] != rj[\"lines\"][b])",
       "Const(0, 1)",
       "reads of different rows of one bank share its read port", SRAM),
    _m("arbiter_wrap_off_by_one", "rtl/arbiter.py", "Mux(winner >= count, winner - count, winner)",
       "Mux(winner > count, winner - count, winner)", "round-robin grant does not wrap at count", SRAM),
    _m("decode_minimum_check", "rtl/decode.py", "< low", "<= low",
       "a field equal to its encoded minimum is flagged illegal", DECODE),
    # --- RTL engines and sequencer (whole pNPU, Amaranth simulator on tiny) --------------------
    _m("engine_sram_fits_strict", "rtl/engine.py", "return end <= self._sram_size", "return end < self._sram_size",
       "an access ending exactly at the scratchpad window end faults",
       _edges("test_an_access_ending_exactly_at_the_window_end_runs[amaranth-dma_load_writes_sram_end]",
              "test_an_access_ending_exactly_at_the_window_end_runs[amaranth-ve_fill_int8_writes_sram_end]")),
    _m("engine_hbm_fits_loose", "rtl/engine.py", "return end <= self._hbm_size", "return end <= self._hbm_size + 1",
       "an HBM access one word past the window is allowed",
       _edges("test_the_smallest_overrun_faults_and_writes_nothing[amaranth-dma_load_reads_hbm_end]",
              "test_the_smallest_overrun_faults_and_writes_nothing[amaranth-dma_store_writes_hbm_end]")),
    _m("engine_fetch_bound_plus_one", "rtl/engine.py", "with m.Elif(~self.hbm_fits(pc + INSTRUCTION_WORDS)):",
       "with m.Elif(~self.hbm_fits(pc + INSTRUCTION_WORDS + 1)):",
       "an engine cannot fetch a body instruction ending at the window end",
       _fault("runs_off_its_window", "body_ends_at_window_end") + GEMM_AMARANTH),
    _m("dma_bounds_check_order", "rtl/dma.py", "with m.If(is_load & ~hbm_ok):", "with m.If(~hbm_ok):",
       "a store out of both windows reports HBM_BOUNDS, not the SRAM_BOUNDS of the region it reads first",
       _fault("dma_read_outside_hbm", "dma_write_outside_hbm", "sram_overflow", "store_outside_both_windows")),
    _m("dma_gather_drops_sign_check", "rtl/dma.py", "index_ok = (index >= 0) & ", "index_ok = ",
       "a negative gather index reads below the HBM window",
       _fault("gather_negative_index", "gather_most_negative_index")),
    _m("dma_gather_row_end_off_by_one", "rtl/dma.py", "(index.as_unsigned()[:31] + 1) * gather.row_bytes",
       "index.as_unsigned()[:31] * gather.row_bytes", "a gather row starting inside the HBM window may end past it",
       _fault("gather_index_past_the_window")),
    _m("dma_gather_copy_pass_unchecked", "rtl/dma.py", "with m.If(index_ok):", "with m.If(1):",
       "the second pass of a gather trusts the index the first pass checked (a racing rewrite escapes)",
       _pnpu("test_a_racing_rewrite_of_the_indices_never_reads_outside_the_window[amaranth]")),
    _m("dma_last_done_drops_row_term", "rtl/dma.py", "last_done = (done_row + 1 == op.rows) & ",
       "last_done = ", "a multi-row DMA ends after its first row (dropped term of the & chain)", GEMM_AMARANTH),
    _m("ve_extra_row", "rtl/vector_engine.py", "with m.Elif(row + 1 < rows):", "with m.Elif(row < rows):",
       "an elementwise VE instruction processes one row too many",
       _edges("test_the_smallest_overrun_faults_and_writes_nothing[amaranth-ve_fill_int8_rows_write_sram_end]")
       + RANDOM_AMARANTH),
    _m("ve_int32_wmask_extra_lane", "rtl/vector_engine.py", "self.sram.wmask[lane].eq(Mux(lane < count, 0b1111, 0))",
       "self.sram.wmask[lane].eq(Mux(lane <= count, 0b1111, 0))",
       "an int32 VE write also writes the lane after the last element", RANDOM_AMARANTH),
    _m("ve_redmax_lane_compare", "rtl/vector_engine.py", "Mux(acc[lane] > total, acc[lane], total)",
       "Mux(acc[lane] < total, acc[lane], total)", "ve.redmax takes the minimum across lanes", RANDOM_AMARANTH),
    _m("me_hazard_overlap_operand", "isa/cost.py", "return (start0 < end1) & (start1 < end0)",
       "return (start0 < end1) & (start1 > end0)",
       "the ME misses reads of its own pending output (wrong operand in the overlap test)",
       ("tests/test_me_hazards.py",), "amaranth"),
    _m("me_loadw_drops_n_check", "rtl/matrix_engine.py", "with m.If((lw.k > rows) | (lw.n > cols)):",
       "with m.If(lw.k > rows):", "me.loadw wider than the array is not ILLEGAL_FIELD (dropped | term)",
       _fault("tile_too_large", "tile_too_wide")),
    _m("me_drain_too_short", "rtl/matrix_engine.py", "with m.If(drain <= array.latency + 1):",
       "with m.If(drain <= array.latency - 2):",
       "an aborted ME stops draining its systolic array too early (rows of the killed uTOp still in flight)",
       ("tests/test_abort.py::test_kill_aborts_a_long_utop_within_the_bound[amaranth-ME]",
        "tests/test_abort.py::test_watchdog_stops_a_long_utop_within_the_bound[amaranth-ME]",
        "tests/test_abort.py::test_the_next_utop_on_an_aborted_engine_sees_nothing_of_the_old_one[amaranth]")),
    _m("sched_token_wait_strict", "rtl/scheduler.py", "(Array(tokens[c])[token] >= need)",
       "(Array(tokens[c])[token] > need)", "a uTOp needs one more signal than it waits for",
       _edges("test_repeated_waits_need_and_consume_the_sum_of_their_counts[amaranth-slots_0_1-exact]")),
    _m("sched_repeated_waits_not_summed", "rtl/scheduler.py",
       "need = sum(Mux(other == token, other_count, 0) for other, other_count in slots)", "need = count",
       "two wait slots on one token need only their own count",
       _edges("test_repeated_waits_need_and_consume_the_sum_of_their_counts[amaranth-slots_0_1-one_short]")),
    _m("sched_fetch_bound", "rtl/scheduler.py", "with m.Elif(pc + INSTRUCTION_WORDS > table.hbm_size[c]):",
       "with m.Elif(pc + INSTRUCTION_WORDS >= table.hbm_size[c]):",
       "the sequencer cannot fetch the last instruction of the window", _fault("runs_off_its_window")),
    _m("sched_token_overflow_bound", "rtl/scheduler.py", "with m.If(total > TOKEN_MAX_COUNT):",
       "with m.If(total > TOKEN_MAX_COUNT + 1):", "a token may count one past TOKEN_MAX_COUNT",
       _fault("token_overflow")),
    _m("sched_watchdog_off_by_one", "rtl/scheduler.py", '(self.counters["run_cycles"][c] >= table.budget[c])',
       '(self.counters["run_cycles"][c] > table.budget[c])', "the watchdog fires one cycle after the budget",
       ("tests/test_abort.py::test_watchdog_stops_a_long_utop_within_the_bound[amaranth-VE]",)),
    _m("sched_earliest_fault_reversed", "rtl/scheduler.py", "((fault_now == 0) | (eng_pc[e] < fault_key))",
       "((fault_now == 0) | (eng_pc[e] > fault_key))",
       "of two faulting engines the later uTOp in program order is reported", RANDOM_AMARANTH
       + _fault("second_instruction_faults")),
    # --- declared uTOp cost and the harvest limit ---------------------------------------------
    _m("golden_cost_off_by_one", G, "if declared and used > declared:", "if declared and used >= declared:",
       "a uTOp using exactly its declared cost faults", ("tests/test_reclaim.py",), "golden_faults"),
    _m("cost_matmul_never_continues", "isa/cost.py", "field(\"m\") * (1 + (1 - continues) * (1 + field(\"acc\")))",
       "field(\"m\") * (2 + field(\"acc\"))",
       "a matmul continuing its output region is charged a preload and a write-back",
       ("tests/test_reclaim.py",), "units"),
    _m("engine_cost_off_by_one", "rtl/engine.py", "(used + units > declared)", "(used + units >= declared)",
       "an engine faults a uTOp using exactly its declared cost",
       ("tests/test_reclaim.py::test_rtl_enforces_the_declared_cost_like_the_golden_model",), "amaranth"),
    _m("engine_cost_ignores_undeclared", "rtl/engine.py", "((declared != 0) & (used + units > declared))",
       "(used + units > declared)", "an engine faults every uTOp that declares no cost", _fault("sram_overflow")),
    _m("sched_harvests_undeclared", "rtl/scheduler.py", "((cost != 0) & (cost <= self.harvest_cost))",
       "(cost <= self.harvest_cost)", "uTOps declaring no cost (any length) run on harvested engines",
       ("tests/test_reclaim.py::test_the_reviewed_harvester_no_longer_delays_the_owner",)),
    _m("sched_harvest_limit_strict", "rtl/scheduler.py", "((cost != 0) & (cost <= self.harvest_cost))",
       "((cost != 0) & (cost < self.harvest_cost))", "a uTOp declaring exactly HARVEST_COST is not harvested",
       ("tests/test_reclaim.py::test_the_owner_waits_at_most_the_bound_for_harvesters_at_the_limit",), "me_rows"),
    _m("sched_harvest_ignores_grace", "rtl/scheduler.py", "(~owner_wants[e] & harvestable[c] & idle_enough[e])",
       "(~owner_wants[e] & harvestable[c])", "an engine is harvested in any gap of its owner's chain",
       ("tests/test_reclaim.py::test_the_grace_period_keeps_an_owners_chain_on_its_engine",)),
    # --- C++ Verilator harness (only the Verilator tests run it) -------------------------------
    _m("harness_write_drops_last_word", "runtime/backends/verilator_harness.cpp",
       "std::memcpy(&hbm[head.addr * 4], head.data, 4ull * head.count);",
       "std::memcpy(&hbm[head.addr * 4], head.data, 4ull * (head.count - 1));",
       "the HBM model drops the last word of every write", GEMM_VERILATOR),
    _m("harness_response_one_cycle_late", "runtime/backends/verilator_harness.cpp",
       "queues[q].front().due <= cycle", "queues[q].front().due < cycle",
       "the HBM model answers one cycle later than its latency (cycle counts drift from the Amaranth backend)",
       _pnpu("test_amaranth_and_verilator_agree_on_results_and_cycles")),
    _m("harness_read_address_off_by_one", "runtime/backends/verilator_harness.cpp",
       "std::memcpy(&word, &hbm[(head.addr + i) * 4], 4);", "std::memcpy(&word, &hbm[(head.addr + i + 1) * 4], 4);",
       "the HBM model answers a read with the words one address later", GEMM_VERILATOR),
]

BY_NAME = {m.name: m for m in CATALOGUE}
assert len(BY_NAME) == len(CATALOGUE), "duplicate mutation names"


# --- checks on the catalogue --------------------------------------------------------------------

class CatalogueError(RuntimeError):
    """A catalogue snippet does not occur exactly once (the catalogue has rotted)."""


def git(*args, cwd=REPO, text=True):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=text).stdout


def head_source(path, repo=REPO):
    """The file at ``HEAD`` (what the harness mutates)."""
    return git("show", f"HEAD:{path}", cwd=repo)


def check_catalogue(mutations=CATALOGUE, read=head_source):
    """Raise :class:`CatalogueError` listing every snippet that does not occur exactly once."""
    problems = []
    for mut in mutations:
        count = read(mut.file).count(mut.old)
        if count != 1:
            problems.append(f"{mut.name}: snippet {mut.old!r} occurs {count} times in {mut.file}")
        if mut.old == mut.new:
            problems.append(f"{mut.name}: replacement equals the snippet")
    if problems:
        raise CatalogueError("mutation catalogue out of date:\n  " + "\n  ".join(problems))


# --- the scratch copy ---------------------------------------------------------------------------

class Workspace:
    """A detached git worktree of ``HEAD`` with ``tcloud`` importable from it and its own cache."""

    def __init__(self, repo=REPO, root=None):
        self.repo = Path(repo)
        self.root = Path(root or tempfile.mkdtemp(prefix="tcloud-mutation-"))
        self.tree = self.root / "tree"
        self.shim = self.root / "shim"
        self.cache = self.root / "cache"
        git("worktree", "add", "--detach", "--quiet", str(self.tree), "HEAD", cwd=self.repo)
        (self.shim / "tcloud").mkdir(parents=True)
        for folder in PACKAGES:
            (self.shim / "tcloud" / folder).symlink_to(self.tree / folder, target_is_directory=True)
        self.cache.mkdir()
        self.originals = {}

    def env(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.shim), *filter(None, [env.get("PYTHONPATH")])])
        env["TCLOUD_CACHE"] = str(self.cache)
        env["CI"] = "true"
        env.pop("PYTEST_ADDOPTS", None)
        env.pop("PYTEST_CURRENT_TEST", None)
        return env

    def check_imports(self):
        """Verify that ``tcloud.*`` resolves into the copy, not the repository."""
        code = "import json, tcloud.isa, tcloud.rtl, tcloud.runtime; " \
               "print(json.dumps([m.__file__ for m in (tcloud.isa, tcloud.rtl, tcloud.runtime)]))"
        out = subprocess.run([sys.executable, "-c", code], cwd=self.tree, env=self.env(), check=True,
                             capture_output=True, text=True).stdout
        for path in json.loads(out):
            resolved = Path(path).resolve()
            if self.tree.resolve() not in resolved.parents:
                raise RuntimeError(f"tcloud imported from {resolved}, not from the copy {self.tree}")

    def apply(self, mut):
        path = self.tree / mut.file
        original = path.read_bytes()
        text = original.decode()
        if text.count(mut.old) != 1:
            raise CatalogueError(f"{mut.name}: snippet occurs {text.count(mut.old)} times in {mut.file}")
        self.originals[mut.file] = original
        path.write_bytes(text.replace(mut.old, mut.new, 1).encode())

    def revert(self, mut):
        path = self.tree / mut.file
        git("checkout", "--", mut.file, cwd=self.tree)
        original = self.originals.pop(mut.file)
        if path.read_bytes() != original:
            raise RuntimeError(f"reverting {mut.name} did not restore {mut.file}")

    def close(self):
        try:
            git("worktree", "remove", "--force", str(self.tree), cwd=self.repo)
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=self.repo, capture_output=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- running ------------------------------------------------------------------------------------

def pytest_command(args, collect=False):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    return cmd + (["--collect-only"] if collect else ["-x"]) + list(args)


def run(cmd, cwd, env, timeout):
    """Run ``cmd`` in its own process group; returns (returncode or None on timeout, output)."""
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout)
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return None, out


def _selected(arg, k, collected):
    ids = [i for i in collected if i == arg or i.startswith(arg + "::")]
    if k:  # the plain-word -k expressions used here: "a and not b", "amaranth"
        words = k.split()
        wanted = [w for i, w in enumerate(words) if w not in ("and", "not") and (i == 0 or words[i - 1] != "not")]
        unwanted = [w for i, w in enumerate(words) if i > 0 and words[i - 1] == "not"]
        ids = [i for i in ids if all(w in i for w in wanted) and not any(w in i for w in unwanted)]
    return ids


def check_selections(ws, mutations):
    """Every mutation's test selection must collect at least one test at HEAD.

    One ``--collect-only`` of all the selections; only if that fails (a node id that no longer
    exists) is each mutation's selection collected on its own, to name the stale entries."""
    args = sorted({a for mut in mutations for a in mut.tests})
    code, out = run(pytest_command(args, collect=True), ws.tree, ws.env(), 600)
    if code == 0:
        collected = [line.strip() for line in out.splitlines() if "::" in line]
        empty = [mut.name for mut in mutations
                 if not any(_selected(a, mut.k, collected) for a in mut.tests)]
        if not empty:
            return
    problems = []
    for mut in mutations:
        code, out = run(pytest_command(mut.pytest_args(), collect=True), ws.tree, ws.env(), 300)
        if code != 0:
            problems.append(f"{mut.name}: {' '.join(mut.pytest_args())} collects nothing (exit {code}):\n"
                            + "\n".join(out.strip().splitlines()[-5:]))
    if problems:
        raise CatalogueError("test selections out of date:\n  " + "\n  ".join(problems))


def run_mutation(ws, mut, timeout):
    ws.apply(mut)
    start = time.monotonic()
    try:
        code, out = run(pytest_command(mut.pytest_args()), ws.tree, ws.env(), timeout)
    finally:
        ws.revert(mut)
    seconds = time.monotonic() - start
    if code is None:
        status, detail = "killed", f"timed out after {timeout} s"
    elif code == 0:
        status, detail = "survived", "all selected tests passed"
    elif code in (1, 2):   # 1: a test failed; 2: collection failed (the mutant does not import)
        status = "killed"
        failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
        detail = failed[0] if failed else out.strip().splitlines()[-1]
    else:
        status, detail = "error", f"pytest exit {code}: " + " | ".join(out.strip().splitlines()[-3:])
    return {"name": mut.name, "file": mut.file, "description": mut.description, "status": status,
            "tests": list(mut.pytest_args()), "returncode": code, "seconds": round(seconds, 1),
            "detail": detail[:300]}


def print_table(results):
    width = max(len(r["name"]) for r in results)
    print(f"{'mutation':<{width}}  {'result':<8}  {'secs':>6}  bug modelled")
    print("-" * (width + 70))
    for r in results:
        print(f"{r['name']:<{width}}  {r['status']:<8}  {r['seconds']:>6.1f}  {r['description']}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tcloud.verif.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--list", action="store_true", help="list the catalogue and exit")
    parser.add_argument("--out", help=f"JSON report, relative to the repository root (default for a full run: "
                                      f"{DEFAULT_OUT}; a partial --only run writes none unless given)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds per mutation before it counts as killed (default %(default)s)")
    args = parser.parse_args(argv)

    if args.list:
        for mut in CATALOGUE:
            print(f"{mut.name:<36} {mut.file:<32} {mut.description}")
            print(f"{'':<36} tests: {' '.join(mut.pytest_args())}")
        print(f"{len(CATALOGUE)} mutations")
        return 0
    unknown = [n for n in args.only or () if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown mutation(s): {', '.join(unknown)}")
    mutations = [BY_NAME[n] for n in args.only] if args.only else CATALOGUE
    out = args.out or (None if args.only else DEFAULT_OUT)

    check_catalogue(mutations)
    commit = git("rev-parse", "HEAD").strip()
    started = time.monotonic()
    results = []
    with Workspace() as ws:
        ws.check_imports()
        check_selections(ws, mutations)
        for i, mut in enumerate(mutations, 1):
            result = run_mutation(ws, mut, args.timeout)
            results.append(result)
            print(f"[{i}/{len(mutations)}] {mut.name}: {result['status']} ({result['seconds']} s) {result['detail']}",
                  flush=True)
    total = time.monotonic() - started
    killed = [r for r in results if r["status"] == "killed"]
    survived = [r for r in results if r["status"] == "survived"]
    errors = [r for r in results if r["status"] == "error"]
    scored = len(killed) + len(survived)
    ratio = len(killed) / scored if scored else 0.0
    print()
    print_table(results)
    print(f"\n{len(killed)}/{scored} killed ({100 * ratio:.1f} %), {len(survived)} survived, {len(errors)} errors, "
          f"{total:.0f} s, commit {commit[:12]}")
    for r in survived:
        print(f"  SURVIVED {r['name']}: {r['description']} ({r['file']})")
    report = {"commit": commit, "seconds": round(total, 1), "mutations": len(results), "killed": len(killed),
              "survived": len(survived), "errors": len(errors), "kill_ratio": round(ratio, 4),
              "timeout": args.timeout, "environment": {"CI": "true"}, "results": results}
    if out:
        path = Path(out) if Path(out).is_absolute() else REPO / out
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
