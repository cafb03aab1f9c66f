# tff-vision: entry points; each creates its own environment (.venv/) from nothing.
#   make demo   - the demo experiment (RetinaMNIST, 3 label-excluding hospitals, FedAvg + baselines)
#   make test   - style checks (ruff), then the whole test suite
#   make lint   - style checks only: ruff check and ruff format --check
# Everything installs into .venv/ from the fully pinned requirements.lock (TFF itself --no-deps:
# its declared jax==0.4.14 pin is unsatisfiable, the lock holds a working set instead).

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests run in parallel, one worker per core (at most 4: each may hold a TF process and its
# TFF worker); a unittest class stays on one worker. PYTEST_ARGS="-p no:xdist" runs serially.
PYTEST_ARGS ?= -n auto --maxprocesses=4 --dist=loadscope
# Real MedMNIST files: ../shared/medmnist when present (this project's CI), else data/.
DATA_DIR ?= $(if $(wildcard ../shared/medmnist/retinamnist.npz),../shared/medmnist,data)
DEMO_ARGS ?=

.PHONY: demo test lint env clean-env

env: $(STAMP)

$(STAMP): requirements.lock setup.cfg
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'" >&2; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.run --flagfile=experiments/configs/demo.cfg --data_dir=$(DATA_DIR) $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check tff_vision experiments tests
	$(VENV)/bin/ruff format --check tff_vision experiments tests

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean-env:
	rm -rf $(VENV)
