# Palisade's tasks. `make help` lists them; `make ci` is exactly what CI (.ci/run) runs.
SHELL := /bin/bash
CARGO ?= cargo
# nextest runs each test in its own process, in parallel; plain cargo test is the fallback.
NEXTEST := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)
ifeq ($(NEXTEST),yes)
TEST_CMD = $(CARGO) nextest run --workspace --no-fail-fast --failure-output final
else
TEST_CMD = $(CARGO) test --workspace --no-fail-fast
endif

.DEFAULT_GOAL := help
.PHONY: help run test ci fmt fmt-check lint build release test-services helm-check bench bench-smoke chaos chaos-short clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

run: ## Run all of Palisade in one process on embedded defaults (SQLite, in-process queue, ms-sim)
	$(CARGO) run -p palisade-cli --bin palisade -- dev

test: ## Run every test against real Postgres and Redis (started here if none is running)
	scripts/test-services.sh $(TEST_CMD)

ci: fmt-check lint test helm-check bench-smoke ## What CI runs: format, clippy -D warnings, tests, chart checks, a bench smoke run

fmt: ## Format the code
	$(CARGO) fmt --all

fmt-check: ## Fail if the code is not formatted
	$(CARGO) fmt --all -- --check

lint: ## clippy on every target, warnings are errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

build: ## Debug build of everything
	$(CARGO) build --workspace --all-targets

release: ## Release build of the binaries
	$(CARGO) build --release --workspace --bins

test-services: ## Print the Postgres and Redis URLs the tests would use
	scripts/test-services.sh env | grep -E '^PALISADE_TEST_'

# The RSS workload runs the service binaries as separate processes, from the bench's own target dir.
BENCH_SERVICES := -p palisade-token-broker -p palisade-alert-ingest -p palisade-notifier -p palisade-compliance

bench: ## Every benchmark against its same-run baseline, in release mode (results in bench-results/)
	$(CARGO) build --release $(BENCH_SERVICES)
	scripts/test-services.sh $(CARGO) run --release -p palisade-bench -- --out bench-results $(BENCH_ARGS)

bench-smoke: ## One short iteration of every benchmark, so the harness cannot rot (numbers mean nothing)
	$(CARGO) build $(BENCH_SERVICES)
	scripts/test-services.sh $(CARGO) run -p palisade-bench -- --smoke --out target/bench-smoke

# The chaos suite starts its own Postgres and Redis (never the shared ones) and the services
# from their debug binaries, built here first; CHAOS_ARGS passes e.g. --seed N or --keep.
CHAOS_BINS := -p ms-sim -p palisade-token-broker -p palisade-alert-ingest -p palisade-notifier -p palisade-compliance -p palisade-chaos
chaos: ## The chaos suite, full: thousands of alerts while services are SIGKILLed and Redis and Postgres restarted (a few minutes)
	$(CARGO) build $(CHAOS_BINS) --bins
	$(CARGO) run -q -p palisade-chaos -- $(CHAOS_ARGS)

chaos-short: ## The chaos suite's short run, the one CI runs as a test (tools/chaos/tests)
	$(CARGO) build $(CHAOS_BINS) --bins
	$(CARGO) run -q -p palisade-chaos -- --short $(CHAOS_ARGS)

HELM_VENV := target/helm-venv
$(HELM_VENV)/.installed: deploy/helm-check/requirements.txt
	python3 -m venv $(HELM_VENV)
	$(HELM_VENV)/bin/pip install --quiet --disable-pip-version-check --ignore-requires-python -r $<
	touch $@

helm-check: $(HELM_VENV)/.installed ## Lint, render and validate the Helm chart offline, assert its policies, and check the services accept its config
	$(CARGO) build -q -p palisade-token-broker -p palisade-alert-ingest -p palisade-compliance
	cd deploy/helm-check && ../../$(HELM_VENV)/bin/python check_chart.py 2> >(grep -v -E 'reflector.go|symbolic link' >&2)

clean: ## Remove build output and local state
	$(CARGO) clean
	rm -rf .palisade
