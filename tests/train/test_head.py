"""Smoke test of the head recipe (`python -m talon_rt.train.recipes.head`) on a tiny chat target, in seconds."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.train.test_stdlib_pair import PUBLISHED_KEYS  # noqa: E402
from talon_rt.train import corpus  # noqa: E402
from talon_rt.train.eagle3 import HeadSpec  # noqa: E402
from talon_rt.train.loop import TrainSpec  # noqa: E402
from talon_rt.train.recipes.head import features, generate, pipeline, prompts  # noqa: E402
from talon_rt.train.recipes.head.dataset import Split  # noqa: E402
from talon_rt.train.recipes.head.recipe import DataSpec, HeadRecipe  # noqa: E402
from talon_rt.train.target_pass import taps  # noqa: E402

CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant\n{% endif %}")
TINY = HeadRecipe(
    data=DataSpec(generate=generate.GenerateSpec(batch=4, max_new_tokens=12, sample_every=2),
                  train_prompts=8, valid_prompts=2, heldout_prompts=4),
    head=HeadSpec(draft_vocab=64, ttt_steps=3, intermediate=0),
    train=TrainSpec(tokens=6 * 256, batch=2, seq_len=128, lr=3e-3, warmup_steps=2, ckpt_minutes=0.0),
    eval_steps=3,
)
STDLIB = {  # a stand-in standard library: documented public functions, one in a held-out file
    "alpha.py": '"""Module."""\n\ndef add(a, b):\n    """Return the sum of two numbers, converting both to int first."""\n'
                '    return int(a) + int(b)\n\n\ndef scale(xs, k):\n    """Multiply every element of the '
                'list by the factor k and return a new list."""\n    return [x * k for x in xs]\n',
    "pkg/beta.py": 'def join_words(words):\n    """Join the given words with single spaces between them, '
                   'skipping empty ones."""\n    return " ".join(w for w in words if w)\n',
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from talon_rt.export.tiny import make_tiny_pair

    root = tmp_path_factory.mktemp("train_head")
    target, _ = make_tiny_pair(root / "pair", vocab=320, hidden=64, layers=6, heads=4, kv_heads=2, head_dim=16,
                               intermediate=128, tie_embeddings=True)
    cfg = json.loads((target / "tokenizer_config.json").read_text())
    (target / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": CHAT_TEMPLATE}))
    stdlib = root / "stdlib"
    for rel, text in STDLIB.items():
        (stdlib / rel).parent.mkdir(parents=True, exist_ok=True)
        (stdlib / rel).write_text(text)
    out, work = root / "head", root / "work"
    torch.set_num_threads(1)
    pipeline.run(list(pipeline.STEPS), TINY, target, out, work, stdlib_root=stdlib)
    return target, out, work, stdlib


def test_head_is_published_eagle3_layout_and_loads(run):
    from safetensors import safe_open

    from talon_rt.export.checkpoints import load_head
    from talon_rt.train.recipes.head import target as target_mod

    target, out, work, _ = run
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == PUBLISHED_KEYS
        assert f.get_tensor("fc.weight").dtype == torch.float16
    lm, _ = target_mod.load(target)
    h = load_head(out, target_mod.view(lm))
    ids = torch.arange(len(h.d2t)) + h.d2t
    train = Split(pipeline.data_folder(work, "train"))
    counts = np.bincount(train.target_tokens(), minlength=320)
    assert len(ids) == TINY.head.draft_vocab and int(h.t2d.sum()) == len(ids)
    assert counts[ids.numpy()].min() >= np.delete(counts, ids.numpy()).max(), "draft vocab = most frequent tokens"
    assert (work / "latest" / "model.safetensors").is_file(), "every checkpoint exports the current head"


def test_data_is_the_targets_own_greedy_answers(run):
    from talon_rt.train.recipes.head import target as target_mod

    target, _, work, _ = run
    lm, tok = target_mod.load(target)
    heldout = Split(pipeline.data_folder(work, "heldout"))
    c = heldout.convs[0]
    conv = heldout.tokens[c.shard][c.start:c.start + c.length]
    prompt = torch.from_numpy(conv[:c.prompt_length])[None]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        again = lm.generate(input_ids=prompt, max_new_tokens=c.length - c.prompt_length, do_sample=False,
                            eos_token_id=target_mod.stop_ids(lm, tok), pad_token_id=2)
    assert again[0].tolist() == conv.tolist()
    # the cache holds the teacher-forced pass of the whole conversation (batched there: bf16 rounding)
    f, greedy = features.forward(lm, torch.from_numpy(conv)[None], taps(lm))
    cached = features.from_bits(heldout.feats[c.shard][c.start:c.start + c.length])
    assert cached.shape == (c.length, 4 * lm.config.hidden_size)
    torch.testing.assert_close(cached.float(), f[0].float(), atol=0.05, rtol=0.05)
    same = heldout.greedy[c.shard][c.start:c.start + c.length] == greedy[0].numpy()
    assert same.mean() > 0.95


def test_label_mask_covers_exactly_the_response(run):
    _, _, work, _ = run
    train = Split(pipeline.data_folder(work, "train"))
    rows = [0, 1]
    ids, tp, mask = train.batch(rows, torch.randn(TINY.head.draft_vocab, train.hidden), pad=2)
    for r, i in enumerate(rows):
        c = train.convs[i]
        want = torch.zeros(ids.shape[1], dtype=torch.bool)
        want[c.prompt_length - 1:c.length - 1] = True  # label p predicts token p+1: a response token
        assert torch.equal(mask[r], want)
    assert torch.allclose(tp.soft.sum(-1), torch.ones(ids.shape))


def test_results_readme_and_resume(run):
    target, out, work, _ = run
    result = json.loads((work / "head" / "result.json").read_text())
    assert result["step"] == TINY.train.steps
    ev = json.loads((work / "head" / "eval.json").read_text())
    assert len(ev["per_step"]) == TINY.eval_steps and ev["positions"] > 0
    curve = [json.loads(x) for x in (work / "head" / "curve.jsonl").read_text().splitlines()]
    assert curve[-1]["step"] == TINY.train.steps
    text = (out / "README.md").read_text()
    assert f"--model {target}" in text and "| stdlib |" in text and "Held-out agreement" in text
    pipeline.run(["train"], TINY, target, out, work)  # resumes at the last step: nothing to do
    assert json.loads((work / "head" / "result.json").read_text())["step"] == result["step"]


def test_prompt_sources_are_disjoint_from_the_heldout_set(run):
    *_, stdlib = run
    train, valid = prompts.training_prompts(stdlib)
    held = prompts.heldout_prompts()
    held_topics = {p.id.split(":")[1] for p in held}
    assert held_topics and all(prompts.topic_is_heldout(t) for t in held_topics)
    assert not {p.text for p in held} & {p.text for p in train + valid}
    assert not any(t in p.text for p in train + valid if p.source == "topic" for t in held_topics)
    assert {p.source for p in train} == {"stdlib", "word", "topic"}


def test_stdlib_prompts_skip_heldout_files(tmp_path, monkeypatch):
    for rel, text in STDLIB.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(corpus, "is_heldout", lambda rel: rel == "pkg/beta.py")
    rows = prompts.stdlib_prompts(tmp_path)
    assert sorted(p.id.split(":")[2] for p in rows) == ["add", "scale"]


def test_readme_command_names_every_training_flag_off_the_default():
    from dataclasses import replace
    from pathlib import Path

    from talon_rt.train.recipes.head import readme
    from talon_rt.train.recipes.head.__main__ import main
    from talon_rt.train.recipes.head.recipe import DEFAULT

    base = readme.command(DEFAULT, Path("m"), Path("o"), Path("w"))
    assert base == ".venv/bin/python -m talon_rt.train.recipes.head --model m --out o --work w"
    short = replace(DEFAULT, train=replace(DEFAULT.train, tokens=230000, lr=1e-3, batch=2, warmup_steps=10))
    assert readme.command(short, Path("m"), Path("o"), Path("w")) == \
        base + " --train-tokens 230000 --lr 0.001 --batch-tokens 1024 --warmup-steps 10"
    with pytest.raises(SystemExit):
        main(["train", "--model", "m", "--out", "o", "--batch-tokens", "100"])
    with_knobs = replace(DEFAULT, head=replace(DEFAULT.head, hard_weight=0.5), early_steps=2, early_fraction=0.8,
                         soft_fp32=True, train_minutes=30.0, data=replace(DEFAULT.data, tokens="data/conv"))
    assert readme.command(with_knobs, Path("m"), Path("o"), Path("w")) == base + (
        " --early-steps 2 --early-fraction 0.8 --hard-weight 0.5 --soft-fp32 --minutes 30 --tokens data/conv")


@pytest.mark.parametrize("flags", [["--early-fraction", "0.5"], ["--early-steps", "0"],
                                   ["--early-steps", "2", "--early-fraction", "1.5"], ["--hard-weight", "-1"],
                                   ["--minutes", "0"], ["--minutes", "nan"]])
def test_recipe_flags_are_checked(flags, capsys):
    from talon_rt.train.recipes.head.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "m", "--out", "o", *flags])
    assert e.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_conversations_kept_as_token_ids_rebuild_the_shards(run, tmp_path):
    from talon_rt.export.errors import ExportError
    from talon_rt.train.recipes.head import tokens

    _, _, work, _ = run
    kept = tmp_path / "kept"
    counts = {s: tokens.save(work, kept, s) for s in pipeline.SPLITS}
    assert counts["train"]["conversations"] == 8 and counts["train"]["tokens"] > 0
    fresh = tmp_path / "fresh"
    n = tokens.restore(kept, fresh, pipeline.SPLITS)
    assert n == sum(c["shards"] for c in counts.values()) > 0
    for split in pipeline.SPLITS:
        old = generate.shards(pipeline.data_folder(work, split))
        new = generate.shards(pipeline.data_folder(fresh, split))
        assert [p.name for p in old] == [p.name for p in new]
        for a, b in zip(old, new):
            za, zb = generate.load_shard(a), generate.load_shard(b)
            assert za.keys() == zb.keys() and all(np.array_equal(za[k], zb[k]) for k in za)
    assert tokens.restore(kept, fresh, pipeline.SPLITS) == 0, "shards already there are kept"
    (kept / "tokens-valid.npz").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="tokens-valid.npz"):
        tokens.restore(kept, tmp_path / "other", pipeline.SPLITS)


