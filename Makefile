# vistas: `make demo` trains the default preset; `make test` runs the whole test suite.
# Both create the virtual environment (.venv) and install vistas with the exact dependencies
# of constraints.txt when needed, and make sure Fashion-MNIST is present. `make test-latest`
# runs a fast part of the suite on the newest JAX, Flax, optax and orbax releases PyPI has
# (a second environment, .venv-latest); `make lock` rewrites constraints.txt from the
# newest versions pyproject.toml's ranges allow.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.vistas-installed
WORKDIR ?= runs/demo

LATEST := .venv-latest
# models, optimizers, one end-to-end training and its exact resume, the Task interface
LATEST_TESTS := tests/test_models.py tests/test_optim_builder.py tests/test_optim_adafactor.py \
	tests/test_tasks.py tests/test_train.py::test_stop_after_then_resume_is_exact
UPSTREAM := jax jaxlib flax optax orbax-checkpoint

.PHONY: install data demo test test-latest lock lint clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "vistas needs Python 3.11 or newer; set PYTHON=python3.11 (or newer)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

data: install
	$(BIN)/vistas data fetch fashion_mnist
	$(BIN)/vistas data fetch animal_silhouettes

demo: data
	$(BIN)/vistas train --preset fashion_mnist_vit --workdir $(WORKDIR)

test: data
	$(BIN)/python -m pytest

test-latest: data
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade -e '.[dev]'
	$(LATEST)/bin/python -m pip install --quiet --upgrade $(UPSTREAM)
	$(LATEST)/bin/python -c 'import importlib.metadata as m; print("newest releases:", ", ".join(f"{p} {m.version(p)}" for p in "$(UPSTREAM)".split()))'
	$(LATEST)/bin/python -m pytest $(LATEST_TESTS)

lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[dev]'
	{ echo "# The exact set of packages \`make install\` installs (pip constraints: \`pip install -c constraints.txt\`)."; \
	  echo "# pyproject.toml holds the compatible ranges; regenerate this file with \`make lock\` after changing them."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^#\|^-e'; } > constraints.txt
	rm -rf .venv-lock

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(LATEST) runs build *.egg-info
