"""Greedy top-1 agreement of engines with a reference engine, teacher-forced on the reference's text.

    python scripts/agreement.py --reference engines/demo-fp32 --engine engines/demo [--engine ...] \
        [--prompts bench/prompts/chat_heldout.jsonl --count 20 --every 4 --positions 64] [--json out.json]
    python scripts/agreement.py --reference-json out.json --llama-gguf FILE   # in a venv with llama_cpp

For each prompt (the model's chat template over one user turn) the reference engine decodes
`--positions` tokens greedily (`ar`); every engine then reads prompt + those tokens in one causal call
and its argmax at each generated position is compared with the reference's own argmax there. The
second form scores llama.cpp (llama-cpp-python, `logits_all`) on the sequences a first run saved.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _prompts(path: str, count: int, every: int) -> list[str]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r["prompt"] for r in rows[::every][:count]]


def _argmax(engine: str, seqs: list[list[int]], threads: int) -> list[np.ndarray]:
    """Each sequence in one causal call of the engine's target graph: argmax [len] per sequence."""
    from talon_rt.export.parity import GraphRunner, causal, ort_session
    sess = ort_session(Path(engine) / "target.onnx", threads)
    out = []
    for ids in seqs:
        runner = GraphRunner.target(sess)
        res = runner.run({"input_ids": np.array([ids], np.int64)}, list(range(len(ids))), causal(len(ids)))
        out.append(res["argmax"][0])
    return out


def _score(pred: list[np.ndarray], ref: list[np.ndarray], starts: list[int]) -> dict:
    same = total = 0
    first = []
    for p, r, s in zip(pred, ref, starts):
        hit = p[s - 1:-1] == r[s - 1:-1]
        same += int(hit.sum())
        total += len(hit)
        first.append(int(np.argmin(hit)) if not hit.all() else len(hit))
    return {"agreement": same / total, "positions": total, "first_difference": first}


def ours(a: argparse.Namespace) -> dict:
    from talon_rt.runtime.api import Generator
    from talon_rt.talon.policies import BASELINE
    ref = Generator.open(a.reference, policy=BASELINE, threads=a.threads)
    seqs, starts = [], []
    for prompt in _prompts(a.prompts, a.count, a.every):
        ids = ref.encode_prompt(ref.render_chat([{"role": "user", "content": prompt}]))
        res = ref.generate(ids, a.positions)
        seqs.append(ids + res.tokens)
        starts.append(len(ids))
    ref.close()
    ref_argmax = _argmax(a.reference, seqs, a.threads)
    result = {"reference": a.reference, "prompts": a.prompts, "sequences": seqs, "starts": starts, "engines": {}}
    for engine in a.engine:
        result["engines"][engine] = _score(_argmax(engine, seqs, a.threads), ref_argmax, starts)
        print(f"{engine}: top-1 agreement with {a.reference} {result['engines'][engine]['agreement']:.3f} "
              f"over {result['engines'][engine]['positions']} positions")
    result["reference_argmax"] = [r.tolist() for r in ref_argmax]
    return result


def llama(a: argparse.Namespace) -> dict:
    from llama_cpp import Llama
    saved = json.loads(Path(a.reference_json).read_text())
    llm = Llama(model_path=a.llama_gguf, n_ctx=1024, logits_all=True, n_threads=a.threads, verbose=False)
    pred = []
    for ids in saved["sequences"]:
        llm.reset()
        llm.eval(ids)
        pred.append(np.asarray(llm.scores[:len(ids)]).argmax(-1))
    ref = [np.asarray(r) for r in saved["reference_argmax"]]
    score = _score(pred, ref, saved["starts"])
    print(f"llama.cpp {a.llama_gguf}: top-1 agreement {score['agreement']:.3f} over {score['positions']} positions")
    saved["engines"][f"llama.cpp:{Path(a.llama_gguf).name}"] = score
    return saved


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", help="the reference engine (e.g. the float twin)")
    p.add_argument("--engine", action="append", default=[], help="an engine to score (repeatable)")
    p.add_argument("--prompts", default="bench/prompts/chat_heldout.jsonl")
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--every", type=int, default=4, help="take every Nth prompt of the file")
    p.add_argument("--positions", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reference-json", help="sequences saved by a first run (llama.cpp mode)")
    p.add_argument("--llama-gguf", help="score llama.cpp on this GGUF (needs llama_cpp)")
    p.add_argument("--json", help="write the result here")
    a = p.parse_args()
    result = llama(a) if a.llama_gguf else ours(a)
    if a.json:
        Path(a.json).write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
