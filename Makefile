# make demo: set up .venv, install, run the whole pipeline on an embedded local Ray with the synthetic web.
# make test: set up .venv, install, run the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test lint bench clean-demo

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	NO_ALBUMENTATIONS_UPDATE=1 $(BIN)/winnow run configs/demo.yaml

test: $(STAMP)
	NO_ALBUMENTATIONS_UPDATE=1 $(BIN)/python -m pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean-demo:
	rm -rf runs/demo
