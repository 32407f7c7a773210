# The two commands of the README's Quick start: `make demo` and `make test`.
# Each builds the local virtual environment .venv from nothing when it is missing
# or older than pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch that lies on this machine's disk; extras ask only torch>=2.4,
# so pinning it first keeps pip from fetching a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= test,docs,demo,jax,torch,cupy

.PHONY: demo figures test test-fast docs venv clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_PIN)"
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) experiments/demo.py

# The Theory page's figures (docs/assets/theory_*.png), in well under a minute.
figures: venv
	$(PY) experiments/theory_figures.py

test: venv
	$(PY) -m pytest
	$(PY) -m mkdocs build --strict --site-dir build/site

test-fast: venv
	$(PY) -m pytest -x -q

docs: venv
	$(PY) -m mkdocs build --strict --site-dir build/site

clean:
	rm -rf $(VENV) build site .pytest_cache .hypothesis
