# smartfarm: `make demo` runs the farm, `make test` proves it. Both bootstrap .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test
DEMO_DIR ?= .demo
# ESPHome validates the generated node files (`esphome config`). It pins paho-mqtt 1.x, the edge
# needs 2.x: so it gets a venv of its own. Installed once (needs the package index); the checks
# themselves run offline.
ESPHOME_VENV    := .venv-esphome
ESPHOME_VERSION ?= 2026.6.5
ESPHOME         := $(ESPHOME_VENV)/bin/esphome

.PHONY: demo test lint bench clean venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/smartfarm demo --dir $(DEMO_DIR)

$(ESPHOME):
	$(PYTHON) -m venv $(ESPHOME_VENV)
	$(ESPHOME_VENV)/bin/pip install -q --upgrade pip
	$(ESPHOME_VENV)/bin/pip install -q esphome==$(ESPHOME_VERSION)

test: $(TSTAMP) $(ESPHOME)
	$(BIN)/ruff check .
	$(BIN)/mypy
	SMARTFARM_ESPHOME=$(ESPHOME) SMARTFARM_REQUIRE_ESPHOME=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(TSTAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true
	$(BIN)/mypy

bench: $(TSTAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(ESPHOME_VENV) $(DEMO_DIR) .pytest_cache .ruff_cache .mypy_cache
