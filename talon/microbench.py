"""Host-time micro-benchmark of the algorithm layer: `python -m talon_rt.talon.microbench [--rounds R] [--filters]`.

The draft is a `CannedExpand` (pre-generated arrays, ~zero cost), so the figures are the policy's own
host time per tree layer and per round (build + mask + positions + greedy verify), medians over rounds.
`--filters` times the sampling side per verified row instead: softmax, top-p, top-k + top-p + min-p, and
one draw, on peaked and flat rows of a SmolLM2-sized vocabulary.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from talon_rt.talon.cost import CostModel
from talon_rt.talon.policies import BUDGET, CHAIN_DEPTH, EAGLE3, TALON, make_policy, policy_spec
from talon_rt.talon.sampling import _nucleus, logits_to_probs, sample_token
from talon_rt.talon.synthetic import CannedExpand
from talon_rt.talon.tree import DraftTree
from talon_rt.talon.verify import verify_greedy, verify_sample

VOCAB = 32000  # a Llama-2-sized vocabulary for the token ids and the sampling rows
FILTER_VOCAB = 49152  # SmolLM2's vocabulary for the filter rows
FILTER_ROWS = {"peaked": 3.0, "flat": 0.05}  # logits = scale * N(0, 1): ~100 vs ~46k tokens in a 0.95 nucleus


def _first_child_argmax(tree: DraftTree) -> np.ndarray:
    """A target argmax that accepts the first-child path down to a leaf (a full-length walk)."""
    n = tree.size
    first = np.full(n, -1, dtype=np.int64)
    first[tree.parents[:0:-1]] = np.arange(n - 1, 0, -1)  # the last write per parent is its first child
    return np.where(first >= 0, tree.tokens[np.maximum(first, 0)], 0)


def _policy(name: str, budget: int):
    """The policy with a tree of at most `budget` nodes (chain: budget-1 drafts; ar: the root;
    talon-cost: the extension with the demo engine's CPU costs in us and a fresh calibration)."""
    spec = policy_spec(name)
    if CHAIN_DEPTH in spec.knobs:
        return make_policy(name, **{CHAIN_DEPTH.keyword: budget - 1})
    if BUDGET not in spec.knobs:
        return make_policy(name)
    if spec.needs_cost:
        cost = CostModel(tuple(700.0 + 75.0 * np.arange(budget)), draft_base=150.0, draft_row=5.0)
        return make_policy(name, budget=budget, cost=cost)
    return make_policy(name, budget=budget)


def run_microbench(budgets: tuple[int, ...] = (16, 32, 60), policies: tuple[str, ...] = (TALON, EAGLE3),
                   rounds: int = 2000, sample_rounds: int = 200, seed: int = 0,
                   draft: str = "mixed") -> dict:
    """{policy: {budget: {layer_us, build_us, mask_us, verify_us, round_us, sample_verify_us, layers}}}.
    verify_us includes talon-cost's calibration update."""
    expand = CannedExpand(vocab=VOCAB, seed=seed, shape=draft)
    rng = np.random.default_rng(seed)
    probs = rng.random((max(budgets), VOCAB))
    probs /= probs.sum(axis=1, keepdims=True)  # [N, V] target rows for the sampling verify
    clock = time.perf_counter_ns
    out: dict = {}
    for name in policies:
        out[name] = {}
        for budget in budgets:
            policy = _policy(name, budget)
            rows = np.empty((rounds, 5))  # build, mask+positions, verify, round (ns), layers
            for r in range(rounds):
                t0 = clock()
                tree = policy.build(1, expand)
                t1 = clock()
                argmax = _first_child_argmax(tree)
                t2 = clock()
                tree.mask()
                tree.positions(512)
                t3 = clock()
                acc = verify_greedy(tree, argmax)
                if policy.learner is not None:   # the decode loop's per-round calibration
                    policy.learner.learn(tree, acc, True)
                    policy.learner.record_round(acc.tokens.shape[0], 2000.0)
                t4 = clock()
                rows[r] = t1 - t0, t3 - t2, t4 - t3, (t1 - t0) + (t4 - t2), tree.info.draft_calls
            sample = []
            for _ in range(sample_rounds):
                tree = policy.build(1, expand)
                t0 = clock()
                verify_sample(tree, probs[:tree.size], rng)
                sample.append(clock() - t0)
            med = np.median(rows[:, :4], axis=0) / 1e3
            out[name][budget] = {
                "layer_us": float(np.median(rows[:, 0] / rows[:, 4]) / 1e3) if rows[0, 4] else float("nan"),
                "build_us": float(med[0]), "mask_us": float(med[1]), "verify_us": float(med[2]),
                "round_us": float(med[3]), "sample_verify_us": float(np.median(sample) / 1e3),
                "layers": float(rows[:, 4].mean()),
            }
    return out


def _copied(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    np.copyto(dst, src)
    return dst


def run_filter_bench(reps: int = 200, vocab: int = FILTER_VOCAB, seed: int = 0, temperature: float = 0.7,
                     top_p: float = 0.95) -> dict:
    """{row: {step: median us of this thread's CPU time for one row of logits [V]}} (CPU time: a shared
    machine's preemption left out); steps: softmax (temperature alone), nucleus (the top-p filter alone,
    on a copy of the softmax's output), top_p (softmax + nucleus), all (top-k 50 + top-p + min-p 0.05),
    sample (one draw from the top-p row)."""
    rng = np.random.default_rng(seed)
    clock = time.thread_time_ns
    out: dict = {}
    for row, scale in FILTER_ROWS.items():
        logits = scale * rng.standard_normal(vocab)
        probs = logits_to_probs(logits, temperature)
        kept = logits_to_probs(logits, temperature, top_p)
        work, scratch = np.empty(vocab), np.empty((2, vocab))
        steps = {"softmax": lambda: logits_to_probs(logits, temperature),
                 "nucleus": lambda: _nucleus(_copied(work, probs), top_p, scratch),
                 "top_p": lambda: logits_to_probs(logits, temperature, top_p),
                 "all": lambda: logits_to_probs(logits, temperature, top_p, 50, 0.05),
                 "sample": lambda: sample_token(kept, rng)}
        times = np.empty((reps, len(steps)))
        for r in range(reps):   # the steps interleaved, so a busy machine slows each alike
            for j, step in enumerate(steps.values()):
                t0 = clock()
                step()
                times[r, j] = clock() - t0
        out[row] = dict(zip(steps, (np.median(times, axis=0) / 1e3).tolist()))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2000, help="rounds per (policy, budget)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[16, 32, 60])
    ap.add_argument("--policies", nargs="+", default=[TALON, EAGLE3])
    ap.add_argument("--draft", choices=["mixed", "peaked", "flat"], default="mixed",
                    help="canned draft rows: peaked makes deep narrow talon trees, flat wide ones")
    ap.add_argument("--filters", action="store_true",
                    help="time the sampling filters per verified row (T=0.7, top-p 0.95) instead")
    args = ap.parse_args(argv)
    if args.filters:
        res = run_filter_bench(reps=args.rounds // 10)
        print(f"{'row':8} " + " ".join(f"{step:>8}" for step in res["peaked"]) + "   (median CPU us per row)")
        for row, s in res.items():
            print(f"{row:8} " + " ".join(f"{t:>8.1f}" for t in s.values()))
        return
    res = run_microbench(tuple(args.budgets), tuple(args.policies), rounds=args.rounds, draft=args.draft)
    print(f"{'policy':10} {'N':>4} {'layers':>6} {'us/layer':>9} {'build':>8} {'mask':>7} "
          f"{'verify':>7} {'round':>8} {'sample-verify':>14}   (median host us)")
    for name, per_budget in res.items():
        for budget, s in per_budget.items():
            print(f"{name:10} {budget:>4} {s['layers']:>6.1f} {s['layer_us']:>9.1f} {s['build_us']:>8.1f} "
                  f"{s['mask_us']:>7.1f} {s['verify_us']:>7.1f} {s['round_us']:>8.1f} "
                  f"{s['sample_verify_us']:>14.1f}")


if __name__ == "__main__":
    main()
