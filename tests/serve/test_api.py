"""`talon-rt serve`'s HTTP API, in process: uvicorn on a loopback socket in a thread, over the tiny engines.

Responses equal the runtime's own generations token for token; the official openai client reads them
unchanged; the fault cases (malformed JSON, a prompt longer than the context, a full queue, a client that
goes away mid-stream, an instance that raises) each get their status and leave the server serving.
"""
from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import httpx
import pytest

pytest.importorskip("fastapi")
import uvicorn  # noqa: E402
from openai import OpenAI  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from talon_rt.runtime.api import Generator  # noqa: E402
from talon_rt.runtime.serve.app import create_app  # noqa: E402
from talon_rt.runtime.serve.pool import Pool  # noqa: E402

PROMPT = [1, 17, 42, 99, 5]
# a ChatML-like template over the tiny tokenizer's plain text
TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


@dataclass
class Served:
    url: str                   # base URL, http://127.0.0.1:<port>
    server: uvicorn.Server
    thread: threading.Thread   # the one running the server


@contextmanager
def served(app: Any, server_class: type = uvicorn.Server, **config: Any) -> Iterator[Served]:
    """`app` on 127.0.0.1 (a free port) in a thread; config: more uvicorn.Config options."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = server_class(uvicorn.Config(app, log_level="warning", lifespan="off", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextmanager
def serving(generators: list, max_queue: int = 8, model: str = "tiny", **app_options: Any) -> Iterator[str]:
    """A server on 127.0.0.1 (a free port) over `generators`; yields its base URL. app_options:
    create_app's keyword options (api_key, protect_all, max_body_bytes, body_timeout_s)."""
    pool = Pool(generators, max_queue)
    try:
        with served(create_app(pool, model, **app_options)) as s:
            yield s.url
    finally:
        pool.close()


@pytest.fixture(scope="module")
def chat_engine(tiny_engine, tmp_path_factory):
    """`tiny_engine` with a chat template in its manifest (stop at token 3 as the end of turn)."""
    out = tmp_path_factory.mktemp("chat") / "tiny-chat"
    shutil.copytree(tiny_engine, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["tokenizer"].update(chat_template=TEMPLATE, stop_ids=[*manifest["tokenizer"]["eos_ids"], 3])
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def server(chat_engine):
    """Two instances of the chat engine (greedy talon, the manifest's defaults)."""
    with serving([Generator.open(chat_engine, threads=1) for _ in range(2)]) as url:
        yield url


@pytest.fixture(scope="module")
def reference(chat_engine):
    with Generator.open(chat_engine, threads=1) as gen:
        yield gen


def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def post(url: str, path: str, body: Any, **kw: Any) -> httpx.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + path, content=data, headers={"content-type": "application/json"}, timeout=60, **kw)


def sse_events(lines: Iterator[str]) -> list[Any]:
    events = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def health(url: str) -> dict:
    return httpx.get(url + "/health").json()


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


# -- the API --------------------------------------------------------------------------------------------

def test_models_health_and_metrics(server):
    assert [m.id for m in client(server).models.list()] == ["tiny"]
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["instances"] == 2 and health["waiting"] == 0
    r = httpx.get(server + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"talon_requests", "talon_queue_depth", "talon_tokens_per_second", "talon_tau", "talon_errors",
            "talon_instances_busy"} <= names


def test_completion_equals_the_runtime(server, reference):
    want = reference.generate(PROMPT, max_new_tokens=40)
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 40,
                                         "x_talon": {"return_tokens": True}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["x_talon"]["tokens"] == want.tokens
    assert body["choices"][0]["text"] == reference.decode(want.tokens)
    assert body["choices"][0]["finish_reason"] == {"eos": "stop", "max_new_tokens": "length"}[want.stop_reason]
    assert body["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": len(want.tokens),
                             "total_tokens": len(PROMPT) + len(want.tokens)}
    stats = body["x_talon"]["stats"]
    assert body["x_talon"]["policy"] == reference.options.policy and stats["tau"] >= 1.0 and stats["tokens_per_s"] > 0


