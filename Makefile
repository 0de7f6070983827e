# Two commands from a fresh Debian/Ubuntu machine (as root):
#   make run    set up everything and run the service on the local Slurm cluster
#   make test   run the whole test suite (unit + integration on the real local Slurm)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CLUSTER := deploy/local/cluster.sh
DEV_CONFIG := .cluster/config.yaml
STAMP := $(VENV)/.installed
# Most integration tests wait on Slurm and their pods, not on the CPU: make test runs them in
# this many processes, then the unit tests in 2 (CPU-bound: apart, so that their load never
# times the integration tests), then the tests marked "alone" (they stop, drain, fill or load
# the shared cluster) one at a time.
TEST_WORKERS ?= 3

.PHONY: run test unit lint shellcheck cluster-up cluster-down dev-config clean e2e-local

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { apt-get update && apt-get install -y python3 python3-venv; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { apt-get update && apt-get install -y python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

cluster-up:
	$(CLUSTER) up

cluster-down:
	$(CLUSTER) down

dev-config: cluster-up
	deploy/local/dev-config.sh > $(DEV_CONFIG)
	@echo "configuration: $(DEV_CONFIG)"

run: $(STAMP) dev-config
	USER=$${USER:-root} $(BIN)/interlink-slurm serve --config $(DEV_CONFIG)

test: $(STAMP) cluster-up shellcheck
	$(BIN)/ruff check interlink_slurm tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	eval "$$($(CLUSTER) env)" && USER=$${USER:-root} $(BIN)/pytest -q -n $(TEST_WORKERS) -m 'not alone' --ignore=tests/unit
	USER=$${USER:-root} $(BIN)/pytest -q -n 2 tests/unit
	eval "$$($(CLUSTER) env)" && USER=$${USER:-root} $(BIN)/pytest -q -m alone
	$(MAKE) e2e-local

# The end-to-end scenarios of deploy/e2e/scenarios/ against the plugin's HTTP API on the local
# cluster (the kind workflow runs the same ones through Kubernetes).
e2e-local: $(STAMP) cluster-up
	eval "$$($(CLUSTER) env)" && USER=$${USER:-root} $(BIN)/python deploy/e2e/run_local.py

# The job script's library, strictly; then every golden job script, which sources the golden of
# the library. Left out there: what shellcheck cannot see from a golden alone (a pod's own
# pre-exec file, SC1091; functions run by a trap, SC2317), a pod's words single-quoted on
# purpose (SC2016), and mkdir -m for parents that umask 077 makes private anyway (SC2174).
shellcheck:
	@command -v shellcheck >/dev/null || bash -c 'PACKAGES=(shellcheck); log() { echo "$$*"; }; \
		. deploy/local/packages.sh && ensure_packages'
	shellcheck interlink_slurm/jobscript/ils.sh
	cd tests/golden && shellcheck -x --exclude=SC1091,SC2016,SC2174,SC2317 *.sh

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check interlink_slurm tests
	$(BIN)/ruff format --check interlink_slurm tests
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
