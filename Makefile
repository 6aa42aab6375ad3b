# symbiote: `make run` and `make test` do the whole set-up on a fresh Debian machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
DATA_DIR ?= $(CURDIR)/.data
LOG_LEVEL ?= warning

.PHONY: install system-deps run test lint typecheck pytest bench clean

# bubblewrap, prlimit: the sandbox; chromium: the phone page tests; libsodium: fast signature checks;
# espeak-ng: speech for the voice tests and benchmark
system-deps:
	@missing=""; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v prlimit >/dev/null || missing="$$missing util-linux"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	ldconfig -p | grep -q libsodium || missing="$$missing libsodium23"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: system-deps $(STAMP)

# Starts the embedded nats-server and PostgreSQL, runs a short demo, and stays up (Ctrl-C stops everything).
run: install
	SYMBIOTE_DATA_DIR=$(DATA_DIR) $(VENV)/bin/symbiote up --demo --log-level $(LOG_LEVEL)

lint: install
	$(VENV)/bin/ruff check symbiote tests bench
	$(VENV)/bin/ruff format --check symbiote tests bench

typecheck: install
	$(VENV)/bin/mypy

pytest: install
	$(VENV)/bin/pytest

test: lint typecheck pytest

bench: install
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache test-artifacts
