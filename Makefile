# `make demo` and `make test` work from a fresh clone: they create .venv,
# install the project with pinned versions, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench photos clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,lint]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m amcl.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# the quick subset: everything but the end-to-end tests marked slow (pyproject.toml)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

# ruff (lint and import order) over the tree, mypy over the typed lower layers (see pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks studies
	$(BIN)/mypy

# the real-photo folder of docs/results.md: patches of scikit-image's, scikit-learn's and matplotlib's sample photos
photos: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[study]'
	test -d data/photos/train || $(BIN)/python -m amcl.data.photos --out data/photos

bench: $(STAMP)
	$(BIN)/python benchmarks/loss_speed.py
	$(BIN)/python benchmarks/input_pipeline.py --png
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf $(VENV) runs demo-runs .pytest_cache
