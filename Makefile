# Two commands do everything on a fresh machine with Python 3.10+:
#   make demo   create .venv if missing, install MedXAILib with its demo extra, explain a built-in example into ./medxai-out
#   make test   create .venv if missing, install with the test extras (slicer-core, captum), run pytest
# TORCH picks the PyTorch build: the default is the CPU wheel; for CUDA, e.g.
#   make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
OUT    ?= medxai-out
PY     := $(VENV)/bin/python

.PHONY: demo test bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamps re-run an install only when pyproject.toml (or TORCH) changes.
$(VENV)/.torch-stamp: $(PY)
	$(PY) -m pip install --quiet $(TORCH)
	echo "$(TORCH)" > $@

$(VENV)/.base-stamp: pyproject.toml $(VENV)/.torch-stamp
	$(PY) -m pip install --quiet -e .
	touch $@

# The tests also run the demo (MNI template, figures), hence the demo extra.
$(VENV)/.test-stamp: pyproject.toml $(VENV)/.base-stamp
	$(PY) -m pip install --quiet -e ".[test,demo]"
	touch $@

install: $(VENV)/.base-stamp

$(VENV)/.demo-stamp: pyproject.toml $(VENV)/.base-stamp
	$(PY) -m pip install --quiet -e ".[demo]"
	touch $@

demo: $(VENV)/.demo-stamp
	$(PY) -m MedXAILib demo --out $(OUT)

# One torch thread: the tests run thousands of tiny models, where thread start-up dominates and
# two threads on two cores are several times slower than one.
test: $(VENV)/.test-stamp
	OMP_NUM_THREADS=1 $(PY) -m pytest

bench: $(VENV)/.test-stamp
	OMP_NUM_THREADS=1 $(PY) Testing/benchmarks/bench_explain.py
	OMP_NUM_THREADS=1 $(PY) Testing/benchmarks/bench_scale.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
