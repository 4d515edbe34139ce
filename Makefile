# The two commands of the README. Both bootstrap .venv from a clean clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/openprod serve

test: $(STAMP)
	$(BIN)/ruff check openprod actors tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/core.py
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/scripts.py
	$(BIN)/python bench/blobs.py
	$(BIN)/python bench/ui.py

clean:
	rm -rf $(VENV)
