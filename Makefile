# Portico: the commands a developer needs. `make` alone lists them.
#
#   make run     build (release) and run the demo: backends on :3001-3004, Portico on :8080
#   make cluster build (release), then three Portico instances on a Redis Cluster behind HAProxy on :8000
#   make test    install missing system packages, build the workspace, run every test

SHELL := bash
.DEFAULT_GOAL := help
CARGO ?= cargo
# Extra arguments: `make test TEST_ARGS='routing'`, `make bench BENCH_ARGS=--quick`.
TEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help run cluster build test bench bench-micro lint fmt clean deps

help: ## list the targets
	@echo 'Portico make targets:'
	@awk 'BEGIN { FS = ":.*## " } /^[a-z][a-z-]*:.*## / { printf "  make %-7s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo 'Variables: TEST_ARGS (passed to cargo test), BENCH_ARGS (e.g. --quick), PORTICO_CONFIG (make run), PORTICO_CLUSTER_CONFIG (make cluster)'

run: build ## build (release) and run the demo backends and Portico on conf/portico.toml
	scripts/run-demo.sh

cluster: build ## build (release) and run 3 Portico instances on one config, a 3-node Redis Cluster and HAProxy on :8000
	scripts/cluster.sh

build: deps ## release build of the gateway and the demo/benchmark backend
	$(CARGO) build --release -p portico -p portico-loadtest

test: deps ## install missing system packages, build the workspace, run all tests
	$(CARGO) build --workspace
	@# Every test binary's "test result:" line stays on screen; the totals line sums them up.
	@# The integration suite runs twice: on Portico's own driver (the default), then with
	@# every request through Pingora's proxy (server.fast_path = false).
	@log="$$(mktemp)"; set -o pipefail; \
	echo '$(strip $(CARGO) test --workspace $(TEST_ARGS))'; \
	$(CARGO) test --workspace $(TEST_ARGS) 2>&1 | tee "$$log"; status=$$?; \
	echo '$(strip PORTICO_TEST_DRIVER=pingora $(CARGO) test -p portico --test it $(TEST_ARGS))'; \
	PORTICO_TEST_DRIVER=pingora $(CARGO) test -p portico --test it $(TEST_ARGS) 2>&1 | tee -a "$$log" \
	    || status=$$?; \
	awk '/^test result: / { p += $$4; f += $$6; s += $$8 } \
	     END { printf "\ntotal: %d passed, %d failed, %d skipped\n", p, f, s }' "$$log"; \
	rm -f "$$log"; exit $$status

bench: ## Portico side by side with nginx, HAProxy and bare Pingora (wrk, oha); writes loadtest/RESULTS.md (BENCH_ARGS=--quick)
	bash loadtest/bench.sh $(BENCH_ARGS)

bench-micro: deps ## criterion benchmarks of hot functions (routing, JWT verification, rate-limit decisions, GraphQL queries, OTLP encoding)
	$(CARGO) bench -p portico --bench router
	$(CARGO) bench -p portico --bench graphql
	$(CARGO) bench -p portico --bench otlp
	$(CARGO) bench -p portico-plugins --bench jwt
	$(CARGO) bench -p portico-plugins --bench rate_limit

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the whole workspace with rustfmt
	$(CARGO) fmt --all

clean: ## remove build output (target/)
	$(CARGO) clean

deps:
	@scripts/ensure-deps.sh
