# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) the local virtual environment in .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tcloud-installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("TCloud needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tcloud demo

# One pytest worker per logical CPU, at most 4 (each may hold a Verilator model and an RL trainer);
# tests that share an expensive module fixture are one xdist_group (--dist loadgroup). The 20 slowest
# tests are listed at the end, so a CI log shows where its time went.
test: $(STAMP)
	$(PY) -m pytest -q -n logical --maxprocesses 4 --dist loadgroup --durations=20

# `make bench` writes to a fresh directory, so a run never overwrites the committed results;
# `make bench BENCH_OUT=benchmarks/results` replaces them on purpose.
ifndef BENCH_OUT
BENCH_OUT := build/bench/$(shell date -u +%Y%m%d-%H%M%S)
endif
BENCHMARKS := golden_gemm verilator_build sim_speed hbm_bandwidth me_utilization "multitenant_rtl --runs 8" interference compile_models zoo_work perf_validation perf_speed

bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@echo "make bench: results go to $(BENCH_OUT) (benchmarks/results holds the committed ones)"
	@set -- $(BENCHMARKS); step=0; for bench in "$$@"; do step=$$((step + 1)); \
	    echo "[$$step/$$#] python -m benchmarks.$$bench  (started $$(date -u +%H:%M:%S) UTC)"; \
	    TCLOUD_BENCH_RESULTS=$(BENCH_OUT) $(PY) -m benchmarks.$$bench || exit 1; done
	@echo "make bench: done; results in $(BENCH_OUT)"

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
