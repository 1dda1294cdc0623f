# The two commands of the README, plus their pieces.
#   make run    set up, build, and start profilerd with its defaults (needs root)
#   make test   set up, then run every check CI runs (the BPF tests need root)
#   make bench  the peers benchmark, as root: rewrites BENCHMARKS.md (about 25 minutes)

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Prints a step's name with the time of day, so that a slow step shows in a CI log.
STEP = @echo "== $$(date -u +%H:%M:%S) $(1)"

.PHONY: setup setup-tests build run test test-ready build-tests build-lane setup-lane bench-build fuzz-build cross-aarch64-build lint unit check-deploy bench bench-smoke fuzz fuzz-long

setup:
	$(call STEP,setup)
	./.ci/setup

# What only the tests and benchmarks need (.ci/setup-tests): the test CPythons (3.9, 3.13 and a
# free-threaded 3.13 from Debian's sources; Debian's own 3.14 and 3.15 in a sid root), the
# browser test's Chromium and speedscope, a protobuf decoder and py-spy. make run does not wait
# for any of it.
setup-tests: setup
	$(call STEP,test setup)
	./.ci/setup-tests

build: setup
	$(CARGO) build --release --bins

run: build
	$(SUDO) ./target/release/profilerd

lint: setup
	$(call STEP,lint)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# The deployment artifacts: systemd-analyze verify, Kubernetes schemas, install.
check-deploy: setup
	$(call STEP,deployment checks)
	./.ci/check-deploy

# The test binaries, without running them.
build-tests: setup
	$(call STEP,building the tests)
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --no-run; \
	else \
		$(CARGO) test --no-run; \
	fi

# Everything the tests wait for, in two lanes that make test runs side by side (-j2), so that
# the downloads of the test setup overlap the builds. In one the lint and the builds of the
# tests, the benchmark and the fuzz targets; in the other the test setup, the deployment
# checks and the aarch64 build, each of which may install Debian packages (apt takes its lock
# without waiting, so they take turns). Within a lane one step at a time, each a make of its
# own whose output is printed whole when it ends.
test-ready: build-lane setup-lane

build-lane: setup
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory build-tests
	$(MAKE) --no-print-directory bench-build
	$(MAKE) --no-print-directory fuzz-build

setup-lane: setup
	$(MAKE) --no-print-directory setup-tests
	$(MAKE) --no-print-directory check-deploy
	$(MAKE) --no-print-directory cross-aarch64-build

bench-build: setup
	$(call STEP,benchmark build)
	$(CARGO) bench --profile dev -p profiler-daemon --bench peers --no-run

fuzz-build: setup
	$(call STEP,fuzz build)
	./.ci/fuzz --build-only

cross-aarch64-build: setup
	$(call STEP,aarch64 cross build)
	./.ci/cross-aarch64 --build-only

# nextest prints one summary line for the whole run; plain cargo test is the fallback.
# Then the fuzzing, the aarch64 unit tests and the smoke run of the benchmark harness, one
# after another: the tests compare sample counts with what their workloads did, so nothing
# else runs next to them. Each step starts with the time of day (see STEP).
test:
	$(MAKE) -j2 --output-sync=recurse test-ready
	$(call STEP,tests)
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --no-fail-fast; \
	else \
		$(CARGO) test; \
	fi
	$(call STEP,fuzzing)
	./.ci/fuzz
	$(call STEP,aarch64 unit tests)
	./.ci/cross-aarch64
	$(call STEP,benchmark smoke run)
	$(MAKE) bench-smoke
	$(call STEP,done)

# Every fuzz target for 30 s on its committed corpus (part of make test), or for an hour.
fuzz: setup
	./.ci/fuzz

fuzz-long: setup
	FUZZ_SECONDS=3600 ./.ci/fuzz

# The peers benchmark (profiler-daemon/benches/peers): profilerd next to py-spy and perf.
bench: setup-tests
	$(CARGO) bench -p profiler-daemon --bench peers

# A few seconds per case, into target/bench-smoke: checks that the harness runs and writes a
# well-formed report, never its timings. Built with the dev profile of the tests, so that CI
# does not build everything a second time.
bench-smoke: setup-tests
	mkdir -p target/bench-smoke
	$(CARGO) bench --profile dev -p profiler-daemon --bench peers -- --smoke --out $(CURDIR)/target/bench-smoke/BENCHMARKS.md

# Installs the release binaries, the systemd unit and the example config (deploy/install.sh).
#   sudo make install                  into the system (creates the profiler user and group)
#   make install DESTDIR=/tmp/stage    staged elsewhere; BIN_DIR=DIR installs other binaries
PREFIX ?= /usr/local
.PHONY: install
install: build
	$(if $(DESTDIR),,$(SUDO)) env DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" BIN_DIR="$(BIN_DIR)" ./deploy/install.sh

# Cross-compiles profilerd and profctl for aarch64 and runs the unit tests under qemu-user
# (.ci/cross-aarch64); builds into target/aarch64-build.
.PHONY: cross-aarch64
cross-aarch64: setup
	./.ci/cross-aarch64

# The Debian package (cargo-deb, pinned; metadata in profiler-daemon/Cargo.toml): the release
# binaries, the systemd unit, the example config and the service user; enables nothing.
# Writes target/debian/profiler_VERSION-1_ARCH.deb.
CARGO_DEB_VERSION := 3.8.0
.PHONY: deb
deb: build
	$(CARGO) deb --version 2>/dev/null | grep -qx 'cargo-deb $(CARGO_DEB_VERSION)' || \
		$(CARGO) install cargo-deb --version $(CARGO_DEB_VERSION) --locked
	$(CARGO) deb -p profiler-daemon --no-build

# The kernel matrix (.ci/kernel-matrix): Debian's kernels from 5.10 to sid's under QEMU, the
# package under systemd in a Debian guest, and trixie's arm64 kernel with the aarch64 build.
.PHONY: kernel-matrix
kernel-matrix: deb cross-aarch64
	$(call STEP,kernel matrix)
	./.ci/kernel-matrix
