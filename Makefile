# Two commands on a fresh machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 3000

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: install, then run the main job on the built-in synthetic shop (make demo PORT=3100)
demo: $(STAMP)
	$(BIN)/nextbest demo --port $(PORT)

## test: install, then run the whole test suite (two processes, each test file in one of them)
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check features training serving tests bench

## bench: data, recommender, propensity, command-line, KPI, experiment and journey benchmarks; see docs/benchmarks.md
bench: $(STAMP)
	$(BIN)/python bench/bench_cli.py
	$(BIN)/python bench/bench_data.py
	$(BIN)/python bench/bench_recommenders.py
	$(BIN)/python bench/bench_propensity.py
	$(BIN)/python bench/bench_kpis.py
	$(BIN)/python bench/bench_experiments.py
	$(BIN)/python bench/bench_journeys.py
	$(BIN)/python bench/bench_aa.py
	$(BIN)/python bench/bench_aa_simulated.py
	$(BIN)/python bench/bench_interleaving.py

clean:
	rm -rf $(VENV) .nextbest .pytest_cache
