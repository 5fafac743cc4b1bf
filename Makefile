# Setup, demo and tests on a fresh machine. Every install goes through constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-geoseg
export NO_ALBUMENTATIONS_UPDATE := 1
# stage packages checked with mypy --strict
STRICT := geoseg/tile geoseg/train geoseg/predict geoseg/backends geoseg/export geoseg/pipeline geoseg/search

.PHONY: install demo test test-fast lint bench gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## The main job on the bundled sample: tile -> train (short) -> predict -> evaluate,
## writing outputs/demo/{buildings.gpkg,quicklook.png,evaluation.json}.
demo: install
	$(BIN)/geoseg run pipelines/kampala.yaml

## Lint (ruff + mypy), then the whole test suite (what CI runs), one pytest-xdist worker per
## core (at most 4; a module's tests stay on one worker, with its fixtures).
XDIST := -n auto --maxprocesses 4 --dist loadfile
test: lint
	$(BIN)/python -m pytest -q $(XDIST)

test-fast: install
	$(BIN)/python -m pytest -q $(XDIST) -m "not slow"

lint: install
	$(BIN)/ruff check geoseg tests bench notebooks
	$(BIN)/mypy
	$(BIN)/mypy --strict --follow-imports=silent $(STRICT)

bench: install
	$(BIN)/python bench/tile.py
	$(BIN)/python bench/routed_forward.py
	$(BIN)/python bench/predict.py
	$(BIN)/python bench/evaluate.py

## Everything that needs CUDA, one JSON report (<= 8 min on one H100/H200; skips what is missing).
## --model-epochs 8: predict's figures come from a model that finds the generated boxes.
gpu-check:
	bash bench/gpu_check.sh outputs/gpu-check.json --model-epochs 8

clean:
	rm -rf outputs .pytest_cache
