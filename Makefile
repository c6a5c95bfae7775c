# The two commands: `make run` and `make test`. Both create and use .venv themselves.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint unit bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,gpu]'
	touch $(STAMP)

install: $(STAMP)

## run: start the gateway on its embedded defaults (embedded PostgreSQL, demo project and key,
##      a local fake provider when OPENAI_API_KEY is not set)
run: $(STAMP)
	$(PY) -m gateway serve --demo

## test: lint, type-check and run the whole suite (real PostgreSQL; see tests/conftest.py)
test: $(STAMP) lint
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check gateway tests bench
	$(PY) -m mypy

## bench: gateway overhead against the fake upstream and a bare aiohttp proxy, in one run
bench: $(STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q wrk >/dev/null; } \
		|| echo "wrk is not installed: using the slower Python load generator"
	$(PY) bench/overhead.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
