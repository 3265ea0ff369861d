# Set-up and the two jobs a user runs. `make demo` and `make test` each set up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint wheel-check bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/fedpkt simulate

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

# The embedded default backbones are built once (cached) before the suite: e2e tests use them
# (the prose one: issue 18's recipe, tests/test_embedded.py).
test: setup lint
	$(BIN)/fedpkt backbone build --size tiny
	$(BIN)/fedpkt backbone build --size default
	$(BIN)/fedpkt backbone build --size default --recipe prose
	$(BIN)/python -m pytest -q
	$(MAKE) wheel-check

# The wheel as users install it: built, installed into a fresh venv outside the repository,
# then `fedpkt config show` and a tiny `fedpkt simulate` there (about 1.5 min; .ci/wheel_check).
wheel-check: setup
	.ci/wheel_check $(abspath $(BIN))/python

bench: setup
	$(BIN)/python bench/backbone_build.py --size default
	$(BIN)/python bench/phase1.py
	$(BIN)/python bench/on_device.py

clean:
	rm -rf $(VENV) runs .pytest_cache site
