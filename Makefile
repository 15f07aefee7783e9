# Every target works on a fresh machine with only Python 3.11 and pip: it creates .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	# the PIT gen_cal_image reference; its ramp-fit and linearity modules need none of its heavy deps
	$(PY) -m pip install --quiet --no-deps romanimpreprocess==1.0.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/detflow demo

test: $(STAMP)
	$(PY) -m pytest -n 2 --nbmake -m "not slurm" tests notebooks

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
