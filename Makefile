# Two commands on a fresh machine: `make run` and `make test`.
# Every target (re)creates .venv when it is missing or older than pyproject.toml / constraints.txt.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# One OpenMP thread per process: measured 2026-12-07 on this project's 2-core machine while it was
# shared (load 16-20), a digits_joint training step took 0.48-0.87 s with 1 thread and 11.8-26.1 s
# with 2 (the threads spin-wait for cores that others hold); every CPU command here runs one thread.
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
# DS_ACCELERATOR is left to the user: `make run` trains the embedded default on CPU unless it is set,
# `make test` runs on CPU; nothing else is pinned (a GPU run started from make would use the GPU).
export DS_BUILD_OPS := 0
export DS_BUILD_SHM_COMM := 0
export PYTHONUNBUFFERED := 1

.PHONY: run test test-fast lint bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e '.[test,dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/lzn shards digits data/digits
	# one rank, one thread (see OMP_NUM_THREADS above)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH OMP_NUM_THREADS=1 DS_ACCELERATOR=$${DS_ACCELERATOR:-cpu} $(VENV)/bin/deepspeed --num_gpus 1 recipes/train.py --recipe digits_joint.yaml

# The tests on CPU with pytest's arguments $(1). pytest exits 5 when it collected nothing (or -m
# deselected everything): a failure of ours, reported as such.
define pytest
	OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu $(PY) -m pytest -q -p no:cacheprovider $(1); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make $@: no tests were collected" >&2; exit 1; fi; exit $$rc
endef

# every test: the integration tier (tests/e2e) and the slow ones included (CI: .ci/run)
test: $(STAMP)
	$(call pytest,)

# while you work: without tests/e2e (marked integration) and without the tests marked slow
test-fast: $(STAMP)
	$(call pytest,-m "not integration and not slow")

lint: $(STAMP)
	$(VENV)/bin/ruff check lzn_core plugins recipes tests benchmarks
	$(VENV)/bin/ruff format --check lzn_core plugins recipes tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/solver.py
	$(PY) benchmarks/digits.py --iterations 400 --reuse
	$(PY) benchmarks/batch_scaling.py --reuse
	$(PY) benchmarks/batch_dependence.py --reuse

clean:
	rm -rf $(VENV) runs data .pytest_cache
