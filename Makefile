# pyflannel: `make demo` runs the lab demo, `make test` the whole test suite (both as root;
# both install what is missing first). `make bench` runs the benchmark suite (bench/README.md; not
# part of `make test`). `make soak` runs the chaos soak (README: Chaos soak; SOAK_ARGS=--minutes N --seed S
# --backend udp|vxlan|host-gw|wireguard). `make deb` builds the Debian package (build/pyflannel_*.deb; README: Install).
VENV ?= .venv
PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?=
SOAK_ARGS ?=

.PHONY: setup demo test unit lint install deb clean bench soak

PREFIX ?= /usr/local
DESTDIR ?=
DEB_VERSION ?=
DEB_OUT ?= build

setup:
	@./scripts/setup.sh

demo: setup
	$(VENV)/bin/flannelctl lab demo $(DEMO_ARGS)

test: setup lint
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=30 $(PYTEST_ARGS) tests

unit: setup
	$(VENV)/bin/python -m pytest -q tests/unit

lint: setup
	$(VENV)/bin/ruff check src tests bench

bench: setup
	@if [ ! -f $(VENV)/.pyflannel-bench-installed ] || [ pyproject.toml -nt $(VENV)/.pyflannel-bench-installed ]; then \
		$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[bench]' && touch $(VENV)/.pyflannel-bench-installed; fi
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

soak: setup
	$(VENV)/bin/python -m pyflannel.lab.soak $(SOAK_ARGS)

install:
	PREFIX=$(PREFIX) DESTDIR=$(DESTDIR) ./scripts/install.sh

deb:
	DEB_VERSION=$(DEB_VERSION) DEB_OUT=$(DEB_OUT) ./scripts/deb.sh

clean:
	rm -rf $(VENV) build src/*.egg-info
