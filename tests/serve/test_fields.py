"""`talon-rt serve`: the API key, GET /v1/models/{id}, and every OpenAI request field either
implemented (sampling fields, penalties, n, logprobs, the developer role) or refused with a 400 naming
it. Through the official openai client; responses equal the runtime's own generations."""
from __future__ import annotations

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
import openai  # noqa: E402

from talon_rt.runtime.api import Generator  # noqa: E402
from tests.serve.test_api import PROMPT, chat_engine, client, post, serving  # noqa: E402, F401

KEY = "sk-test-0123"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say something"}]


@pytest.fixture(scope="module")
def server(chat_engine):  # noqa: F811
    """One greedy talon instance behind the API key."""
    with serving([Generator.open(chat_engine, threads=1)], api_key=KEY) as url:
        yield url


def keyed_post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


def keyed(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)


# -- the API key ----------------------------------------------------------------------------------------

def test_the_api_key_is_needed_on_v1_routes(server):
    oai = keyed(server)
    assert [m.id for m in oai.models.list()] == ["tiny"]
    assert oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=4).choices[0].finish_reason
    for wrong in ("unused", KEY + "x"):
        with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
            client(server).models.list() if wrong == "unused" else \
                openai.OpenAI(base_url=f"{server}/v1", api_key=wrong, max_retries=0).models.list()
    for path, body in (("/v1/completions", {"model": "tiny", "prompt": PROMPT}),
                       ("/v1/chat/completions", {"model": "tiny", "messages": MESSAGES})):
        r = post(server, path, body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "AuthenticationError" and "no API key" in r.json()["error"]["message"]
    assert httpx.get(server + "/v1/models").status_code == 401
    assert httpx.get(server + "/v1/models/tiny").status_code == 401
    assert httpx.get(server + "/health").status_code == 200       # open by default
    assert httpx.get(server + "/metrics").status_code == 200


def test_auth_all_closes_health_and_metrics(chat_engine):  # noqa: F811
    with serving([Generator.open(chat_engine, threads=1)], api_key=KEY, protect_all=True) as url:
        for path in ("/health", "/metrics"):
            assert httpx.get(url + path).status_code == 401
            assert httpx.get(url + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_no_key_configured_means_open(chat_engine):  # noqa: F811
    with serving([Generator.open(chat_engine, threads=1)]) as url:
        assert [m.id for m in client(url).models.list()] == ["tiny"]


def test_serve_cli_api_key_settings(chat_engine, monkeypatch, capsys):  # noqa: F811
    from talon_rt.runtime.cli import main
    monkeypatch.setenv("TALON_RT_API_KEY", " ")
    assert main(["serve", "--engine", str(chat_engine)]) != 0
    assert "TALON_RT_API_KEY: the API key is empty" in capsys.readouterr().err
    monkeypatch.delenv("TALON_RT_API_KEY")
    assert main(["serve", "--engine", str(chat_engine), "--auth-all"]) != 0
    assert "--auth-all needs an API key" in capsys.readouterr().err


def test_startup_line_names_model_engine_and_address(chat_engine):  # noqa: F811
    import argparse

    from talon_rt.runtime.commands.serve import startup_line
    from talon_rt.runtime.serve.pool import Pool
    pool = Pool([Generator.open(chat_engine, threads=1)], 4)
    try:
        args = argparse.Namespace(engine=str(chat_engine), host="127.0.0.1", port=8123, auth_all=False)
        line = startup_line("tiny", args, pool, KEY)
    finally:
        pool.close()
    assert line.startswith("talon-rt serve: model 'tiny' from engine ") and str(chat_engine) in line
    assert "http://127.0.0.1:8123/v1" in line and "API key required on /v1" in line


# -- /v1/models/{id} --------------------------------------------------------------------------------------

def test_retrieve_a_model(server):
    oai = keyed(server)
    assert oai.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError, match="'other' is not served here"):
        oai.models.retrieve("other")


# -- sampling fields and penalties: equal to the runtime with the same options -----------------------------

FIELDS = {
    "repetition_penalty": dict(repetition_penalty=1.5),
    "frequency_penalty": dict(frequency_penalty=1.0),
    "presence_penalty": dict(presence_penalty=1.5),
    "top_k": dict(temperature=1.0, top_k=3, seed=11),
    "min_p": dict(temperature=1.0, min_p=0.2, seed=11),
}
NATIVE = ("frequency_penalty", "presence_penalty", "temperature", "seed")   # the openai client's own params


@pytest.mark.parametrize("field", list(FIELDS))
@pytest.mark.parametrize("chat", [False, True])
def test_sampling_fields_equal_the_runtime(server, chat_engine, field, chat):  # noqa: F811
    opts = FIELDS[field]
    with Generator.open(chat_engine, threads=1, **opts) as gen:
        want = gen.chat(MESSAGES, max_new_tokens=24) if chat else gen.generate(PROMPT, max_new_tokens=24)
    with Generator.open(chat_engine, threads=1) as gen:
        plain = gen.chat(MESSAGES, max_new_tokens=24) if chat else gen.generate(PROMPT, max_new_tokens=24)
    if "temperature" not in opts:
        assert want.tokens != plain.tokens, f"{field} changes nothing here: the test would not see it ignored"
    native = {k: v for k, v in opts.items() if k in NATIVE}
    extra = {"x_talon": {"return_tokens": True}, **{k: v for k, v in opts.items() if k not in NATIVE}}
    oai = keyed(server)
    if chat:
        res = oai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, extra_body=extra, **native)
    else:
        res = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, extra_body=extra, **native)
    assert res.model_extra["x_talon"]["tokens"] == want.tokens


