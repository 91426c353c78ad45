"""The decode loop (docs/design.md §3): prefill, then rounds of build -> verify -> accept -> commit -> learn.

Token bookkeeping: the target cache holds P committed tokens; the *root* (the next token, already
streamed) is not in it yet. A round verifies the tree rooted there; the accepted path (root first)
is committed to [P, P+a+1) and the last emitted token becomes the next root.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from talon_rt.runtime.backends.base import Backend
from talon_rt.runtime.costs import measure_cost_model
from talon_rt.runtime.draft import Drafter
from talon_rt.runtime.errors import EngineError, InputError
from talon_rt.runtime.logprobs import TokenLogprob, token_logprobs
from talon_rt.runtime.manifest import Manifest
from talon_rt.runtime.options import Options
from talon_rt.runtime.stats import RoundStats, RunStats
from talon_rt.talon import (Acceptance, CostModel, DraftTree, PenaltyContext, Penalties, Policy, logits_to_probs, policies,
                   root_tree, verify_greedy, verify_sample)

# called with each round's new tokens; returning False cancels the generation (stop_reason "cancelled")
OnTokens = Callable[[list[int]], "bool | None"]
ROOT_ONLY = np.zeros(1, np.int64)          # the accepted path of a one-node tree
ROOT_MASK = np.ones((1, 1), np.bool_)


@dataclass(frozen=True)
class Decoded:
    tokens: list[int]
    stop_reason: str          # "eos" | "max_new_tokens" | "context_full" | "cancelled"
    stats: RunStats
    logprobs: list[TokenLogprob] | None = None   # one per token, when asked for


class Tracer:
    """Told when each step of a round ends: `lap("build")`, `lap("verify")`, `lap("accept")`. The
    decoder's default does nothing; runtime/profile.py times the steps with one."""

    def lap(self, step: str) -> None:
        pass


def policy_from_options(o: Options, cost: CostModel | None = None) -> Policy:
    """The session's policy from its options (talon/policies.py); `cost` for a policy that needs one."""
    return policies.policy_from_options(o.policy, dataclasses.asdict(o), cost)


class Sampler:
    """Greedy (temperature 0) or lossless sampling with temperature / top-p / top-k / min-p on the
    target, after the repetition / frequency / presence penalties of each node's own context."""

    def __init__(self, o: Options, vocab: int, logits: bool = False):
        self.greedy = o.temperature == 0.0
        self.o = o
        self.rng = np.random.default_rng(o.seed)
        pen = Penalties(o.repetition_penalty, o.frequency_penalty, o.presence_penalty)
        self.penalties = PenaltyContext(pen, vocab) if pen.active else None
        self.logits = logits or not self.greedy or self.penalties is not None   # full rows needed

    def target_call(self, backend: Backend) -> Callable[..., np.ndarray]:
        """What verification reads from a target call: plain greedy, the argmax ids [q] (in the graph,
        so q ints instead of q x V floats); otherwise the logits [q, V]."""
        return backend.target if self.logits else backend.target_argmax

    def start(self, prompt: np.ndarray) -> None:
        if self.penalties is not None:
            self.penalties.start(prompt)

    def committed(self, tokens: list[int]) -> None:
        """Tokens appended to the output (their penalties apply from the next verification on)."""
        if self.penalties is not None:
            self.penalties.add(tokens)

    def first(self, row: np.ndarray) -> int:
        """The token after the prompt from the last row of `target_call`'s output."""
        return int(self.verify(root_tree(0), row[None]).tokens[0])

    def verify(self, tree: DraftTree, out: np.ndarray) -> Acceptance:
        """out: `target_call`'s output for the tree's nodes."""
        if self.penalties is not None:
            out = self.penalties.apply(out, tree)
        if self.greedy:
            if self.logits:
                out = np.argmax(out, axis=-1)
            if tree.size == 1:   # the root alone (ar, or a capped round): its argmax is the token
                return Acceptance(nodes=ROOT_ONLY, tokens=np.array([out[0]], np.int64))
            return verify_greedy(tree, out)
        check_logits(out)
        o = self.o
        probs = logits_to_probs(out, o.temperature, o.top_p, o.top_k, o.min_p)
        return verify_sample(tree, probs, self.rng)


