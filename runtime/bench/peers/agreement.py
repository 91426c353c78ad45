"""Does a peer emit talon-rt's `ar` tokens on the same prompt ids?

For a peer that computes with the same fp32 weights as an fp32 engine (transformers, onnxruntime-
genai fp32), greedy output must match `ar` token for token, up to float near-ties: a check that the
weights and prompts really are the same. For one that does not (llama.cpp's 8-bit activations on the
GGUF's blocks, onnxruntime-genai int4, or any peer beside an int4/int8 engine) the count is recorded
but nothing is expected: those compare on speed only.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token; the shorter length when one is a prefix of the other;
    None when equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _content(tokens: Sequence[int], stop_ids: frozenset[int]) -> list[int]:
    """`tokens` without a final stop id: talon-rt and transformers emit it, onnxruntime-genai does not."""
    return list(tokens[:-1]) if tokens and tokens[-1] in stop_ids else list(tokens)


def agreement(runs: Sequence[Mapping[str, Any]], ar_tokens: Mapping[tuple[str, str], Sequence[int]],
              expected: bool, stop_ids: Sequence[int] = ()) -> dict[str, Any] | None:
    """Compare each run's `tokens` with `ar`'s on the same (dataset, prompt id), a final stop id
    aside; None when no run has an `ar` counterpart."""
    stop = frozenset(stop_ids)
    diverged: dict[str, int] = {}
    compared = 0
    for r in runs:
        key = (r["dataset"], r["id"])
        if key not in ar_tokens:
            continue
        compared += 1
        at = first_divergence(_content(r["tokens"], stop), _content(ar_tokens[key], stop))
        if at is not None:
            diverged[f"{key[0]}/{key[1]}"] = at
    if not compared:
        return None
    return {"same": compared - len(diverged), "prompts": compared, "expected": expected,
            "first_divergence": diverged}


def label(a: Mapping[str, Any] | None) -> str | None:
    """`same output as ar` in the tables: "k/n", and "(speed only)" where no match is expected."""
    if not a:
        return None
    return f"{a['same']}/{a['prompts']}" + ("" if a["expected"] else " (speed only)")
