"""llama.cpp through llama-cpp-python (built from its sdist for this CPU, runtime/bench/peers/envs.py)
on the GGUF itself: greedy decoding and its prompt-lookup drafting (LlamaPromptLookupDecoding).

Prompts go in as token ids (no tokenizer of llama.cpp's in the loop), each generation starts from an
empty KV cache (no prefix reuse across prompts) and stops at the engine's stop ids or max new tokens.
llama_cpp is imported here only.
"""

from __future__ import annotations

from typing import Any, Callable

from talon_rt.runtime.bench.peers import PeerUnavailable
from talon_rt.runtime.bench.peers.envs import LLAMA_CPP_BUILD_JOBS, LLAMA_CPP_CMAKE_ARGS

PROMPT_LOOKUP = {"max_ngram_size": 2, "num_pred_tokens": 10}  # LlamaPromptLookupDecoding's defaults
CTX_MARGIN = 64  # KV rows beyond the longest prompt + max new tokens: a draft may run past the end


def generate_ids(llm: Any, ids: list[int], max_new_tokens: int, stop_ids: frozenset[int]) -> list[int]:
    """Greedy tokens after `ids`, the stop token included (as talon-rt's output), from an empty cache."""
    llm.reset()
    new: list[int] = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=False):
        new.append(int(tok))
        if tok in stop_ids or len(new) >= max_new_tokens:
            break
    return new


def open_peer(job: dict) -> tuple[Callable[[list[int], int], tuple[list[int], int | None]], dict[str, Any]]:
    try:
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
    except ImportError as e:
        raise PeerUnavailable(f"llama-cpp-python not installed ({e.name})") from None
    if not job.get("gguf"):
        raise PeerUnavailable("no --gguf given (the GGUF the engine was exported from)")
    mode, threads = job["mode"], job["threads"]
    if mode not in ("greedy", "prompt_lookup"):
        raise PeerUnavailable(f"unknown llama.cpp mode {mode!r}")
    n_ctx = max(len(p["ids"]) for p in job["prompts"]) + job["max_new_tokens"] + CTX_MARGIN
    draft = LlamaPromptLookupDecoding(**PROMPT_LOOKUP) if mode == "prompt_lookup" else None
    llm = llama_cpp.Llama(model_path=job["gguf"], n_ctx=n_ctx, n_batch=min(n_ctx, 512), n_threads=threads,
                          n_threads_batch=threads, draft_model=draft, verbose=False)
    stop = frozenset(job.get("stop_ids") or [llm.token_eos()])
    calls = [0]
    evaluate = llm.eval

    def counted_eval(tokens):  # one llama_decode per call here: prompts fit in one n_batch
        calls[0] += 1
        return evaluate(tokens)

    llm.eval = counted_eval

    def generate(ids: list[int], max_new_tokens: int) -> tuple[list[int], int | None]:
        calls[0] = 0
        return generate_ids(llm, ids, max_new_tokens, stop), calls[0]

    detail = {"llama-cpp-python": llama_cpp.__version__, "gguf": job["gguf"], "cmake_args": LLAMA_CPP_CMAKE_ARGS,
              "build_jobs": LLAMA_CPP_BUILD_JOBS, "n_threads": threads, "n_threads_batch": threads,
              "n_ctx": n_ctx, "n_batch": min(n_ctx, 512),
              "prompt_lookup": PROMPT_LOOKUP if draft else None,
              "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}
    return generate, detail
