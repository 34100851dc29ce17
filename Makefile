# bonect: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint setup

# The environment: a virtual environment with bonect installed in editable mode.
$(BIN)/bonect: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(BIN)/bonect

## demo: the main job on its defaults (phantom -> synthetic CT -> montage and metrics)
demo: setup
	$(BIN)/bonect demo

## test: install the real peers (DCMTK, dicom3tools, Orthanc), lint, type-check, run the suite
test: setup
	scripts/install-system-deps
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports
