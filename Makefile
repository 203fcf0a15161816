# edgekit developer entry points. Every target makes its own virtual environment (.venv) first.
#   make demo    run the main job end to end on embedded defaults
#   make test    run the test suite (installs the Debian packages the integration tests use, when root)
#   make bench   run every benchmark under hil/ and write bench/results.json + bench/RESULTS.md
#   make chaos   the long version of the chaos suite (a short version of each scenario runs in make test)

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgekit-installed
PYTEST_ARGS ?=

.PHONY: install system-deps demo test lint bench chaos clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# compat: the clone itself goes on sys.path, so `python -m examples.…` works from any folder
	$(PY) -m pip install -q -c constraints.txt -e ".[all,dev]" --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

system-deps:
	bash .ci/system-deps

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: $(STAMP) system-deps lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m hil.bench_all

chaos: $(STAMP) system-deps
	EDGEKIT_CHAOS_LONG=1 $(PY) -m pytest -m chaos tests/chaos -q -rxs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo-out