def test_rollout_loss_knobs():
    """The hard cross-entropy adds to the soft one, a shorter rollout has fewer (positive) terms, and
    target_to_draft inverts draft_to_target."""
    from talon_rt.export.config import HeadConfig
    from talon_rt.export.reference import Eagle3Head
    from talon_rt.train import eagle3
    from talon_rt.train.target_pass import TargetPass

    torch.manual_seed(0)

    V, Vd, H = 96, 32, 32
    head = Eagle3Head(HeadConfig(hidden_size=H, intermediate_size=64, num_heads=2, num_kv_heads=1, head_dim=16,
                                 vocab_size=V, draft_vocab_size=Vd))
    ids = torch.sort(torch.randperm(V)[:Vd]).values
    with torch.no_grad():
        head.d2t.copy_(ids - torch.arange(Vd))
        head.t2d.zero_()
        head.t2d[ids] = True
    head.set_embedding(torch.randn(V, H))
    inv = head.target_to_draft()
    assert torch.equal(head.draft_to_target(inv[ids]), ids) and int((inv >= 0).sum()) == Vd
    B, T = 2, 12
    tokens = ids[torch.randint(0, Vd, (B, T))]
    tp = TargetPass(torch.randn(B, T, 3 * H), torch.softmax(torch.randn(B, T, Vd), -1), tokens)
    spec = eagle3.HeadSpec(draft_vocab=Vd, ttt_steps=3, intermediate=64)
    soft = eagle3.rollout_loss(head, tokens, tp, spec)
    hard = eagle3.rollout_loss(head, tokens, tp, eagle3.HeadSpec(draft_vocab=Vd, ttt_steps=3, hard_weight=1.0))
    one = eagle3.rollout_loss(head, tokens, tp, spec, steps=1)
    assert float(hard) > float(soft) > float(one) > 0


def test_the_committed_conversations_restore(tmp_path):
    """data/smollm2-eagle3 (the SmolLM2 head's data as token ids) rebuilds shards the recipe reads:
    the counts its README gives, every conversation a rendered prompt then a response."""
    from pathlib import Path

    from talon_rt.train.recipes.head import tokens

    kept = Path(__file__).resolve().parents[2] / "data" / "smollm2-eagle3"
    assert tokens.restore(kept, tmp_path, pipeline.SPLITS) == 3 + 1 + 98
    counts = {}
    for split in pipeline.SPLITS:
        shards = [generate.load_shard(p) for p in generate.shards(pipeline.data_folder(tmp_path, split))]
        counts[split] = sum(len(z["lengths"]) for z in shards)
        for z in shards:
            assert z["tokens"].dtype == np.int32 and z["tokens"].shape[0] == int(z["lengths"].sum())
            assert (z["prompt_lengths"] < z["lengths"]).all() and (z["starts"][1:] == np.cumsum(z["lengths"])[:-1]).all()
    assert counts == {"heldout": 88, "valid": 32, "train": 3122}
