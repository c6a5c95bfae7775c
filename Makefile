# The two commands: `make run` and `make test`. Both create and use .venv themselves.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint unit bench bench-dashboard install clean chromium

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
test: $(STAMP) lint chromium
	DASHBOARD_CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q

## chromium: Debian's chromium for the dashboard's browser tests (Playwright drives it; no
##      browser download). Installed when missing and root; on CI (CI=true) missing is an error.
CHROMIUM ?= /usr/bin/chromium
chromium:
	@[ -x $(CHROMIUM) ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -q && apt-get install -y -q chromium; } || true
	@[ -x $(CHROMIUM) ] || { \
		if [ "$$CI" = true ]; then echo "$(CHROMIUM) is required on CI: apt-get install chromium"; exit 1; \
		else echo "$(CHROMIUM) is missing: the dashboard's browser tests will skip"; fi; }

## bench-dashboard: every dashboard page's render time over 1,000,000 ledger rows
bench-dashboard: $(STAMP)
	$(PY) bench/dashboard.py $(BENCH_ARGS)

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
