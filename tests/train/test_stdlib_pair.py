"""Smoke test of the stdlib pair's recipe (`python -m talon_rt.train.recipes.stdlib_pair`): a tiny pair trained for
a few seconds through the recipe's own steps."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from talon_rt.train.eagle3 import HeadSpec, rollout  # noqa: E402
from talon_rt.train.loop import TrainSpec  # noqa: E402
from talon_rt.train.recipes.stdlib_pair import data, lm, pipeline  # noqa: E402
from talon_rt.train.recipes.stdlib_pair.recipe import LMSpec, Recipe  # noqa: E402
from talon_rt.train.target_pass import target_pass, taps  # noqa: E402

TINY_LM = LMSpec(layers=6, hidden=32, heads=4, kv_heads=2, intermediate=64, vocab=384, max_positions=128)
TINY_TRAIN = TrainSpec(tokens=12 * 4 * 64, batch=4, seq_len=64, lr=3e-3, warmup_steps=2, ckpt_minutes=0.0,
                       eval_windows=4)
TINY = Recipe(
    tokenizer_vocab=384, target=TINY_LM, target_train=TINY_TRAIN,
    head=HeadSpec(draft_vocab=192, ttt_steps=3, intermediate=64), head_train=TINY_TRAIN,
    draft_lm=LMSpec(layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64, vocab=384, max_positions=128),
    draft_lm_train=TINY_TRAIN, corpus_limit=6,
)
PUBLISHED_KEYS = {
    "fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d",
    "midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight", "midlayer.post_attention_layernorm.weight",
    "midlayer.self_attn.q_proj.weight", "midlayer.self_attn.k_proj.weight", "midlayer.self_attn.v_proj.weight",
    "midlayer.self_attn.o_proj.weight", "midlayer.mlp.gate_proj.weight", "midlayer.mlp.up_proj.weight",
    "midlayer.mlp.down_proj.weight",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("stdlib_pair")
    out, work = root / "out", root / "work"
    torch.set_num_threads(1)
    pipeline.run(list(pipeline.STEPS), TINY, out, work)
    return out, work


def test_target_and_draft_lm_load_with_transformers(trained):
    from transformers import AutoTokenizer, LlamaForCausalLM

    out, _ = trained
    for name, spec in (("target", TINY.target), ("draft-lm", TINY.draft_lm)):
        model = LlamaForCausalLM.from_pretrained(out / name)
        assert model.config.num_hidden_layers == spec.layers
        assert model.config.num_key_value_heads < model.config.num_attention_heads
        assert next(model.parameters()).dtype == torch.float16
        tok = AutoTokenizer.from_pretrained(out / name)
        ids = tok("def f(x):\n    return x\n")["input_ids"]
        assert ids[0] == tok.bos_token_id == 1 and tok.eos_token_id == 2 and tok.pad_token_id == 0
        assert model(torch.tensor([ids])).logits.shape == (1, len(ids), spec.vocab)


def test_head_folder_is_published_eagle3_format(trained):
    from safetensors import safe_open

    from talon_rt.export.checkpoints import load_head, load_target

    out, work = trained
    cfg = json.loads((out / "eagle3" / "config.json").read_text())
    assert cfg["draft_vocab_size"] == TINY.head.draft_vocab < cfg["vocab_size"] == TINY.target.vocab
    with safe_open(str(out / "eagle3" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == PUBLISHED_KEYS
    target = load_target(out / "target")
    h = load_head(out / "eagle3", target)
    ids = torch.arange(len(h.d2t)) + h.d2t
    assert bool((h.d2t != 0).any()), "draft vocab must differ from the first Vd target ids"
    assert bool(h.t2d[ids].all()) and int(h.t2d.sum()) == len(ids)
    result = json.loads((work / "head" / "result.json").read_text())
    assert len(result["agreement"]["per_step"]) == 7


def test_training_time_test_equals_chain_drafting(trained):
    """Step j of the rollout at index t == the depth-j node of a draft chain through the KV-cache path."""
    from talon_rt.export.checkpoints import load_head, load_target

    out, work = trained
    target = lm.load(out / "target")
    h = load_head(out / "eagle3", load_target(out / "target"))
    ids = torch.from_numpy(data.fixed_windows(data.load(work / "data" / "heldout.npy"), 24, 1))
    tp = target_pass(target, ids, torch.arange(len(h.d2t)) + h.d2t, taps(target))
    with torch.no_grad():
        rolled = [logits for _, logits in rollout(h, ids, tp.features, 4)]
        t = 15
        # committed rows 0..t: (token x[s+1], fc(f_s)) at position s
        first = h(ids[:, 1 : t + 2], h.fuse(tp.features[:, : t + 1]))
        cache, hidden = (first.key, first.value), first.hidden_out[:, -1:]
        torch.testing.assert_close(first.logits[:, -1], rolled[0][:, t], atol=1e-4, rtol=1e-4)
        for j in range(1, 4):
            P = cache[0].shape[2]
            out_j = h(ids[:, t + 1 + j : t + 2 + j], hidden, position_ids=torch.tensor([[t + j]]),
                      mask=torch.ones(1, 1, P + 1, dtype=torch.bool), cache=cache)
            torch.testing.assert_close(out_j.logits[:, 0], rolled[j][:, t], atol=1e-4, rtol=1e-4)
            cache = (torch.cat([cache[0], out_j.key], 2), torch.cat([cache[1], out_j.value], 2))
            hidden = out_j.hidden_out


def test_resume_is_a_no_op_when_done(trained):
    out, work = trained
    before = json.loads((work / "target" / "result.json").read_text())
    pipeline.run(["target"], TINY, out, work)
    after = json.loads((work / "target" / "result.json").read_text())
    assert after["step"] == before["step"] == TINY.target_train.steps
    assert after["heldout_loss"] == pytest.approx(before["heldout_loss"], abs=1e-4)
