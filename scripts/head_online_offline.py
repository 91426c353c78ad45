"""A head's one-token acceptance in decoding beside its offline step-1 agreement on the same text.

    python scripts/head_online_offline.py --engine engines/demo-fp32 --model M.gguf --head models/smollm2-eagle3 \
        [--prompts bench/prompts/chat_heldout.jsonl] [--limit 3] [--max-new-tokens 96]

Each prompt (rendered with the target's chat template) is generated greedily by `talon` at budget 2
(root + the head's best child: a round accepts its one draft token or not); the engine's own text is
then teacher-forced through the float32 target and the head as the recipe's evaluation does
(train/recipes/head/evaluate.py), over the same response positions. Equal figures mean the runtime
computes what the recipe measures; a gap between the recipe's held-out figure and decoding then lies
in the text, not in the engine.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from talon_rt.export.checkpoints import load_head
from talon_rt.runtime.api import Generator
from talon_rt.train.eagle3 import Agreement
from talon_rt.train.recipes.head import target as target_mod
from talon_rt.train.recipes.head.evaluate import draft_rows, target_pass_fp32
from talon_rt.train.target_pass import taps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, required=True, help="an engine whose draft is --head")
    ap.add_argument("--model", type=Path, required=True, help="the target (GGUF or Hugging Face folder)")
    ap.add_argument("--head", type=Path, required=True, help="the EAGLE-3 head folder the engine was built from")
    ap.add_argument("--prompts", type=Path, default=Path("bench/prompts/chat_heldout.jsonl"))
    ap.add_argument("--limit", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()
    prompts = [json.loads(line)["prompt"] for line in args.prompts.read_text().splitlines() if line.strip()]
    gen = Generator.open(args.engine, policy="talon", budget=2)
    lm, tok = target_mod.load(args.model)
    head = load_head(args.head, target_mod.view(lm)).float().eval()
    rows = draft_rows(head, lm)
    online_n = online_hit = 0
    total = Agreement(1)
    for i, p in enumerate(prompts[:args.limit]):
        ids = target_mod.render(tok, p)
        res = gen.generate(ids, max_new_tokens=args.max_new_tokens)
        hits = sum(r.accepted for r in res.stats.per_round)
        conv = torch.tensor([ids + res.tokens])
        tp = target_pass_fp32(lm, conv, taps(lm), rows)
        mask = torch.zeros_like(conv, dtype=torch.bool)
        mask[0, len(ids) - 1:conv.shape[1] - 1] = True
        one = Agreement(1)
        for a in (one, total):
            a.add(head, conv, tp, mask)
        online_n, online_hit = online_n + res.stats.rounds, online_hit + hits
        print(f"prompt {i}: online acceptance {hits / max(1, res.stats.rounds):.3f} over {res.stats.rounds} rounds; "
              f"offline step-1 agreement {one.result()['per_step'][0]:.3f} over {one.result()['positions']} positions")
    print(f"all: online {online_hit / max(1, online_n):.3f} ({online_n} rounds); offline "
          f"{total.result()['per_step'][0]:.3f} ({total.result()['positions']} positions)")
    gen.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
