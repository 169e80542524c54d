# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
SHARED_MOVIELENS := $(abspath ../shared/data/ml-100k)
export MOVIELENS_DIR ?= $(if $(wildcard $(SHARED_MOVIELENS)/u.data),$(SHARED_MOVIELENS),)

.PHONY: setup demo test lint protos clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	VENV=$(VENV) scripts/demo.sh

# Lint and type-check first: a ruff or mypy finding fails the test command (and CI) in seconds.
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

protos: setup
	$(VENV)/bin/python protos/generate.py

clean:
	rm -rf runs build *.egg-info
