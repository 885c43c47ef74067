# Two commands do everything on a fresh machine with Python 3.10+:
#   make demo   create .venv if missing, install MedXAILib with its demo extra, explain a built-in example into ./medxai-out
#   make test   create .venv if missing, install with the test extras (slicer-core, captum), run pytest
#   make view   serve ./medxai-out as a web page (medxai view, the viewer extra)
# TORCH picks the PyTorch build: the default is the CPU wheel; for CUDA, e.g.
#   make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
OUT    ?= medxai-out
PY     := $(VENV)/bin/python
# nnU-Net, the reference of Testing/Lib/test_nnunet.py, installed without its declared requirements: through
# dynamic-network-architectures -> timm they would pull torchvision and replace TORCH; the modules the tests use
# need neither, and their other imports come with the nnunet-test extra (pyproject.toml).
NNUNET ?= nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 acvl-utils==0.2.6 batchgenerators==0.25.5 \
          batchgeneratorsv2==0.3.6

.PHONY: demo test bench install clean view

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

# The tests also run the demo (MNI template, figures), hence the demo extra, and drive the web viewer
# (`medxai view`) in Debian's chromium, hence the viewer extra (it pins slicer-core to 5.11.0.x, see pyproject),
# and run a cohort on a local Ray instance, hence the cohort extra.
$(VENV)/.test-stamp: pyproject.toml $(VENV)/.base-stamp
	$(PY) -m pip install --quiet -e ".[test,demo,viewer,cohort,nnunet-test]"
	$(PY) -m pip install --quiet --no-deps $(NNUNET)
	touch $@

install: $(VENV)/.base-stamp

$(VENV)/.demo-stamp: pyproject.toml $(VENV)/.base-stamp
	$(PY) -m pip install --quiet -e ".[demo]"
	touch $@

demo: $(VENV)/.demo-stamp
	$(PY) -m MedXAILib demo --out $(OUT)

$(VENV)/.viewer-stamp: pyproject.toml $(VENV)/.base-stamp
	$(PY) -m pip install --quiet -e ".[viewer]"
	touch $@

# The demo's folder (or OUT=DIR) as a web page on 127.0.0.1:8080, without Slicer; Ctrl-C stops it.
view: $(VENV)/.viewer-stamp
	$(PY) -m MedXAILib view $(OUT)

# One torch thread: the tests run thousands of tiny models, where thread start-up dominates and
# two threads on two cores are several times slower than one.
test: $(VENV)/.test-stamp
	OMP_NUM_THREADS=1 $(PY) -m pytest

bench: $(VENV)/.test-stamp
	OMP_NUM_THREADS=1 $(PY) Testing/benchmarks/bench_explain.py
	OMP_NUM_THREADS=1 $(PY) Testing/benchmarks/bench_scale.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
