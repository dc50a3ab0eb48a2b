# Synapse: the two commands a newcomer needs are `make run` and `make test`.
# Everything else here is what those two are made of.

SHELL := /bin/bash
PY := /usr/bin/python3
BUILD := build/release
ASAN_BUILD := build/debug
FUZZ_BUILD := build/fuzz
PORT ?= 4000
DATA ?= ./data
FUZZ_SECONDS ?= 30
JOBS ?= 2

.PHONY: all deps build build-asan build-fuzz run test test-unit test-integration test-asan \
        test-js test-sdk-js test-sdk-py fuzz bench bench-cluster report clean help

all: build

help:
	@echo "make run     install what is missing, build, start on 127.0.0.1:$(PORT) with data in $(DATA)"
	@echo "make test    install, build, run every test suite (unit, integration, ASan, JS, SDKs, fuzz)"
	@echo "make bench   load benchmarks (JSON under bench/results/)"
	@echo "make bench-cluster  cross-node fan-out latency, two nodes sharing a Redis (bench/results/)"
	@echo "make report  tests + benchmarks -> docs/verification/websocket-synapse-validation-report.md"
	@echo "make fuzz    each libFuzzer target for FUZZ_SECONDS (default 30)"

deps:
	@./scripts/install-deps

$(BUILD)/build.ninja:
	cmake --preset release

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j$(JOBS)

$(ASAN_BUILD)/build.ninja:
	cmake --preset debug

build-asan: deps $(ASAN_BUILD)/build.ninja
	cmake --build $(ASAN_BUILD) -j$(JOBS) --target synapse

$(FUZZ_BUILD)/build.ninja:
	cmake --preset fuzz

build-fuzz: deps $(FUZZ_BUILD)/build.ninja
	cmake --build $(FUZZ_BUILD) -j$(JOBS)

run: build
	$(BUILD)/synapse serve --bind 127.0.0.1 --port $(PORT) --data-dir $(DATA)

# Every suite runs even when an earlier one failed; the target fails if any did.
test: build build-asan
	@./scripts/run-tests

test-unit: build
	ctest --test-dir $(BUILD) --output-on-failure

test-integration: build
	$(PY) -m pytest tests/integration -q

test-asan: build-asan
	SYNAPSE_BIN=$(ASAN_BUILD)/synapse $(PY) -m pytest tests/integration -q -m "not slow"

test-js: build
	node --test tests/js/

test-sdk-js: build
	cd clients/js && node --test test/

test-sdk-py: build
	$(PY) -m pytest clients/python/tests -q

fuzz: build-fuzz
	@./scripts/run-fuzz $(FUZZ_SECONDS)

bench: build
	@./scripts/run-bench

# Two nodes sharing one Redis (started by the script): cross-node fan-out latency.
bench-cluster: build
	@./scripts/run-bench-cluster

report: build build-asan
	@./scripts/make-report

clean:
	rm -rf build
