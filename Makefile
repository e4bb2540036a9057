# `make demo` and `make test` work from a fresh clone: they create .venv,
# install the project with pinned versions, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench photos fashion-mnist clean

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

# Fashion-MNIST's four IDX files from the Debian/Ubuntu package (in /usr/share/datasets/fashion-mnist, where
# --dataset fashion_mnist looks without --data-root); elsewhere, say what to install or where to point --data-root
FASHION_MNIST := /usr/share/datasets/fashion-mnist
fashion-mnist:
	@if [ -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST is in $(FASHION_MNIST)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q dataset-fashion-mnist || { apt-get update -q && apt-get install -y -q dataset-fashion-mnist; }; \
	else echo "Fashion-MNIST is not installed: run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu), or put" \
		"its train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-*.gz in a folder and pass --data-root DIR"; \
		exit 1; fi

bench: $(STAMP)
	$(BIN)/python benchmarks/loss_speed.py
	$(BIN)/python benchmarks/input_pipeline.py --png
	$(BIN)/python benchmarks/train_speed.py

clean:
	rm -rf $(VENV) runs demo-runs .pytest_cache
