# vistas: `make demo` trains the default preset; `make test` runs the whole test suite.
# Both create the virtual environment (.venv) and install vistas with pinned dependencies
# when needed, and make sure Fashion-MNIST is present.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vistas-installed
WORKDIR ?= runs/demo

.PHONY: install data demo test lint clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "vistas needs Python 3.11 or newer; set PYTHON=python3.11 (or newer)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

data: install
	$(BIN)/vistas data fetch fashion_mnist
	$(BIN)/vistas data fetch animal_silhouettes

demo: data
	$(BIN)/vistas train --preset fashion_mnist_vit --workdir $(WORKDIR)

test: data
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs build *.egg-info
