# Two set-up-free entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Test files run in this many worker processes (pytest-xdist; 0: in one process). Most of a
# test's time is spent waiting on Ray, MLflow and subprocesses, so 2 workers fit 2 cores.
TEST_WORKERS ?= 2

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' \
		> $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	$(BIN)/python -c "import torch, torchvision, ray, mlflow, pyarrow"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/distinception train --recipe demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -P tests/run_suite.py -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/bench_data.py --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
