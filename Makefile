# A thin Makefile: each target is one step. `make test` and `make demo` set everything up themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint bench chaos demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet --upgrade pip && $(BIN)/pip install --quiet -e '.[dev]' && touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench && $(BIN)/mypy --strict src && $(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python bench/supervisor.py && $(BIN)/python bench/delivery.py && $(BIN)/python bench/subscribers_import.py && $(BIN)/python bench/graceful_stop.py

chaos: $(STAMP)
	$(BIN)/python bench/chaos.py $(ARGS) && MAILMAN_INTERLEAVING_STEPS=$(or $(STEPS),200) MAILMAN_INTERLEAVING_SEEDS=$(or $(SEEDS),$$(shuf -i 1-999999 -n 5 | paste -sd,)) $(BIN)/python -m pytest -p no:randomly -s tests/services/delivery/test_interleavings_property.py

demo: $(STAMP)
	$(BIN)/mailman demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