def test_text_prompt_and_stream_through_the_openai_client(server, reference):
    want = reference.generate_text("hello world", max_new_tokens=30)
    oai = client(server)
    whole = oai.completions.create(model="tiny", prompt="hello world", max_tokens=30)
    assert whole.choices[0].text == want.text
    chunks = list(oai.completions.create(model="tiny", prompt="hello world", max_tokens=30, stream=True,
                                         stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want.text
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].model_extra["x_talon"]["stats"]["generated"] == len(want.tokens)
    assert chunks[-1].usage.completion_tokens == len(want.tokens) and not chunks[-1].choices


def test_chat_stream_and_whole_equal_generator_chat(server, reference):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say something"}]
    want = reference.chat(messages, max_new_tokens=40)
    oai = client(server)
    whole = oai.chat.completions.create(model="tiny", messages=messages, max_tokens=40,
                                        extra_body={"x_talon": {"return_tokens": True}})
    assert whole.choices[0].message.content == want.text and whole.choices[0].message.role == "assistant"
    assert whole.model_extra["x_talon"]["tokens"] == want.tokens
    assert whole.choices[0].finish_reason == ("stop" if want.stop_reason == "eos" else "length")
    stream = list(oai.chat.completions.create(model="tiny", messages=messages, max_tokens=40, stream=True))
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in stream) == want.text
    assert stream[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_chat_on_an_engine_without_a_template_is_a_400(tiny_engine):
    with serving([Generator.open(tiny_engine, threads=1)]) as url:
        r = post(url, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "InputError"
    assert "no chat template" in r.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_end_the_text(server, reference, stream):
    full = reference.generate_text("hello world", max_new_tokens=40).text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip(), full
    want = full[:full.index(stop)]
    oai = client(server)
    res = oai.completions.create(model="tiny", prompt="hello world", max_tokens=40, stop=[stop, "\x00never"],
                                 stream=stream)
    chunks = list(res) if stream else [res]
    assert "".join(c.choices[0].text for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_sampling_options_and_seed(server, chat_engine):
    with Generator.open(chat_engine, threads=1, temperature=1.0, top_p=0.9, seed=7) as gen:
        want = gen.generate(PROMPT, max_new_tokens=24).tokens
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 24, "temperature": 1.0, "top_p": 0.9, "seed": 7,
            "x_talon": {"return_tokens": True}}
    got = [post(server, "/v1/completions", body).json()["x_talon"]["tokens"] for _ in range(2)]
    assert got == [want, want]          # a seeded request starts its sampler afresh


@pytest.mark.parametrize("policy", ["ar", "chain", "eagle3", "lookup", "talon-lookup"])
def test_x_talon_policy_is_lossless(server, reference, policy):
    want = reference.generate(PROMPT, max_new_tokens=30).tokens
    body = post(server, "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 30,
                                            "x_talon": {"policy": policy, "budget": 12, "return_tokens": True}}).json()
    assert body["x_talon"]["policy"] == policy and body["x_talon"]["budget"] == 12
    assert body["x_talon"]["tokens"] == want


# -- bad requests: 400 with the runtime's named error, and the server goes on ----------------------------

@pytest.mark.parametrize("body, status, kind, match", [
    (b"{not json", 400, "InputError", "request body is not JSON"),
    (b"[1, 2]", 400, "InputError", "expected a JSON object"),
    ({"prompt": "x"}, 400, "InputError", "field model"),
    ({"model": "tiny", "prompt": list(range(3, 300))}, 400, "InputError", "does not fit the context"),
    ({"model": "tiny", "prompt": [1, 100000]}, 400, "InputError", "outside the vocabulary"),
    ({"model": "tiny", "prompt": []}, 400, "InputError", "prompt is empty"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "OptionError", "max_new_tokens"),
    ({"model": "tiny", "prompt": "x", "temperature": -1}, 400, "OptionError", "option temperature"),
    ({"model": "tiny", "prompt": "x", "x_talon": {"budget": 1000}}, 400, "OptionError", "max_tree_tokens"),
    ({"model": "tiny", "prompt": "x", "x_talon": {"policy": "magic"}}, 400, "OptionError", "unknown policy"),
    ({"model": "tiny", "prompt": "x", "x_talon": {"threads": 4}}, 400, "InputError", "x_talon.threads"),
    ({"model": "tiny", "prompt": "x", "n": 0}, 400, "InputError", "field n"),
    ({"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "InputError", "field stop"),
    ({"model": "other", "prompt": "x"}, 404, "NotFound", "not served here"),
])
def test_bad_requests(server, body, status, kind, match):
    for stream in (False, True):
        data = body if isinstance(body, bytes) else {**body, "stream": stream}
        r = post(server, "/v1/completions", data)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["type"] == kind and match in err["message"], err
    assert post(server, "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 4}).status_code == 200


def test_bad_chat_messages(server):
    r = post(server, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400 and "messages.0.role" in r.json()["error"]["message"]
    r = post(server, "/v1/chat/completions", {"model": "tiny", "messages": []})
    assert r.status_code == 400 and "field messages" in r.json()["error"]["message"]


# -- instances, the queue, cancellation, failures --------------------------------------------------------

class Wrapped:
    """A Generator whose generations run through `hook(generate, ids, n, on_tokens)` (test double)."""

    def __init__(self, gen: Generator, hook: Callable[..., Any]):
        self._gen, self._hook = gen, hook
        self.results: list[Any] = []

    def generate(self, ids, max_new_tokens=None, on_tokens=None):
        res = self._hook(self._gen.generate, ids, max_new_tokens, on_tokens)
        self.results.append(res)
        return res

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gen, name)


def slowed(delay_s: float) -> Callable[..., Any]:
    def hook(generate, ids, n, on_tokens):
        def slow(new):
            time.sleep(delay_s)
            return on_tokens(new)
        return generate(ids, n, slow)
    return hook


def test_instances_run_concurrently(chat_engine):
    gens = [Wrapped(Generator.open(chat_engine, threads=1), slowed(0.02)) for _ in range(2)]
    with serving(gens) as url:
        out: list[dict] = []
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 12}
        threads = [threading.Thread(target=lambda: out.append(post(url, "/v1/completions", body).json()))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(out) == 4 and len({json.dumps(o["choices"]) for o in out}) == 1
    assert {o["x_talon"]["instance"] for o in out} == {0, 1}


def test_queue_full_is_a_429_with_retry_after(chat_engine):
    gate = threading.Event()

    def held(generate, ids, n, on_tokens):
        assert gate.wait(60)
        return generate(ids, n, on_tokens)

    with serving([Wrapped(Generator.open(chat_engine, threads=1), held)], max_queue=1) as url:
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 4}
        first = []
        waiting = [threading.Thread(target=lambda: first.append(post(url, "/v1/completions", body)))
                   for _ in range(2)]
        waiting[0].start()                       # runs (held by the gate)
        wait_until(lambda: health(url)["busy"] == 1, "the first request to start")
        waiting[1].start()                       # waits in the queue
        wait_until(lambda: health(url)["waiting"] == 1, "the second request to queue")
        r = post(url, "/v1/completions", body)
        assert r.status_code == 429 and r.json()["error"]["type"] == "QueueFull"
        assert int(r.headers["retry-after"]) >= 1
        assert metric(url, "talon_queue_depth") == 1
        gate.set()
        for t in waiting:
            t.join()
        assert [x.status_code for x in first] == [200, 200]
        assert post(url, "/v1/completions", body).status_code == 200


def test_client_disconnect_cancels_the_generation(chat_engine):
    gen = Wrapped(Generator.open(chat_engine, threads=1), slowed(0.05))
    with serving([gen]) as url:
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 200, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            next(r.iter_lines())                 # the first chunk arrived; then the client goes away
        deadline = time.monotonic() + 20
        while not gen.results and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gen.results and gen.results[0].stop_reason == "cancelled", gen.results
        assert len(gen.results[0].tokens) < 100
        assert metric(url, "talon_cancelled_total") == 1
        ok = post(url, "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 4})
        assert ok.status_code == 200 and httpx.get(url + "/health").json()["busy"] == 0


def test_a_waiting_request_whose_client_left_never_runs(chat_engine):
    gate = threading.Event()

    def held(generate, ids, n, on_tokens):
        assert gate.wait(60)
        return generate(ids, n, on_tokens)

    gen = Wrapped(Generator.open(chat_engine, threads=1), held)
    with serving([gen]) as url:
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 4}
        running = threading.Thread(target=lambda: post(url, "/v1/completions", body))
        running.start()
        wait_until(lambda: health(url)["busy"] == 1, "the first request to start")
        with pytest.raises(httpx.ReadTimeout):   # queued behind the held one; the client gives up
            httpx.post(url + "/v1/completions", json=body, timeout=0.5)
        wait_until(lambda: metric(url, "talon_cancelled_total") == 1, "the handler to see the client leave")
        gate.set()
        running.join()
        wait_until(lambda: health(url)["waiting"] == 0 and health(url)["busy"] == 0, "the queue to drain")
        assert len(gen.results) == 1             # only the held request generated
        assert metric(url, "talon_cancelled_total") == 1


def test_an_instance_that_raises_fails_only_its_request(chat_engine):
    calls = []

    def flaky(generate, ids, n, on_tokens):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated engine fault")
        return generate(ids, n, on_tokens)

    with serving([Wrapped(Generator.open(chat_engine, threads=1), flaky)]) as url:
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 6}
        r = post(url, "/v1/completions", body)
        assert r.status_code == 500 and r.json()["error"]["type"] == "InternalError"
        assert "simulated engine fault" in r.json()["error"]["message"]
        assert post(url, "/v1/completions", body).status_code == 200
        assert metric(url, "talon_errors_total", type="InternalError") == 1


def test_an_instance_that_raises_mid_stream_sends_an_error_event(chat_engine):
    def breaks(generate, ids, n, on_tokens):
        def once(new):
            on_tokens(new)
            raise RuntimeError("fault after the first token")
        return generate(ids, n, once)

    with serving([Wrapped(Generator.open(chat_engine, threads=1), breaks)]) as url:
        with httpx.stream("POST", url + "/v1/completions", timeout=60,
                          json={"model": "tiny", "prompt": PROMPT, "max_tokens": 6, "stream": True}) as r:
            events = sse_events(r.iter_lines())
        assert r.status_code == 200 and events[-1]["error"]["type"] == "InternalError"
        assert httpx.get(url + "/health").json()["status"] == "ok"


def test_serve_cli_rejects_bad_settings(tiny_engine, capsys):
    from talon_rt.runtime.cli import main
    assert main(["serve", "--engine", str(tiny_engine), "--instances", "0"]) == 2
    assert "--instances: 0 must be >= 1" in capsys.readouterr().err
    assert main(["serve", "--engine", str(tiny_engine), "--max-queue", "0"]) == 2
    assert "--max-queue: 0 must be >= 1" in capsys.readouterr().err
