# Set-up and main jobs. Override the interpreter with `make PYTHON=/path/to/python3.12`.
PYTHON ?= $(shell scripts/find_python.sh)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench shapes clean

install: $(STAMP)

# One venv with every pinned dependency CI installs (requirements/ci.txt) and the package itself.
$(STAMP): pyproject.toml requirements/ci.txt
	@test -n "$(PYTHON)" || { echo "No Python 3.12 found: run 'make PYTHON=/path/to/python3.12 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==26.3
	$(BIN)/python -m pip install -r requirements/ci.txt
	$(BIN)/python -m pip install --no-deps -e .
	touch $(STAMP)

# Main job: small offline dataset, PaiNN trained with spktrain using MSE and the energy loss for the
# same number of optimiser steps, side-by-side test metrics and a plot (demo_out/schnetpack/). A few minutes on 2 cores.
demo: $(STAMP)
	$(BIN)/python examples/schnetpack/demo.py --out demo_out/schnetpack --steps 400 --molecules 120

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The linter CI runs (rules in pyproject.toml [tool.ruff]).
lint: $(STAMP)
	$(BIN)/ruff check .

# The paper's regular-polygon experiment (SPEC §5): MSE, Kabsch, energy and rigid-sparse energy.
shapes: $(STAMP)
	$(BIN)/python examples/shapes/shapes.py --out demo_out/shapes

# Three runs: the README quotes median [min-max] and calls a target met only if every run meets it.
bench: $(STAMP)
	$(BIN)/python benchmarks/loss_cost.py --runs 3

clean:
	rm -rf $(VENV) build *.egg-info
