"""An fp16 engine (fp16 KV, features and hidden in the runtime's buffers) is lossless too, in each graph
flavour: talon with the oracle draft reproduces ar's greedy output, divergence only at a float near-tie."""
from __future__ import annotations

import numpy as np
import pytest

from talon_rt.runtime.api import Generator
from tests.runtime.test_lossless import OracleDraft, check_equal


@pytest.fixture(scope="module", params=["standard", "gqa"])
def engine16(request, tiny_pair, tmp_path_factory):
    from talon_rt.export.build import ExportOptions, export_engine
    model_dir, draft_dir = tiny_pair
    opts = ExportOptions(dtype="float16", max_seq_len=256, max_tree_tokens=64, max_prefill_chunk=128, k_max=32,
                         flavour=request.param)
    return export_engine(model_dir, draft_dir, tmp_path_factory.mktemp("tiny16") / "tiny16", opts, name="tiny16")


def test_fp16_talon_equals_ar(engine16):
    prompts = [[1] + np.random.default_rng(i).integers(3, 320, size=10 + i).tolist() for i in range(6)]
    notes = []
    with Generator.open(engine16, policy="ar") as ar, Generator.open(engine16, policy="talon") as gen:
        assert gen._decoder.backend.kv_t.dtype == np.float16
        for i, p in enumerate(prompts):
            want = ar.generate(p, max_new_tokens=48).tokens
            oracle = OracleDraft(gen._decoder.backend if i == 0 else oracle.inner, p + want)
            gen._decoder.backend = gen._decoder.drafter.backend = oracle
            got = gen.generate(p, max_new_tokens=48).tokens
            note = check_equal(ar, p, got, want, f"fp16 prompt {i}")
            if note:
                notes.append(note)
    print("\n".join(notes) or "fp16: all prompts equal")
