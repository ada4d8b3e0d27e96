# Every target creates .venv and installs what it needs; nothing depends on what was installed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed
MUTATION_STAMP := $(VENV)/.mutation-installed
# Third-party model servers for the interop tests (tests/interop): a venv of their own, their pins clash with ours
INTEROP := .venv-interop
INTEROP_STAMP := $(INTEROP)/.installed

.PHONY: demo test lint bench check-config clean prometheus chromium interop mutation

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUNTIME_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e .
	touch $@

$(DEV_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@ $(RUNTIME_STAMP)

$(INTEROP_STAMP): tests/interop/requirements.txt
	$(PYTHON) -m venv $(INTEROP)
	$(INTEROP)/bin/python -m pip install -q --upgrade pip
	$(INTEROP)/bin/python -m pip install -q -r tests/interop/requirements.txt
	touch $@

interop: $(INTEROP_STAMP)

demo: $(RUNTIME_STAMP)
	$(BIN)/inference-router demo

# tests/test_monitoring.py runs a real Prometheus (Debian's package ships promtool too). Installed here
# when possible (root + apt-get); elsewhere those tests skip and say why.
prometheus:
	@command -v prometheus >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
	  >/dev/null; } || echo "prometheus not installed: its tests will be skipped (apt-get install prometheus)"

# tests/test_status_page.py drives the status page in a real headless Chromium (Debian's package), installed
# the same way; elsewhere that test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
	  >/dev/null; } || echo "chromium not installed: the status page's browser test will be skipped (apt-get install chromium)"

test: $(DEV_STAMP) prometheus chromium interop
	$(BIN)/python -m pytest -q

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	@# every shipped config, warnings (dead rules, unreachable lanes) included; the ConfigMap's embedded one too
	for f in policies/*.yaml deploy/kubernetes/configmap.yaml; do \
	  ROUTER_ADMIN_TOKEN=lint-only-admin-token $(BIN)/inference-router check --strict --config $$f || exit 1; done
	$(BIN)/hadolint Dockerfile

bench: $(DEV_STAMP)
	$(BIN)/python bench/policy_decision.py
	$(BIN)/python bench/overhead.py

# Mutation testing, by hand (not in CI): mutmut on a copy of the tree, then each module's score and every
# surviving mutant's diff (tools/mutation.py). Add a core module to MUTATE and the tests that pin it to
# MUTATION_TESTS; globs that match nothing yet (router/flow/*.py) are skipped.
MUTATE ?= router/policy/*.py router/features.py router/lanes/sync.py router/lanes/walk.py router/state.py router/flow/*.py
MUTATION_TESTS ?= tests/test_engine.py tests/test_features.py tests/test_policy_*.py tests/test_config.py \
	tests/test_state.py tests/test_router_sync.py tests/test_routing_contract.py tests/test_jobs_contract.py \
	tests/test_flow*.py tests/test_lanes_*.py

$(MUTATION_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,mutation]'
	touch $@ $(DEV_STAMP) $(RUNTIME_STAMP)

mutation: $(MUTATION_STAMP)
	$(BIN)/python tools/mutation.py --modules '$(MUTATE)' --tests '$(MUTATION_TESTS)'

clean:
	rm -rf $(VENV) $(INTEROP) .pytest_cache .mypy_cache .ruff_cache build/mutation
