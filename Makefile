# make demo: set up .venv, install, run the whole pipeline on an embedded local Ray with the synthetic web.
# make test: set up .venv, install, run the test suite.
# make fashion-data: install the fashion world's photos (Debian's dataset-fashion-mnist; benches on that world need it).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test lint bench clean-demo fashion-data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	NO_ALBUMENTATIONS_UPDATE=1 $(BIN)/winnow run configs/demo.yaml

# Two test files at a time (pytest-xdist, one file per worker so module fixtures are built once), the longest files
# first (tests/conftest.py's LONGEST_FIRST; --no-loadscope-reorder keeps that order). Three workers were no faster
# (18:35 vs 18:22 on 2 cores, 2026-12-08): the suite keeps both cores busy.
test: $(STAMP)
	NO_ALBUMENTATIONS_UPDATE=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

# A no-op when installed; otherwise apt-get (as root, or through sudo when there is one).
FASHION_DIR := /usr/share/datasets/fashion-mnist
fashion-data:
	@test -e $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz && echo "fashion-data: $(FASHION_DIR) is installed" || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y dataset-fashion-mnist || { $$SUDO apt-get update && \
	    $$SUDO apt-get install -y dataset-fashion-mnist; }; }

clean-demo:
	rm -rf runs/demo
