# Every target works on a fresh machine with only Python 3.11 and pip: it creates .venv first.
# `make demo` installs detflow and its run-time dependencies only; `make test` adds the test extras
# (reference libraries: stcal, corgidrp, ccdproc, ...) and `make bench` the benchmark extras.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BASE   := $(VENV)/.installed-base
TEST   := $(VENV)/.installed-test
BENCH  := $(VENV)/.installed-bench

.PHONY: install demo test bench clean

$(BASE): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(BASE)

$(TEST): $(BASE)
	$(PY) -m pip install --quiet -e ".[test]"
	# the PIT gen_cal_image reference; its ramp-fit and linearity modules need none of its heavy deps
	$(PY) -m pip install --quiet --no-deps romanimpreprocess==1.0.0
	touch $(TEST)

$(BENCH): $(TEST)
	$(PY) -m pip install --quiet -e ".[bench]"
	touch $(BENCH)

install: $(BASE)

demo: $(BASE)
	$(VENV)/bin/detflow demo

test: $(TEST)
	# lint and format check first (pyflakes, pycodestyle, import order: [tool.ruff] in pyproject.toml); the
	# import contract (layers, no cycles, module length) is tests/test_layers.py
	$(VENV)/bin/ruff check detflow tests bench notebooks
	$(VENV)/bin/ruff format --check detflow tests bench notebooks
	$(PY) -m pytest -n 2 --dist worksteal --nbmake -m "not slurm" tests notebooks

bench: $(BENCH)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