def check_logits(logits: np.ndarray) -> None:
    """Target logits [..., V] with a NaN or an inf (a row's max is then not finite) are a broken engine,
    never sampled from."""
    if not np.isfinite(logits.max(axis=-1)).all():
        raise EngineError("the target's logits are not finite (NaN or inf): the engine's weights or constants "
                          "are broken (a NaN rms epsilon, a negative rope base?); re-export it")


class Decoder:
    def __init__(self, backend: Backend, m: Manifest, o: Options):
        self.backend = backend
        self.m = m
        self.o = o
        self.S = m.limits.max_seq_len
        self.chunk = m.limits.max_prefill_chunk
        self.vocab = m.model.vocab_size
        self.eos = frozenset(m.tokenizer.stop_ids)   # eos ids + the chat template's end-of-turn
        # the cost-aware extension times this machine's engine calls once, before any prompt
        spec = policies.policy_spec(o.policy)
        self.cost = (measure_cost_model(backend, m, o.budget, o.root_k, o.temperature == 0.0)
                     if spec.needs_cost else None)
        self.policy = policy_from_options(o, self.cost)
        self.learner = self.policy.learner     # None unless the policy learns from its rounds
        self.history = self.policy.history     # None unless the policy drafts from the text so far
        rows, scratch = self.policy.footprint()
        self.need = max(rows, scratch)
        backend.check_footprint(rows, scratch)
        self._capped: dict[int, Policy] = {}
        self.drafter = (Drafter(backend, m.draft.hidden_size, m.kv_dtype, max(scratch, 1), self.chunk)
                        if spec.needs_head else None)
        self.default_sampler = Sampler(o, self.vocab)
        self.sampler = self.default_sampler             # this generation's (Generator.generate may pass one)
        self.top_logprobs: int | None = None            # this generation's logprobs request (None = off)
        self.logprobs: list[TokenLogprob] = []          # this generation's, grown before each on_tokens call
        self._pending: list[TokenLogprob] = []          # the last target call's, for its emitted tokens
        self.causal = np.tril(np.ones((self.chunk, self.chunk), np.bool_))
        self.P = 0
        self.target_ns = 0
        self.tracer = Tracer()
        self.probe()

    def probe(self) -> None:
        """One target call on a one-token prompt (position 0, overwritten by the next prefill): logits
        that are not finite are an EngineError here, before a greedy argmax turns them into token 0
        forever."""
        one = np.zeros(1, np.int64)
        check_logits(self.backend.target(one, one, self.causal[:1, :1], 0))

    # -- the loop ----------------------------------------------------------------------------------

    def generate(self, prompt: list[int], max_new_tokens: int, on_tokens: OnTokens | None = None,
                 sampler: Sampler | None = None, top_logprobs: int | None = None) -> Decoded:
        """sampler: this call's (default: the decoder's own, whose random state carries on);
        top_logprobs: None, or each token's log-probability with that many alternatives."""
        self.check_prompt(prompt)
        self.sampler = sampler if sampler is not None else self.default_sampler
        if top_logprobs is not None and not self.sampler.logits:   # plain greedy: the argmax ids only
            self.sampler = Sampler(self.sampler.o, self.vocab, logits=True)
        self.top_logprobs, self.logprobs = top_logprobs, []
        seeded = getattr(self.policy, "seeded", None)   # a policy whose choices follow time (talon/gate.py)
        if seeded is not None:
            seeded(not self.sampler.greedy and self.sampler.o.seed is not None)
        try:
            return self._generate(prompt, max_new_tokens, on_tokens)
        finally:
            self.sampler = self.default_sampler

    def _generate(self, prompt: list[int], max_new_tokens: int, on_tokens: OnTokens | None) -> Decoded:
        t0 = time.perf_counter()
        root = self.prefill(np.asarray(prompt, dtype=np.int64))
        out = [root]
        if self.history is not None:
            self.history.reset([*prompt, root])
        self.committed(out)
        t1 = time.perf_counter()
        rounds: list[RoundStats] = []
        keep = on_tokens is None or on_tokens([root]) is not False
        stop = self.stop_reason(out, max_new_tokens) or (None if keep else "cancelled")
        while stop is None:
            tree, acc, engine_ns, wall_ns = self.round(root)
            emitted = self.emit(out, acc.tokens, max_new_tokens)
            self.committed(emitted)
            root = out[-1]
            rounds.append(self.round_stats(tree, acc, len(emitted), engine_ns, wall_ns))
            keep = on_tokens is None or not emitted or on_tokens(emitted) is not False
            stop = self.stop_reason(out, max_new_tokens) or (None if keep else "cancelled")
        t2 = time.perf_counter()
        logprobs = self.logprobs if self.top_logprobs is not None else None
        return Decoded(out, stop, self.run_stats(len(prompt), out, rounds, t1 - t0, t2 - t1), logprobs)

    def round(self, root: int) -> tuple[DraftTree, Acceptance, int, int]:
        """One speculative round; returns (tree, acceptance, engine ns, wall ns)."""
        start, eng0 = time.perf_counter_ns(), self.engine_ns()
        tree = self.build(root)                          # one draft call per layer
        self.tracer.lap("build")
        out = self.verify_call(tree)                     # one target call over all tree tokens
        self.tracer.lap("verify")
        acc = self.sampler.verify(tree, out)             # greedy or lossless sampling (talon/)
        self.note_logprobs(out, acc.nodes, acc.tokens)   # if asked: each emitted token's, from its node
        self.tracer.lap("accept")
        self.commit(acc)                                 # accepted rows -> [P, P+a+1)
        self.learn(tree, acc, start)                     # a policy that learns sees the outcome
        return tree, acc, self.engine_ns() - eng0, time.perf_counter_ns() - start

    # -- steps -------------------------------------------------------------------------------------

    def build(self, root: int) -> DraftTree:
        """The policy's tree (capped at the context's end), then the draft feed a round owes."""
        policy = self.policy_for_room()
        if self.drafter is not None:
            self.drafter.start_round(self.P)
        tree = policy.build(root, self.expand)
        self.defer_feed()                                # a round may not draft at all
        return tree

    def committed(self, emitted: list[int]) -> None:
        """Tokens appended to the output: the sampler's penalties and the logprobs see them."""
        self.sampler.committed(emitted)
        if self.top_logprobs is not None:
            self.logprobs.extend(self._pending[:len(emitted)])

    def note_logprobs(self, logits: np.ndarray, rows: np.ndarray, tokens: np.ndarray) -> None:
        """logits [q, V] of a target call; its rows [m] emitted tokens [m]."""
        if self.top_logprobs is not None:
            self._pending = token_logprobs(logits[rows], tokens, self.top_logprobs)

    def learn(self, tree: DraftTree, acc: Acceptance, start_ns: int) -> None:
        """Feed the policy's history the round's tokens, and its learner the verified round and the
        round's time so far (us)."""
        if self.history is not None:
            self.history.extend(acc.tokens.tolist())
        if self.learner is not None:
            self.learner.learn(tree, acc, self.sampler.greedy)
            self.learner.record_round(acc.tokens.shape[0], (time.perf_counter_ns() - start_ns) / 1e3)

    def expand(self, tree: DraftTree, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.drafter is not None, "ar and lookup never draft"
        ids, logp = self.drafter.expand(tree, rows)
        if np.isnan(logp).any():                         # [rows, k_max]: a broken head, never a tree
            raise EngineError("the draft head's log-probs are NaN: the engine's draft weights or constants are "
                              "broken; re-export it")
        return ids, logp

    def defer_feed(self) -> None:
        """A round that made no draft call leaves its feed to the next round's first call."""
        if self.drafter is not None and self.drafter.feed_rows.shape[0]:
            self.drafter.defer_feed()

    def verify_call(self, tree: DraftTree) -> np.ndarray:
        mask = ROOT_MASK if tree.size == 1 else tree.mask()
        positions = tree.positions(self.P)
        t0 = time.perf_counter_ns()
        out = self.sampler.target_call(self.backend)(tree.tokens, positions, mask, self.P)
        self.target_ns += time.perf_counter_ns() - t0
        return out

    def commit(self, acc: Acceptance) -> None:
        t0 = time.perf_counter_ns()
        self.backend.commit_target(self.P, acc.nodes)
        self.target_ns += time.perf_counter_ns() - t0
        self.P += acc.nodes.shape[0]
        if self.drafter is not None:
            self.drafter.set_feed(acc.nodes, acc.tokens)

    def prefill(self, prompt: np.ndarray) -> int:
        """Run the prompt through the target (and the draft) in chunks; return the first token."""
        self.P = 0
        self.sampler.start(prompt)
        if self.drafter is not None:
            self.drafter.committed = 0
            self.drafter.deferred = 0
            self.drafter.calls = 0
        n = prompt.shape[0]
        root = -1
        for s in range(0, n, self.chunk):
            e = min(s + self.chunk, n)
            q = e - s
            t0 = time.perf_counter_ns()
            out = self.sampler.target_call(self.backend)(prompt[s:e], np.arange(s, e, dtype=np.int64),
                                                         self.causal[:q, :q], s)
            self.backend.commit_target(s, np.arange(q))
            self.target_ns += time.perf_counter_ns() - t0
            self.P = e
            if e == n:
                root = self.sampler.first(out[q - 1])
                self.note_logprobs(out, np.array([q - 1]), np.array([root]))
            if self.drafter is not None:
                nxt = np.append(prompt[s + 1:e], prompt[e] if e < n else root)
                self.drafter.set_feed(np.arange(q), nxt)
                if e < n:
                    self.drafter.run_feed()   # the last chunk's feed is the first round's first call
        return root

    def emit(self, out: list[int], tokens: np.ndarray, max_new_tokens: int) -> list[int]:
        """Append a round's tokens up to the first EOS and max_new_tokens; return what was added."""
        room = max_new_tokens - len(out)
        new = tokens[:room].tolist()
        for i, t in enumerate(new):
            if t in self.eos:
                new = new[:i + 1]
                break
        out.extend(new)
        return new

    def stop_reason(self, out: list[int], max_new_tokens: int) -> str | None:
        if out[-1] in self.eos:
            return "eos"
        if len(out) >= max_new_tokens:
            return "max_new_tokens"
        if self.P >= self.S:
            return "context_full"
        return None

    def policy_for_room(self) -> Policy:
        room = self.S - self.P
        if room >= self.need:
            return self.policy
        if room not in self._capped:
            self._capped[room] = self.policy.capped(room)
        return self._capped[room]

    def check_prompt(self, prompt: list[int]) -> None:
        if len(prompt) == 0:
            raise InputError("prompt is empty (need at least one token)")
        if len(prompt) >= self.S:
            raise InputError(f"prompt of {len(prompt)} tokens does not fit the context: "
                             f"limits.max_seq_len={self.S} leaves no room to generate")
        arr = np.asarray(prompt)
        if arr.dtype.kind not in "iu":
            raise InputError(f"prompt token ids must be integers, got dtype {arr.dtype}")
        bad = np.flatnonzero((arr < 0) | (arr >= self.vocab))
        if bad.size:
            i = int(bad[0])
            raise InputError(f"prompt token id {int(arr[i])} at index {i} is outside the vocabulary "
                             f"[0, {self.vocab}) (model.vocab_size)")

    # -- stats -------------------------------------------------------------------------------------

    def engine_ns(self) -> int:
        return self.target_ns + (self.drafter.engine_ns if self.drafter is not None else 0)

    def round_stats(self, tree: DraftTree, acc: Acceptance, emitted: int, engine_ns: int,
                    wall_ns: int) -> RoundStats:
        info = tree.info
        lookup = info.lookup if info else ()
        return RoundStats(
            tree_size=tree.size, depth=int(tree.depth.max()),
            nodes_per_layer=info.nodes_per_layer if info else (),
            draft_calls=info.draft_calls if info else 0, accepted=acc.accepted, emitted=emitted,
            engine_s=engine_ns * 1e-9, host_s=max(wall_ns - engine_ns, 0) * 1e-9,
            pool_truncated=info.pool_truncated if info else 0, lookup_proposed=len(lookup),
            lookup_accepted=int(np.isin(acc.nodes[1:], lookup).sum()) if lookup else 0)

    def run_stats(self, prompt_len: int, out: list[int], rounds: list[RoundStats], prefill_s: float,
                  decode_s: float) -> RunStats:
        chunks = -(-prompt_len // self.chunk)
        draft_calls = self.drafter.calls if self.drafter is not None else 0
        return RunStats(
            policy=self.o.policy, prompt_tokens=prompt_len, generated=len(out), rounds=len(rounds),
            target_calls=len(rounds) + chunks, draft_calls=draft_calls, prefill_s=prefill_s,
            decode_s=decode_s, engine_s=sum(r.engine_s for r in rounds),
            host_s=sum(r.host_s for r in rounds), per_round=tuple(rounds))
