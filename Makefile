# Set-up is part of each target: a fresh machine needs only Python 3.10+ and make.
# torch is pinned first: an unpinned torch would pull a multi-GB CUDA build. With a GPU,
# install the torch build for your CUDA first (see README), then run these targets.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: demo test lint docs benchmark

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,eval,docs]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/scarkids demo --output_dir demo_output

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks main.py
	$(VENV)/bin/ruff format --check src tests benchmarks main.py

# the documentation, with its tutorial executed; warnings are errors
docs: $(VENV)/.installed
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

test: lint docs
	$(PY) -m pytest

$(VENV)/.benchmark: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[benchmark]"
	touch $@

benchmark: $(VENV)/.benchmark
	$(PY) benchmarks/integration.py
