# The two commands of the README, plus their pieces.
#   make run    set up, build, and start profilerd with its defaults (needs root)
#   make test   set up, then run every check CI runs (the BPF tests need root)

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup build run test lint unit

setup:
	./.ci/setup

build: setup
	$(CARGO) build --release --bins

run: build
	$(SUDO) ./target/release/profilerd

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# nextest prints one summary line for the whole run; plain cargo test is the fallback.
test: lint
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --no-fail-fast; \
	else \
		$(CARGO) test; \
	fi
