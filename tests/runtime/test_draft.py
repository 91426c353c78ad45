"""The draft's tree bookkeeping (scratch rows, tree_mask, positions, parent hidden) is exact: every
node's children from the batched tree round equal a replay of its path alone, one q=1 call per node,
through the same ORT draft graph. (Losslessness cannot see draft bugs: any proposal is legal.)"""
from __future__ import annotations

import numpy as np
import pytest

from talon_rt.runtime.api import Generator


@pytest.mark.parametrize("opts", [dict(policy="talon", budget=24, root_k=3, mu=0.5),
                                  dict(policy="eagle3", budget=24, eagle3_top_k=3, eagle3_depth=4)])
def test_tree_round_equals_path_replay(tiny_engine, opts):
    with Generator.open(tiny_engine, **opts) as gen:
        dec = gen._decoder
        prompt = [1] + np.random.default_rng(11).integers(3, 320, size=20).tolist()
        dec.check_prompt(prompt)
        root = dec.prefill(np.asarray(prompt, np.int64))
        P = dec.P
        dec.drafter.start_round(P)
        calls = []

        def recorder(tree, rows):
            ids, logp = dec.drafter.expand(tree, rows)
            calls.append((tree.tokens.copy(), tree.parents.copy(), rows.copy(), ids.copy(), logp.copy()))
            return ids, logp

        tree = dec.policy.build(root, recorder)
        assert tree.depth.max() >= 3, "want a tree at least 3 draft layers deep"
        root_hidden = dec.drafter.hid[dec.drafter.cap].copy()
        backend = dec.backend
        checked = 0
        for tokens, parents, rows, ids, logp in calls[1:]:          # calls[0] is the root's
            for r, node in enumerate(rows):
                path = [int(node)]
                while parents[path[-1]] > 0:
                    path.append(int(parents[path[-1]]))
                path.reverse()                                     # depth 1 .. d
                h = root_hidden[None]
                for j, n in enumerate(path):
                    out_ids, out_logp, h_out = backend.draft(np.array([tokens[n]]), h, np.array([P + j]),
                                                             np.ones((1, j + 1), bool), P + j)
                    h = h_out.copy()
                np.testing.assert_allclose(out_logp[0], logp[r], atol=2e-4)
                top = np.flatnonzero(np.abs(np.diff(out_logp[0])) > 1e-4)   # ranks not tied with the next
                assert np.array_equal(out_ids[0][top], ids[r][top])
                checked += 1
        assert checked >= 10
