# Every target installs what it needs first (scripts/setup.sh is idempotent and quick when
# nothing is missing), so a fresh Debian/Ubuntu machine needs nothing done by hand.
VENV ?= .venv
PY := $(VENV)/bin/python
# Test workers (pytest-xdist), each with a stack of its own: the suite mostly waits on
# encodes and services, so two share two cores well. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup up down status demo test test-fast lint bench clean

setup:
	@scripts/setup.sh

up: setup
	@$(PY) -m localfaas up

down:
	@if [ -x $(PY) ]; then $(PY) -m localfaas down; fi

status: setup
	@$(PY) -m localfaas status

demo: setup
	@$(PY) -m localfaas up
	@$(PY) scripts/demo.py

lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy vtp vtp_cli localfaas functions/ws-relay/vtp_relay
	@for f in functions/*/handler.py; do $(VENV)/bin/mypy --no-error-summary $$f || exit 1; done

# The browser tests need the OS's Chromium: the test target asks setup for it.
test:
	@VTP_WITH_BROWSER=1 scripts/setup.sh
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy vtp vtp_cli localfaas functions/ws-relay/vtp_relay
	@for f in functions/*/handler.py; do $(VENV)/bin/mypy --no-error-summary $$f || exit 1; done
	@$(PYTEST)

test-fast: setup
	@$(PYTEST) -m "not slow"

# Each benchmark starts a stack of its own, so `make up` is neither needed nor disturbed.
bench: setup
	@$(PY) bench/report.py $(ARGS)

clean:
	@if [ -x $(PY) ]; then $(PY) -m localfaas clean; fi
	rm -rf build test-artifacts
