"""Context lookup: the incremental index against a brute-force scan, and the trie's scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talon_rt.talon import TalonLookupPolicy, TalonPolicy, make_policy
from talon_rt.talon.lookup import NO_MATCH, Lookup, LookupConfig, Match
from talon_rt.talon.synthetic import SyntheticDraft

PROPERTY = settings(max_examples=400, deadline=None, derandomize=True)


def brute_match(h: list[int], config: LookupConfig) -> Match:
    """Scan every earlier position: the longest suffix (min_n..max_n) with an occurrence ending before len(h)."""
    L = len(h)
    for n in range(min(config.max_n, L - 1), config.min_n - 1, -1):
        ends = [e for e in range(n, L) if h[e - n:e] == h[L - n:]]
        if ends:
            return Match(n, len(ends), tuple(sorted(ends, reverse=True)[:config.recent]))
    return NO_MATCH


def brute_proposal(h: list[int], match: Match, depth: int) -> dict[tuple[int, ...], float]:
    """Each distinct continuation prefix (a path) -> its score, from the definition."""
    out: dict[tuple[int, ...], float] = {}
    conts = [tuple(h[e:e + depth]) for e in match.ends]
    for c in conts:
        for d in range(1, len(c) + 1):
            k = sum(1 for o in conts if o[:d] == c[:d])
            out[c[:d]] = math.log(k / len(conts)) + math.log((match.n + 1) / (match.n + d + 1))
    return out


def trie_paths(prop) -> dict[tuple[int, ...], float]:
    paths: list[tuple[int, ...]] = []
    for i in range(prop.size):
        p = int(prop.parents[i])
        assert p < i
        paths.append((paths[p] if p >= 0 else ()) + (int(prop.tokens[i]),))
        assert len(paths[-1]) == prop.depth[i]
    assert len(set(paths)) == len(paths)   # one node per (parent, token)
    return dict(zip(paths, prop.logp.tolist()))


configs = st.builds(LookupConfig, min_n=st.integers(1, 3), max_n=st.integers(3, 6), recent=st.integers(1, 4))


@PROPERTY
@given(config=configs, vocab=st.integers(2, 5), data=st.data())
def test_incremental_index_equals_rebuild_and_brute_force(config, vocab, data):
    seq = data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=60))
    cuts = sorted(data.draw(st.lists(st.integers(1, len(seq)), max_size=8)))
    inc = Lookup(config)
    inc.reset(seq[:cuts[0]] if cuts else seq)
    for a, b in zip(cuts, cuts[1:] + [len(seq)]):
        inc.extend(seq[a:b])
        fresh = Lookup(config)
        fresh.reset(seq[:b])
        assert inc.history == seq[:b]
        assert inc.match() == fresh.match() == brute_match(seq[:b], config)
        assert inc.ids == fresh.ids and inc.count == fresh.count
        assert [e[-config.recent:] for e in inc.ends] == [e[-config.recent:] for e in fresh.ends]
    depth = data.draw(st.integers(1, 6))
    prop = inc.propose(depth)
    got, want = trie_paths(prop), brute_proposal(seq, inc.match(), depth)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-12)


@PROPERTY
@given(config=configs, seq=st.lists(st.integers(0, 3), min_size=1, max_size=50), depth=st.integers(1, 8),
       m=st.integers(0, 12))
def test_scores_fall_along_paths_and_best_is_closed(config, seq, depth, m):
    lk = Lookup(config)
    lk.reset(seq)
    prop = lk.propose(depth)
    assert np.all(prop.logp <= 0.0)
    child = np.flatnonzero(prop.parents >= 0)
    assert np.all(prop.logp[child] < prop.logp[prop.parents[child]])
    kept = set(prop.best(m).tolist())
    assert len(kept) == min(m, prop.size)
    assert all(prop.parents[i] < 0 or int(prop.parents[i]) in kept for i in kept)


def test_example_match_and_scores():
    lk = Lookup(LookupConfig(min_n=1, max_n=4, recent=4))
    lk.reset([5, 1, 2, 3, 9, 1, 2, 3, 7, 1, 2])   # suffix [1, 2] seen twice before, then 3 both times
    m = lk.match()
    assert m == Match(2, 2, (7, 3))   # [9|7, 1, 2] never repeats with 3 tokens: n = 2
    prop = lk.propose(3)
    paths = trie_paths(prop)
    # both occurrences continue with 3 (k/r = 1), then split into 7 and 1 (k/r = 1/2)
    assert paths[(3,)] == pytest.approx(math.log(3 / 4))
    assert paths[(3, 7)] == pytest.approx(math.log(1 / 2) + math.log(3 / 5))
    assert paths[(3, 9)] == pytest.approx(math.log(1 / 2) + math.log(3 / 5))
    assert paths[(3, 7, 1)] == pytest.approx(math.log(1 / 2) + math.log(3 / 6))


def test_no_match_proposes_nothing():
    lk = Lookup()
    lk.reset([1, 2, 3])
    assert lk.match() == NO_MATCH
    assert lk.propose(8).size == 0
    lk.reset([4])
    assert lk.propose(8).size == 0


def test_continuation_stops_at_the_history_end():
    lk = Lookup(LookupConfig(min_n=1, max_n=2, recent=1))
    lk.reset([1, 2, 1, 2, 1, 2])   # overlapping repeats: [1, 2] last ended at 4, continuation [1, 2]
    prop = lk.propose(8)
    assert prop.tokens.tolist() == [1, 2]


@pytest.mark.parametrize("kwargs, message", [
    (dict(min_n=0), "min_n must be an integer >= 1"),
    (dict(min_n=3, max_n=2), "max_n must be an integer >= 3"),
    (dict(recent=0), "recent must be an integer >= 1"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LookupConfig(**kwargs)


# -- the policies: lookup alone and TALON with lookup candidates -------------------------------------------

def as_nodes(tree):
    return [(int(t), int(p), int(d), float(s)) for t, p, d, s in zip(tree.tokens, tree.parents, tree.depth, tree.logp)]


@st.composite
def draft_and_k(draw, max_vocab=40):
    vocab = draw(st.integers(1, max_vocab))
    return SyntheticDraft(vocab, draw(st.integers(1, vocab)), seed=draw(st.integers(0, 2**16)),
                          sharpness=draw(st.sampled_from([0.0, 0.3, 1.0, 3.0])),
                          peak=draw(st.sampled_from([0.0, 4.0, 12.0])))


def lookup_over(seq: list[int], **config) -> Lookup:
    lk = Lookup(LookupConfig(**config))
    lk.reset(seq)
    return lk


def talon_lookup_reference(draft: SyntheticDraft, root: int, budget: int, root_k: int, mu: float, prop,
                           skip: float):
    """The merged pool, one candidate at a time. Returns (nodes (token, parent, depth, logp), draft calls,
    the lookup's node indices)."""
    nodes = [(root, -1, 0, 0.0)]
    if budget == 1:
        return nodes, 0, []
    if sum(1 for s in prop.logp if s >= math.log(skip)) >= budget - 1:
        kept = sorted(sorted(range(prop.size), key=lambda i: -prop.logp[i])[:budget - 1])
        where = {}
        for i in kept:
            p = int(prop.parents[i])
            where[i] = len(nodes)
            nodes.append((int(prop.tokens[i]), 0 if p < 0 else where[p], int(prop.depth[i]), float(prop.logp[i])))
        return nodes, 0, list(range(1, len(nodes)))
    paths, where, found = [[root]], {}, []
    k = draft.top_ids.shape[1]
    head = {0: draft.children([root])[:min(root_k, k, budget - 1)]}
    frontier, layer, calls = [0], 1, 1
    while True:
        pool = [[nodes[p][3] + lp, p, tok, -1] for p in frontier for tok, lp in head[p]]
        for t in range(prop.size):
            tp = int(prop.parents[t])
            parent = 0 if tp < 0 else where.get(tp)
            if prop.depth[t] != layer or parent is None:
                continue
            dup = [c for c in pool if c[1] == parent and c[2] == prop.tokens[t]]
            if dup:
                dup[0][0], dup[0][3] = max(dup[0][0], float(prop.logp[t])), t
            else:
                pool.append([float(prop.logp[t]), parent, int(prop.tokens[t]), t])
        anchor = max(c[0] for c in pool)
        kept = pool if layer == 1 else [c for c in pool if c[0] >= anchor + math.log(mu)]
        room = budget - len(nodes)
        if len(kept) > room:
            best = {id(c) for c in sorted(kept, key=lambda c: -c[0])[:room]}
            kept = [c for c in kept if id(c) in best]
        frontier = []
        for score, parent, token, t in kept:
            frontier.append(len(nodes))
            nodes.append((token, parent, layer, score))
            paths.append(paths[parent] + [token])
            if t >= 0:
                where[t] = len(nodes) - 1
                found.append(len(nodes) - 1)
        if len(nodes) >= budget:
            return nodes, calls, found
        calls += 1
        layer += 1
        head = {p: draft.children(paths[p])[:k] for p in frontier}


def close_nodes(a, b) -> bool:
    return len(a) == len(b) and all(x[:3] == y[:3] and math.isclose(x[3], y[3], abs_tol=1e-9)
                                    for x, y in zip(a, b))


@PROPERTY
@given(seed=st.integers(0, 2**16), vocab=st.integers(2, 6), budget=st.integers(1, 30), root_k=st.integers(1, 6),
       mu=st.sampled_from([1e-3, 0.03, 0.3, 1.0]), peak=st.sampled_from([0.0, 4.0]),
       seq=st.lists(st.integers(0, 5), min_size=1, max_size=40), recent=st.integers(1, 4),
       skip=st.sampled_from([0.05, 0.5, 1.0]))
def test_talon_lookup_equals_reference(seed, vocab, budget, root_k, mu, peak, seq, recent, skip):
    draft = SyntheticDraft(vocab, vocab, seed=seed, peak=peak)
    seq = [t % vocab for t in seq]
    policy = TalonLookupPolicy(TalonPolicy(budget=budget, root_k=root_k, mu=mu),
                               lookup_over(seq, max_n=4, recent=recent), skip=skip)
    prop = policy.history.propose(budget - 1)
    tree = policy.build(seq[-1], draft)
    tree.validate()
    nodes, calls, found = talon_lookup_reference(draft, seq[-1], budget, root_k, mu, prop, skip)
    assert close_nodes(as_nodes(tree), nodes)
    assert tree.info.draft_calls == calls == len(draft.calls)
    assert sorted(tree.info.lookup) == found
    # siblings are distinct tokens: a lookup duplicate of a head child is one node
    pairs = list(zip(tree.parents[1:].tolist(), tree.tokens[1:].tolist()))
    assert len(set(pairs)) == len(pairs)


@PROPERTY
@given(draft=draft_and_k(), budget=st.integers(1, 40), root_k=st.integers(1, 8), mu=st.floats(1e-4, 1.0))
def test_talon_lookup_without_a_match_is_talon(draft, budget, root_k, mu):
    talon = TalonPolicy(budget=budget, root_k=root_k, mu=mu)
    merged = TalonLookupPolicy(talon, lookup_over([1, 2, 3]))   # no repeat: no match
    a = merged.build(3, draft)
    calls = list(draft.calls)
    draft.calls.clear()
    b = talon.build(3, draft)
    assert as_nodes(a) == as_nodes(b) and calls == draft.calls and a.info.lookup == ()


def test_talon_lookup_makes_no_draft_call_when_the_lookup_fills_the_budget():
    seq = list(range(20)) + list(range(8))   # an 8-token match: the next 12 tokens are 8, 9, ..., 19
    draft = SyntheticDraft(32, 4)
    tree = TalonLookupPolicy(TalonPolicy(budget=6), lookup_over(seq)).build(seq[-1], draft)
    assert draft.calls == [] and tree.info.draft_calls == 0
    assert tree.tokens.tolist() == [7, 8, 9, 10, 11, 12] and tree.info.lookup == (1, 2, 3, 4, 5)
    # a budget the confident nodes cannot fill: the head drafts, and the lookup's chain is in its tree
    tree = TalonLookupPolicy(TalonPolicy(budget=16, root_k=2), lookup_over(seq)).build(seq[-1], draft)
    assert len(draft.calls) == tree.info.draft_calls >= 1
    path = [int(tree.tokens[i]) for i in tree.info.lookup]
    assert path[:4] == [8, 9, 10, 11]


def test_lookup_policy_drafts_nothing_and_takes_the_best_trie_nodes():
    seq = [1, 2, 3, 4, 9, 2, 3, 5, 6, 2, 3]   # [2, 3] twice before: continuations 4 9 and 5 6
    policy = make_policy("lookup", budget=4, max_n=4)
    policy.history.reset(seq)

    def expand(tree, rows):
        raise AssertionError("the lookup policy never calls the draft")

    tree = policy.build(3, expand)
    # trie order: the newest occurrence first (5 6, then 4 9); at depth 2, 6 beats 9 on the tie
    assert tree.tokens.tolist() == [3, 5, 6, 4]
    assert tree.parents.tolist() == [-1, 0, 1, 0]
    assert tree.info.draft_calls == 0 and tree.info.lookup == (1, 2, 3)
    assert policy.capped(2).history is policy.history and policy.capped(2).build(3, expand).size == 2
    assert policy.footprint() == (4, 0)
    empty = make_policy("lookup", budget=8)
    empty.history.reset([1, 2, 3])
    assert empty.build(3, expand).size == 1


def test_make_lookup_policies_and_errors():
    merged = make_policy("talon-lookup", budget=8, mu=0.1, max_n=4, recent=2, skip=0.3)
    assert merged.talon == TalonPolicy(budget=8, mu=0.1) and merged.skip == 0.3
    assert merged.history.config == LookupConfig(max_n=4, recent=2)
    assert merged.capped(4).history is merged.history and merged.capped(4).talon.budget == 4
    assert make_policy("talon-lookup").history is not make_policy("talon-lookup").history
    with pytest.raises(ValueError, match="policy 'lookup' has no option 'mu'"):
        make_policy("lookup", mu=0.1)
    with pytest.raises(ValueError, match=r"skip must be in \(0, 1\], got 0"):
        make_policy("talon-lookup", skip=0)
    with pytest.raises(ValueError, match="budget must be an integer >= 1, got 0"):
        make_policy("lookup", budget=0)