def test_bad_sampling_fields_are_400s(server):
    for body, match in (({"repetition_penalty": 0}, "option repetition_penalty"),
                        ({"frequency_penalty": 3}, "option frequency_penalty"),
                        ({"min_p": 2}, "option min_p"), ({"top_k": -1}, "option top_k")):
        r = keyed_post(server, "/v1/completions", {"model": "tiny", "prompt": PROMPT, **body})
        assert r.status_code == 400 and match in r.json()["error"]["message"], r.text


# -- n ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_n_choices_are_sequential_samples(server, chat_engine, stream):  # noqa: F811
    with Generator.open(chat_engine, threads=1, temperature=1.0, seed=5) as gen:
        want = [gen.decode(gen.generate(PROMPT, max_new_tokens=16).tokens) for _ in range(3)]
    assert len(set(want)) > 1
    res = keyed(server).completions.create(model="tiny", prompt=PROMPT, max_tokens=16, n=3, temperature=1.0,
                                           seed=5, stream=stream, stream_options={"include_usage": True} if stream else None)
    if not stream:
        assert [c.text for c in sorted(res.choices, key=lambda c: c.index)] == want
        assert res.usage.completion_tokens >= 3
        return
    chunks = list(res)
    texts = ["", "", ""]
    finals = 0
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.text
            finals += ch.finish_reason is not None
    assert texts == want and finals == 3 and chunks[-1].usage.completion_tokens >= 3


# -- logprobs ---------------------------------------------------------------------------------------------

def exact_logprobs(gen: Generator, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """The target's log-softmax of each generated token, from one causal call over prompt + tokens."""
    ids = np.asarray(prompt + tokens, np.int64)
    q = ids.shape[0]
    logits = gen._decoder.backend.target(ids, np.arange(q), np.tril(np.ones((q, q), bool)), 0).astype(np.float64)
    lp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    return lp[np.arange(len(prompt) - 1, q - 1), tokens]


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_are_the_targets(server, chat_engine, stream):  # noqa: F811
    with Generator.open(chat_engine, threads=1, policy="ar") as gen:
        want = gen.chat(MESSAGES, max_new_tokens=20, logprobs=3)
        exact = exact_logprobs(gen, gen.encode(gen.render_chat(MESSAGES)), want.tokens)
        texts = [gen.token_text(t) for t in want.tokens]
    np.testing.assert_allclose([t.logprob for t in want.logprobs], exact, atol=1e-4)
    res = keyed(server).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=20, logprobs=True,
                                                top_logprobs=3, stream=stream)   # the server runs talon
    content = [e for c in res for e in (c.choices[0].logprobs.content if c.choices and c.choices[0].logprobs else [])] \
        if stream else res.choices[0].logprobs.content
    assert [e.token for e in content] == texts
    np.testing.assert_allclose([e.logprob for e in content], exact, atol=1e-4)
    for e, t in zip(content, want.logprobs):
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].logprob >= e.logprob - 1e-6   # greedy: top-1
        assert e.top_logprobs[0].token == e.token and bytes(e.bytes).decode() == e.token
        np.testing.assert_allclose([x.logprob for x in e.top_logprobs], [v for _, v in t.top], atol=1e-4)


@pytest.mark.parametrize("stream", [False, True])
def test_completion_logprobs(server, chat_engine, stream):  # noqa: F811
    with Generator.open(chat_engine, threads=1, policy="ar") as gen:
        want = gen.generate(PROMPT, max_new_tokens=12, logprobs=2)
    res = keyed(server).completions.create(model="tiny", prompt=PROMPT, max_tokens=12, logprobs=2, stream=stream)
    parts = [c.choices[0].logprobs for c in res if c.choices and c.choices[0].logprobs] if stream \
        else [res.choices[0].logprobs]
    got = [v for p in parts for v in p.token_logprobs]
    np.testing.assert_allclose(got, [t.logprob for t in want.logprobs], atol=1e-4)
    tops = [d for p in parts for d in p.top_logprobs]
    assert len(tops) == len(want.tokens) and all(len(d) <= 2 for d in tops)
    offsets = [o for p in parts for o in p.text_offset]
    assert offsets == sorted(offsets) and offsets[0] == 0


def test_bad_logprobs_fields(server):
    for path, body, match in (
            ("/v1/chat/completions", {"messages": MESSAGES, "top_logprobs": 2}, "field top_logprobs: needs logprobs"),
            ("/v1/chat/completions", {"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, "field top_logprobs"),
            ("/v1/completions", {"prompt": PROMPT, "logprobs": 6}, "field logprobs")):
        r = keyed_post(server, path, {"model": "tiny", **body})
        assert r.status_code == 400 and match in r.json()["error"]["message"], r.text


# -- refusals and the developer role ----------------------------------------------------------------------

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("kwargs, field", [
    (dict(tools=[TOOL]), "tools"),
    (dict(tool_choice="required"), "tool_choice"),
    (dict(response_format={"type": "json_object"}), "response_format"),
    (dict(logit_bias={"5": 10}), "logit_bias"),
    (dict(extra_body={"mirostat": 2}), "mirostat"),
])
def test_unsupported_chat_fields_are_refused_by_name(server, kwargs, field):
    with pytest.raises(openai.BadRequestError, match=f"field {field}: "):
        keyed(server).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, **kwargs)


@pytest.mark.parametrize("kwargs, field", [
    (dict(echo=True), "echo"), (dict(suffix="x"), "suffix"), (dict(best_of=2), "best_of"),
    (dict(extra_body={"foo": 1}), "foo"),
    (dict(extra_body={"stream_options": {"continuous_usage_stats": True}}), "stream_options.continuous_usage_stats"),
])
def test_unsupported_completion_fields_are_refused_by_name(server, kwargs, field):
    with pytest.raises(openai.BadRequestError, match=f"field {field}: "):
        keyed(server).completions.create(model="tiny", prompt=PROMPT, max_tokens=4, **kwargs)
    r = keyed_post(server, "/v1/completions", {"model": "tiny", "prompt": PROMPT, "stream": True,
                                               **(kwargs.get("extra_body") or kwargs)})
    assert r.status_code == 400 and f"field {field}" in r.json()["error"]["message"]


def test_fields_that_ask_for_nothing_are_accepted(server):
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, "tools": [], "tool_choice": "none",
            "response_format": {"type": "text"}, "logit_bias": {}, "parallel_tool_calls": False, "user": "u-1",
            "logprobs": False, "stream_options": None}
    assert keyed_post(server, "/v1/chat/completions", body).status_code == 200
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 4, "best_of": 1, "echo": False, "suffix": None}
    assert keyed_post(server, "/v1/completions", body).status_code == 200


def test_developer_role_is_a_system_message(server, chat_engine):  # noqa: F811
    with Generator.open(chat_engine, threads=1) as gen:
        want = gen.chat(MESSAGES, max_new_tokens=16).text
    developer = [{"role": "developer", "content": MESSAGES[0]["content"]}, MESSAGES[1]]
    res = keyed(server).chat.completions.create(model="tiny", messages=developer, max_tokens=16)
    assert res.choices[0].message.content == want
