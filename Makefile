# The two commands of the README: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-slow lint clean

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) -m harness.sweep sweeps/tiny.yaml

test: setup
	bash scripts/setup_browser.sh
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

lint: setup
	$(VENV)/bin/ruff check harness tests benchmarks scripts

clean:
	rm -rf $(VENV) work
