# Set-up is part of every target: a fresh clone needs only `make quickstart` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: quickstart test lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned: this takes the CPU build from local disk; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,serve,demo,zh,plots,experiments]'
	touch $(STAMP)
	@echo "installed $(VENV)/bin/bertkit; to call it as bertkit: source $(VENV)/bin/activate"

quickstart: $(STAMP)
	$(VENV)/bin/bertkit quickstart

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check src tests experiments benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
