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

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	$(PY) -m benchmarks.golden_gemm
	$(PY) -m benchmarks.verilator_build
	$(PY) -m benchmarks.sim_speed
	$(PY) -m benchmarks.hbm_bandwidth
	$(PY) -m benchmarks.me_utilization
	$(PY) -m benchmarks.multitenant_rtl --runs 8
	$(PY) -m benchmarks.interference

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis
