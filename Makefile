# Two commands set everything up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# A pinned CPU build of torch by default; override for CUDA, e.g. make demo TORCH_SPEC='torch==2.5.1'
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: install install-dev demo test check lint format bench fixtures clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[plot]"
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(PIP) install -e ".[dev]"
	@touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	@bash fixtures/demo.sh "$(BIN)"

test: install-dev
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff format --check ncinspect tests bench fixtures
	$(BIN)/ruff check ncinspect tests bench fixtures
	$(BIN)/mypy ncinspect
	$(BIN)/lint-imports

format: install-dev
	$(BIN)/ruff format ncinspect tests bench fixtures
	$(BIN)/ruff check --fix ncinspect tests bench fixtures

check: lint test

bench: install-dev
	$(BIN)/python bench/run.py

fixtures: install-dev
	$(BIN)/python fixtures/make_fixtures.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
