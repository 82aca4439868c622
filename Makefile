# One task runner; CI calls these targets verbatim.
SHELL := /bin/bash
export UV_PYTHON ?= 3.11
export UV_PYTHON_PREFERENCE ?= only-system
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen

.PHONY: install up down status test test-js test-unit test-integration test-reliability lint bench clean

install: ## Create .venv with the exact locked versions (installs uv if missing), and the browser SDK's npm packages.
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen
	@# package-lock.json pins them; skip when nothing changed since the last install.
	@if [ ! -f sdk/js/node_modules/.package-lock.json ] || [ sdk/js/package-lock.json -nt sdk/js/node_modules/.package-lock.json ]; then \
		npm ci --prefix sdk/js --no-audit --no-fund; fi

up: install ## Start the whole embedded stack in the background; `make down` stops it.
	$(RUN) freshrank up --detach

down: ## Stop the embedded stack.
	$(RUN) freshrank down

status:
	$(RUN) freshrank status

test: install ## Browser SDK unit tests, then unit, integration and reliability tests (own broker, Redis, Flink, Chromium).
	npm test --prefix sdk/js
	$(RUN) pytest

test-js: install ## Browser SDK (sdk/js) unit tests with node's test runner.
	npm test --prefix sdk/js

test-unit: install
	$(RUN) pytest tests/unit

test-integration: install
	$(RUN) pytest tests/integration

SOAK_USERS ?= 200000
test-reliability: install ## Fault suite, with a long soak (SOAK_USERS distinct users); figures in bench/results/soak.json.
	mkdir -p bench/results
	FRESHRANK_SOAK_USERS=$(SOAK_USERS) FRESHRANK_SOAK_REPORT=bench/results/soak.json $(RUN) pytest tests/reliability

lint: install ## ruff and mypy --strict on the packages.
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy

bench: install ## Freshness and feed API benchmarks, each against its Feast baseline, the job in a mini-cluster and with its operators split over 2 TaskManagers, and 1 vs 2 TaskManagers; JSON and freshness plots (PNG) in bench/results/.
	$(RUN) freshrank bench freshness --rate 1000 --seconds 30 --json bench/results/freshness-1000.json --plot bench/results/freshness-1000.png
	$(RUN) freshrank bench freshness --rate 5000 --seconds 60 --json bench/results/freshness-5000.json --plot bench/results/freshness-5000.png
	$(RUN) freshrank bench freshness --rate 5000 --seconds 60 --task-managers 2 --split-operators --json bench/results/freshness-5000-split.json --plot bench/results/freshness-5000-split.png
	$(RUN) freshrank bench freshness --find-max --rate 1000 --seconds 30 --json bench/results/freshness-max.json
	$(RUN) freshrank bench freshness --compare-parallelism --rate 10000 --seconds 30 --json bench/results/freshness-parallelism.json
	$(RUN) freshrank bench freshness --compare-parallelism --find-max --rate 2000 --seconds 30 --json bench/results/freshness-parallelism-max.json
	$(RUN) freshrank bench serving --rps 400 --seconds 30 --candidates 500 --workers 2 --json bench/results/serving-400-w2.json
	$(RUN) freshrank bench serving --rps 200 --seconds 30 --candidates 500 --workers 1 --find-max --json bench/results/serving-200-w1.json

clean:
	rm -rf .freshrank .pytest_cache .mypy_cache .ruff_cache
