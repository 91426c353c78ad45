"""`talon-rt serve` against hostile and careless clients: bounded bodies and prompts, stop strings that
cost linear time, bools refused where numbers are wanted, nested JSON and lone surrogates answered with
400s, clients that leave mid-upload or mid-generation, half-sent bodies, the server's own settings, and a
shutdown that ends open streams with an error event and [DONE]."""
from __future__ import annotations

import logging
import signal
import socket
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi")
from tests.serve.test_api import (PROMPT, Wrapped, chat_engine, health, metric, post, reference, served,  # noqa: E402,F401
                            server, serving, slowed, sse_events, wait_until)

from talon_rt.runtime.api import Generator  # noqa: E402
from talon_rt.runtime.serve.app import create_app  # noqa: E402
from talon_rt.runtime.serve.pool import Pool  # noqa: E402
from talon_rt.runtime.serve.stops import StopText  # noqa: E402


def raw_request(url: str, head: bytes, body: bytes, wait_s: float = 0.0, close: bool = False) -> bytes:
    """Send `head` and part of a body on a socket; returns what the server answered (b"" if nothing)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head + body)
        if close:
            return b""
        time.sleep(wait_s)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (socket.timeout, ConnectionResetError):
            pass
        return b"".join(chunks)


# -- request size ---------------------------------------------------------------------------------------

def test_a_body_over_the_limit_is_a_413_before_it_is_read(chat_engine):
    with serving([Generator.open(chat_engine, threads=1)], 4, max_body_bytes=2048) as url:
        r = post(url, "/v1/completions", {"model": "tiny", "prompt": "x" * 5000, "max_tokens": 2})
        assert r.status_code == 413 and r.json()["error"]["type"] == "RequestTooLarge"
        assert "limit of 2048" in r.json()["error"]["message"]
        chunked = httpx.post(url + "/v1/completions", content=iter([b'{"prompt": "', b"y" * 4000, b'"}']),
                             headers={"content-type": "application/json"}, timeout=30)
        assert chunked.status_code == 413                    # no content-length: counted while read
        assert post(url, "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 2}).status_code == 200


def test_an_over_long_text_prompt_is_refused_before_tokenizing(server, reference):
    limit = reference.max_prompt_chars()
    started = time.perf_counter()
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": "ab " * (limit // 3 + 10), "max_tokens": 2})
    assert r.status_code == 400 and "longer than the context can hold" in r.json()["error"]["message"]
    r = post(server, "/v1/chat/completions", {"model": "tiny", "max_tokens": 2,
                                              "messages": [{"role": "user", "content": "z" * (limit + 1)}]})
    assert r.status_code == 400 and "field messages" in r.json()["error"]["message"]
    assert time.perf_counter() - started < 10
    assert health(server)["status"] == "ok"


# -- stop strings ---------------------------------------------------------------------------------------

def test_stop_strings_are_bounded(server):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 2}
    r = post(server, "/v1/completions", {**body, "stop": ["a" * 1001]})
    assert r.status_code == 400 and "field stop[0]: 1001 characters, at most 1000" in r.json()["error"]["message"]
    assert post(server, "/v1/completions", {**body, "stop": ["a" * 1000]}).status_code == 200


def test_stop_matching_is_incremental_and_exact():
    long = "ab" * 400_000
    stops = StopText([long + "c", long + "d", "xyz", "zz"])
    out: list[str] = []
    feeding = threading.Thread(target=lambda: out.extend(stops.feed("ab" * 50) for _ in range(200)), daemon=True)
    feeding.start()
    feeding.join(5.0)                                        # linear: ~0.1 s; quadratic: hours
    assert not feeding.is_alive(), "stop matching is not linear in the text"
    assert out == [""] * 200 and not stops.matched           # all held: it could still become a stop
    # the same answers as a whole-text search, piece by piece, including stops that overlap
    for pieces, stop_list, expect in [(["hel", "lo wo", "rld"], ["o w"], "hell"),
                                      (["aab", "c"], ["abc", "b"], "aa"),
                                      (["xab", "c"], ["abc", "bd"], "x"),
                                      (["xxz", "zy"], ["zz", "xzz"], "x"),
                                      (["abab", "abac"], ["ababac"], "ab"),
                                      (["no stop here"], ["zz"], "no stop here")]:
        s = StopText(stop_list)
        text = "".join(s.feed(p) for p in pieces)
        text += "" if s.matched else s.flush()
        assert text == expect, (pieces, stop_list, text)


# -- types and malformed bodies -------------------------------------------------------------------------

@pytest.mark.parametrize("body, match", [
    ({"max_tokens": True}, "field max_tokens"),
    ({"prompt": [True, False]}, "field prompt"),
    ({"temperature": True}, "field temperature"),
    ({"seed": False}, "field seed"),
    ({"x_talon": {"budget": True}}, "field x_talon.budget"),
])
def test_bools_are_not_numbers(server, body, match):
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 2, **body})
    assert r.status_code == 400 and r.json()["error"]["type"] == "InputError"
    assert match in r.json()["error"]["message"]


def test_deep_json_and_lone_surrogates_are_400s(server, caplog):
    with caplog.at_level(logging.ERROR):
        deep = '{"model": "tiny", "prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
        r = post(server, "/v1/completions", deep)
        assert r.status_code == 400 and "nested more than 64 levels" in r.json()["error"]["message"]
        r = post(server, "/v1/completions", '{"model": "tiny", "prompt": "a\\ud800b", "max_tokens": 2}')
        assert r.status_code == 400 and "lone surrogate" in r.json()["error"]["message"]
        r = post(server, "/v1/chat/completions",
                 '{"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "\\udfff"}]}')
        assert r.status_code == 400 and "messages[0].content: not valid Unicode" in r.json()["error"]["message"]
    assert not [rec for rec in caplog.records if rec.name.startswith(("talon_rt", "uvicorn"))]
    assert health(server)["status"] == "ok"


# -- clients that leave or stall ------------------------------------------------------------------------

def test_a_client_that_drops_mid_upload_is_a_quiet_disconnect(server, caplog):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")
    before = metric(server, "talon_errors_total", type="InternalError")
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            raw_request(server, head, b'{"model": "tiny", "pro', close=True)
        time.sleep(0.5)
    assert metric(server, "talon_errors_total", type="InternalError") == before
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert health(server)["status"] == "ok"


def test_a_half_sent_body_times_out_with_a_408(chat_engine):
    with serving([Generator.open(chat_engine, threads=1)], 4, body_timeout_s=0.5) as url:
        head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n")
        answer = raw_request(url, head, b'{"model": "tiny"', wait_s=1.5)
        assert answer.startswith(b"HTTP/1.1 408") and b"RequestTimeout" in answer


def test_half_sent_headers_are_closed_after_the_timeout(chat_engine):
    from talon_rt.runtime.serve.app import timed_h11
    pool = Pool([Generator.open(chat_engine, threads=1)], 4)
    try:
        with served(create_app(pool, "tiny"), http=timed_h11(0.5)) as s:
            url = s.url
            started = time.monotonic()
            assert raw_request(url, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le", b"", wait_s=0.1) == b""
            assert time.monotonic() - started < 5                 # closed by the server, not the socket's 10 s
            assert health(url)["status"] == "ok"                  # whole requests are unaffected
            with httpx.Client(timeout=10) as c:                   # a keep-alive connection serves several
                for _ in range(2):
                    assert c.post(url + "/v1/completions",
                                  json={"model": "tiny", "prompt": PROMPT, "max_tokens": 2}).status_code == 200
                    time.sleep(0.3)
    finally:
        pool.close()


def test_a_non_streaming_client_that_leaves_cancels_its_generation(chat_engine):
    gen = Wrapped(Generator.open(chat_engine, threads=1), slowed(0.02))   # a token every 20 ms: never idle
    with serving([gen]) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": PROMPT, "max_tokens": 240},
                       timeout=0.6)
        wait_until(lambda: bool(gen.results), "the generation to end")
        assert gen.results[0].stop_reason == "cancelled" and len(gen.results[0].tokens) < 120, gen.results
        assert metric(url, "talon_cancelled_total") == 1


# -- shutdown -------------------------------------------------------------------------------------------

def test_sigterm_ends_open_streams_with_an_error_event_and_done(chat_engine):
    from talon_rt.runtime.serve.app import Server
    gen = Wrapped(Generator.open(chat_engine, threads=1), slowed(0.05))
    pool = Pool([gen], 4)
    try:
        with served(create_app(pool, "tiny"), Server, timeout_graceful_shutdown=5) as s:
            body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 240, "stream": True}
            with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=30) as r:
                lines = r.iter_lines()
                first = [next(lines)]
                s.server.handle_exit(signal.SIGTERM, None)
                events = sse_events([*first, *lines])
            assert events[-1] == "[DONE]" and events[-2]["error"]["type"] == "ShuttingDown"
            s.thread.join(10)
            assert not s.thread.is_alive()
            assert gen.results and gen.results[0].stop_reason == "cancelled"
    finally:
        pool.close()


# -- the server's settings ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--port", "99999"], "--port: 99999 is not a TCP port (0-65535)"),
    (["--port", "-1"], "--port: -1 is not a TCP port"),
    (["--instances", "100000"], "--instances: 100000 must be >= 1 and at most the"),
    (["--max-body-bytes", "10"], "--max-body-bytes: 10 must be >= 1024"),
    (["--body-timeout", "nan"], "--body-timeout: nan must be a positive number"),
])
def test_serve_settings_are_checked_before_the_engine_opens(tiny_engine, capsys, monkeypatch, argv, message):
    from talon_rt.runtime.cli import main

    def never(*args, **kwargs):
        raise AssertionError("the engine was opened before the settings were checked")
    monkeypatch.setattr(Generator, "open", never)
    assert main(["serve", "--engine", str(tiny_engine), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
