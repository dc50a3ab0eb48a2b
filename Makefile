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
PREFIX ?= /usr/local
DESTDIR ?=
SDK_OUT := build/sdk

.PHONY: all deps build build-asan build-fuzz run test test-unit test-unit-asan test-integration test-asan \
        test-js test-sdk-js test-sdk-py fuzz bench bench-cluster report clean help \
        install sdk test-operations test-browser test-sdk-packages

all: build

help:
	@echo "make run     install what is missing, build, start on 127.0.0.1:$(PORT) with data in $(DATA)"
	@echo "make test    install, build, run every test suite (unit, integration, ASan, JS, SDKs, fuzz)"
	@echo "make bench   load benchmarks (JSON under bench/results/)"
	@echo "make bench-cluster  cross-node fan-out latency, two nodes sharing a Redis (bench/results/)"
	@echo "make report  tests + benchmarks -> docs/verification/websocket-synapse-validation-report.md"
	@echo "make fuzz    each libFuzzer target for FUZZ_SECONDS (default 30)"
	@echo "make sdk     the npm tarball and the Python wheel of the SDKs, in $(SDK_OUT)/"
	@echo "make install binary, systemd unit and example config under DESTDIR/PREFIX (default /usr/local)"

deps:
	@./scripts/install-deps

# Configured again when the presets change (a cache made by an older preset
# keeps its old options otherwise).
$(BUILD)/build.ninja: CMakePresets.json
	cmake --preset release

build: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j$(JOBS)

$(ASAN_BUILD)/build.ninja: CMakePresets.json
	cmake --preset debug

# The sanitizer build: the server (integration-asan) and the unit tests (unit-asan).
build-asan: deps $(ASAN_BUILD)/build.ninja
	cmake --build $(ASAN_BUILD) -j$(JOBS) --target synapse synapse_unit_tests

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

test-unit-asan: build-asan
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir $(ASAN_BUILD) --output-on-failure -E '^layers\.'

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

# The SDKs as files a fresh project installs (README of each SDK):
# build/sdk/mimo-synapse-<v>.tgz and build/sdk/mimo_synapse-<v>-py3-none-any.whl.
sdk:
	@mkdir -p $(SDK_OUT)
	cd clients/js && npm pack --silent --pack-destination ../../$(SDK_OUT) >/dev/null
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir $(SDK_OUT) ./clients/python
	@rm -rf clients/python/build clients/python/*.egg-info
	@ls -1 $(SDK_OUT)

# Files go under $(DESTDIR)$(PREFIX); the unit and defaults under $(DESTDIR)/etc
# only when PREFIX is /usr (a packaged install), else under $(PREFIX)/share.
install: deps $(BUILD)/build.ninja
	cmake --build $(BUILD) -j$(JOBS) --target synapse
	install -D -m 0755 $(BUILD)/synapse $(DESTDIR)$(PREFIX)/bin/synapse
	install -D -m 0644 packaging/synapse.service $(DESTDIR)$(PREFIX)/lib/systemd/system/synapse.service
	sed -i 's|^ExecStart=/usr/bin/synapse|ExecStart=$(PREFIX)/bin/synapse|' $(DESTDIR)$(PREFIX)/lib/systemd/system/synapse.service
	install -D -m 0644 config/synapse.example.toml $(DESTDIR)$(PREFIX)/share/synapse/synapse.example.toml
	install -D -m 0644 packaging/synapse.default $(DESTDIR)$(PREFIX)/share/synapse/synapse.default
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/synapse/README.md

test-operations: build
	$(PY) -m pytest tests/integration/test_operations.py -q

test-sdk-packages: build
	$(PY) -m pytest tests/integration/test_sdk_packages.py -q

test-browser: build
	node --test tests/browser/

clean:
	rm -rf build
