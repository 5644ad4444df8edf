# The two commands of the README's quick start are `make demo` and `make test`.
# Both set up the virtualenv first (idempotent: re-run only when pyproject.toml changes).
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Pinned and installed first: the CPU wheel of this machine. An unpinned torch would pull a
# multi-GB CUDA build. GPU users: `make setup TORCH=torch` after installing CUDA torch.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup demo test lint bench pretrain clean services

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,plots]"
	touch $@

demo: setup
	$(VENV)/bin/prae run configs/demo.yaml

test: setup services
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

# Services the tests start for real: Prometheus (the engine's metrics scraped and queried)
# and Chromium (the HTML report rendered). Debian's packages are installed for the commands
# missing from PATH when apt-get can run as root; nothing is started here (each test starts
# its own, on free ports, and stops it).
SERVICES := prometheus:prometheus chromium:chromium
services:
	@missing=""; for pair in $(SERVICES); do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; done; \
	[ -z "$$missing" ] && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages for the tests:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends $$missing >/dev/null \
	    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; }; \
	else \
	  echo "the tests need these on PATH:$$missing (apt-get install$$missing, as root)" >&2; exit 1; \
	fi

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/backtest_speed.py
	$(PY) bench/telemetry_overhead.py

pretrain: setup
	$(PY) -m train.pretrain --out prae/checkpoints/pretrained.pt

clean:
	rm -rf prae_runs .pytest_cache
