# smartfarm: `make demo` runs the farm, `make test` proves it. Both bootstrap .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TSTAMP := $(VENV)/.installed-test
DEMO_DIR ?= .demo
# axe-core for the browser tests' accessibility check: a pinned npm tarball, integrity-checked,
# unpacked once into the venv (share/axe-core/axe.min.js); curl-free, node-free (python fetches it).
AXE_VERSION := 4.14.1
AXE_STAMP   := $(VENV)/.axe-core-$(AXE_VERSION)
# ESPHome validates the generated node files (`esphome config`). It pins paho-mqtt 1.x, the edge
# needs 2.x: so it gets a venv of its own. Installed once (needs the package index); the checks
# themselves run offline.
ESPHOME_VENV    := .venv-esphome
ESPHOME_VERSION ?= 2026.6.5
ESPHOME         := $(ESPHOME_VENV)/bin/esphome

.PHONY: demo test lint bench clean venv axe bundle gallery

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(STAMP)

$(AXE_STAMP): | $(TSTAMP)
	$(BIN)/python -m tests.e2e.browser fetch-axe
	touch $@

venv: $(STAMP)

axe: $(AXE_STAMP)

# The dashboard's static assets, raw and gzipped, against the budget; written to bench/results/.
bundle: $(TSTAMP)
	SMARTFARM_BUNDLE_REPORT=1 $(BIN)/python -m pytest -q -s tests/cloud/test_bundle_size.py

# Screenshots of every view of the grower's app at 390 and 1366 px into docs/gallery (the test
# checks each with axe on the way).
gallery: $(TSTAMP) $(AXE_STAMP)
	SMARTFARM_GALLERY=docs/gallery $(BIN)/python -m pytest -q tests/e2e/test_grower_gallery.py

demo: $(STAMP)
	$(BIN)/smartfarm demo --dir $(DEMO_DIR)

$(ESPHOME):
	$(PYTHON) -m venv $(ESPHOME_VENV)
	$(ESPHOME_VENV)/bin/pip install -q --upgrade pip
	$(ESPHOME_VENV)/bin/pip install -q esphome==$(ESPHOME_VERSION)

# The suite includes the axe accessibility check of the dashboard, the bundle-size budget and
# `esphome config` of every kind of generated node file.
test: $(TSTAMP) $(AXE_STAMP) $(ESPHOME)
	$(BIN)/ruff check .
	$(BIN)/mypy
	SMARTFARM_ESPHOME=$(abspath $(ESPHOME)) SMARTFARM_REQUIRE_ESPHOME=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(TSTAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true
	$(BIN)/mypy

bench: $(TSTAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(ESPHOME_VENV) $(DEMO_DIR) .pytest_cache .ruff_cache .mypy_cache

# The container image built with podman from Debian's own packages, no registry needed: a
# debootstrap'd bookworm base (tarball cached in ~/.cache/smartfarm/image), then
# deploy/docker/Dockerfile on it. `image-check` runs it: the cloud answers /health and an edge
# container syncs a simulator's readings into it (a throwaway database on $DATABASE_URL's server).
# As root; see docs/deploy.md.
.PHONY: image image-check
image:
	deploy/image/build-and-check.sh base
	deploy/image/build-and-check.sh build

image-check: image
	deploy/image/build-and-check.sh check
