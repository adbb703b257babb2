# pyflannel: `make demo` runs the lab demo, `make test` the whole test suite (both as root;
# both install what is missing first).
VENV ?= .venv
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: setup demo test unit lint install clean

PREFIX ?= /usr/local
DESTDIR ?=

setup:
	@./scripts/setup.sh

demo: setup
	$(VENV)/bin/flannelctl lab demo $(DEMO_ARGS)

test: setup lint
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

unit: setup
	$(VENV)/bin/python -m pytest -q tests/unit

lint: setup
	$(VENV)/bin/ruff check src tests bench

install:
	PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) ./scripts/install.sh

clean:
	rm -rf $(VENV) build src/*.egg-info
