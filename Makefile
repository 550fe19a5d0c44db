# minimoe: the two commands of the README are `make course` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
COLAB_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python) $(shell command -v python3.12))
COLAB_VENV ?= .venv-colab
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
# The unit tests include expert parallelism on 8 simulated CPU devices (tests/test_parallel.py);
# tests/conftest.py sets the same flag, so a plain `pytest` runs them too.
DEVICES := XLA_FLAGS=--xla_force_host_platform_device_count=8
# XLA's compiled programs are kept in .jax_cache and reused by every later process of the same
# stack and flags (the notebooks compile many of the same programs; a second run compiles little).
# The key holds the jax version and XLA_FLAGS, so the AVX2 run and the Colab stack never reuse
# the pinned stack's programs; a cached program is the same binary, so the numbers are the same.
CACHE := JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.5
# The unit tests run in two processes (pytest-xdist): XLA compiles one program at a time on one
# core, so one process compiles while the other computes (about 5½ instead of 8½ minutes from a
# clean clone on a 2-core machine). nbval stays in one process: notebook 07 asserts timings.
UNIT_JOBS ?= 2
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg --nbval-cell-timeout=600

.PHONY: course install test unit nbval nbval-other-cpu notebooks colab-check bench lock clean

$(BIN)/.installed: requirements-lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-lock.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(BIN)/.installed  ## the pinned stack in .venv

course: install  ## install everything and open the course in JupyterLab
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)  # root: e.g. a container

test: install  ## the whole suite: unit tests, then nbval over every notebook
	$(CACHE) $(DEVICES) $(BIN)/python -m pytest -n $(UNIT_JOBS) tests
	$(CACHE) $(BIN)/python -m pytest $(NBVAL) $(NOTEBOOKS)

unit: install
	$(CACHE) $(DEVICES) $(BIN)/python -m pytest -n $(UNIT_JOBS) tests

nbval: install
	$(CACHE) $(BIN)/python -m pytest $(NBVAL) $(NOTEBOOKS)

# Stored outputs must not depend on the CPU they were made on. XLA compiles for the host's vector
# instructions, so another CPU rounds a training run differently. Limiting XLA to AVX2 on an
# AVX-512 machine gives that other rounding here: nbval once more, and a stored number that
# depends on it fails now rather than on a learner's machine (on a CPU without AVX-512 this
# repeats `make nbval`).
nbval-other-cpu: install  ## nbval again, with XLA's CPU code limited to AVX2
	$(CACHE) XLA_FLAGS=--xla_cpu_max_isa=AVX2 $(BIN)/python -m pytest $(NBVAL) $(NOTEBOOKS)

notebooks: install  ## re-execute every notebook in place: how stored outputs are refreshed
	$(BIN)/python tools/execute_notebooks.py --record-runtimes $(NOTEBOOKS)
	$(BIN)/python tools/runtimes.py
	$(BIN)/python tools/export_figures.py

colab-check:  ## unit tests + every notebook executed (no output comparison) on Colab's stack
	@test -n "$(COLAB_PYTHON)" || (echo "colab-check needs Python 3.12 (set COLAB_PYTHON)"; exit 1)
	$(COLAB_PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_VENV)/bin/pip install -q --upgrade pip
	$(COLAB_VENV)/bin/pip install -q -r requirements-colab.txt
	$(COLAB_VENV)/bin/pip install -q --no-deps -e .
	$(COLAB_VENV)/bin/python -c "import jax, flax, optax; print('Colab stack:', jax.__version__, flax.__version__, optax.__version__)"
	$(CACHE) $(DEVICES) $(COLAB_VENV)/bin/python -m pytest -n $(UNIT_JOBS) tests
	$(CACHE) $(COLAB_VENV)/bin/python -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=600 $(NOTEBOOKS)

bench: install  ## the performance benchmark (prints a table)
	$(BIN)/python -m minimoe.bench

lock: install
	$(BIN)/pip freeze --exclude-editable | grep -v minimoe > requirements-lock.tmp
	(echo "# The exact stack stored notebook outputs are generated and checked with (Python 3.11)."; \
	 echo "# Regenerate: make lock"; cat requirements-lock.tmp) > requirements-lock.txt; rm requirements-lock.tmp

clean:
	rm -rf $(VENV) $(COLAB_VENV) .jax_cache
