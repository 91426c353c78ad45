"""The FastAPI application: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus
/health and /metrics. Handlers validate, queue a Job on the Pool and relay its events; a client that
goes away (polled while waiting, seen by the stream while streaming) cancels its job. With an API key,
every /v1 route (and, if asked, /health and /metrics) needs `Authorization: Bearer <key>`."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Any, AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from runtime.api import Generator
from runtime.errors import ClosedError, TalonError
from runtime.serve.metrics import Metrics
from runtime.serve.pool import CancelledBeforeStart, Delta, Done, Failed, Job, Pool, QueueFull, Work
from runtime.serve.protocol import ChatRequest, CompletionRequest, Reply, Request as ApiRequest, error_body, parse, sse

log = logging.getLogger("talon_rt.serve")
DISCONNECT_POLL_S = 0.25           # how often a waiting handler checks that its client is still there
CLIENT_CLOSED = 499                # the status logged for a request whose client went away (nginx's)


class Disconnected(Exception):
    """The client closed the connection."""


def prompt_work(prompt: str | Sequence[int], logprobs: int | None = None) -> Work:
    extra = {} if logprobs is None else {"logprobs": logprobs}

    def work(gen: Generator, max_new_tokens, on_tokens):
        ids = gen.encode(prompt) if isinstance(prompt, str) else prompt
        return gen.generate(ids, max_new_tokens, on_tokens, **extra)
    return work


def chat_work(messages: list[dict[str, str]], logprobs: int | None = None) -> Work:
    extra = {} if logprobs is None else {"logprobs": logprobs}

    def work(gen: Generator, max_new_tokens, on_tokens):
        return gen.chat(messages, max_new_tokens, on_tokens, **extra)
    return work


OPEN_PATHS = ("/health", "/metrics")   # open without the API key unless protect_all


def status_of(error: BaseException) -> tuple[int, str]:
    """(HTTP status, error type) of a failed job: the runtime's named errors are the client's fault."""
    if isinstance(error, (ClosedError, CancelledBeforeStart)):
        return 503, type(error).__name__
    if isinstance(error, TalonError):
        return 400, type(error).__name__
    return 500, "InternalError"


def create_app(pool: Pool, model_name: str, api_key: str | None = None, protect_all: bool = False) -> FastAPI:
    """api_key: required on every /v1 route (and on /health and /metrics with protect_all); None = open."""
    app = FastAPI(title="talon-rt", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = Metrics(pool)
    app.state.pool, app.state.metrics = pool, metrics
    created = int(time.time())
    model_card = {"id": model_name, "object": "model", "created": created, "owned_by": "talon-rt"}
    token_text = pool.instances[0].generator.token_text

    def failure(endpoint: str, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        metrics.requests.labels(endpoint, str(status)).inc()
        metrics.errors.labels(kind).inc()
        return JSONResponse(error_body(kind, message), status_code=status, headers=headers)

    if api_key is not None:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def authenticate(request: Request, call_next):
            path = request.url.path
            if protect_all or path not in OPEN_PATHS:
                given = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    why = "no API key given" if not given else "incorrect API key"
                    return failure(path, 401, "AuthenticationError",
                                   f"{why}: send the server's key as 'Authorization: Bearer <key>'",
                                   {"WWW-Authenticate": "Bearer"})
            return await call_next(request)

    def failed(endpoint: str, error: BaseException) -> JSONResponse:
        status, kind = status_of(error)
        message = str(error) if status != 500 else f"generation failed: {type(error).__name__}: {error}"
        return failure(endpoint, status, kind, message)

    async def next_event(job: Job, request: Request) -> Delta | Done | Failed:
        while True:
            try:
                return await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    raise Disconnected from None

    def gone(endpoint: str) -> Response:
        metrics.cancelled.inc()
        metrics.requests.labels(endpoint, str(CLIENT_CLOSED)).inc()
        return Response(status_code=CLIENT_CLOSED)

    async def complete(request: Request, kind: type[ApiRequest]) -> Response:
        endpoint, t0 = request.url.path, time.perf_counter()
        try:
            req = parse(await request.body(), kind)
            options = pool.resolve(req.overrides())
        except TalonError as e:
            return failure(endpoint, 400, type(e).__name__, str(e))
        if req.model != model_name:
            return failure(endpoint, 404, "NotFound", f"field model: {req.model!r} is not served here "
                                                      f"(GET /v1/models lists {model_name!r})")
        chat = isinstance(req, ChatRequest)
        k = req.top_logprobs_k()
        work = chat_work(req.chat_messages(), k) if chat else prompt_work(req.prompt_value(), k)
        job = Job(work, options, req.new_tokens(), req.stops(), asyncio.get_running_loop(), n=req.n,
                  logprobs=k is not None)
        try:
            pool.submit(job)
        except QueueFull as e:
            return failure(endpoint, 429, "QueueFull", str(e), {"Retry-After": str(e.retry_after_s)})
        try:
            first = await next_event(job, request)      # the first token, or why there is none
        except Disconnected:
            return gone(endpoint)
        if isinstance(first, Failed):
            return failed(endpoint, first.error)
        metrics.ttft.observe(time.perf_counter() - t0)
        reply = Reply(chat, model_name, token_text)
        if req.stream:
            metrics.requests.labels(endpoint, "200").inc()
            include_usage = req.stream_options is not None and req.stream_options.include_usage
            body = stream(job, request, reply, first, include_usage, req.x_talon.return_tokens, t0)
            return StreamingResponse(body, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        parts: list[list[str]] = [[] for _ in range(job.n)]
        dones: list[Done] = []
        event: Delta | Done | Failed = first
        try:
            while not isinstance(event, Failed):
                if isinstance(event, Delta):
                    parts[event.index].append(event.text)
                else:
                    finished(event, t0)
                    dones.append(event)
                    if len(dones) == job.n:
                        break
                event = await next_event(job, request)
        except Disconnected:
            return gone(endpoint)
        if isinstance(event, Failed):
            return failed(endpoint, event.error)
        metrics.requests.labels(endpoint, "200").inc()
        return JSONResponse(reply.complete(["".join(p) for p in parts], dones, req.x_talon.return_tokens, job.logprobs))

    def finished(done: Done, t0: float) -> None:
        metrics.generation(done)
        metrics.duration.observe(time.perf_counter() - t0)

    async def stream(job: Job, request: Request, reply: Reply, first: Delta | Done | Failed, include_usage: bool,
                     return_tokens: bool, t0: float) -> AsyncIterator[str]:
        over = False
        try:
            if reply.chat:
                for index in range(job.n):
                    yield sse(reply.chunk(index, "", first=True))
            event, dones = first, []
            while True:
                if isinstance(event, Delta):
                    if event.text or event.logprobs:
                        yield sse(reply.chunk(event.index, event.text, logprobs=event.logprobs))
                elif isinstance(event, Done):
                    finished(event, t0)
                    dones.append(event)
                    yield sse(reply.last_chunk(event, return_tokens))
                    if len(dones) == job.n:
                        break
                else:
                    break
                event = await next_event(job, request)
            over = True
            if isinstance(event, Failed):
                kind = status_of(event.error)[1]
                metrics.errors.labels(kind).inc()
                yield sse(error_body(kind, str(event.error)))
                return
            if include_usage:
                yield sse(reply.usage_chunk(dones))
            yield sse("[DONE]")
        except Disconnected:
            pass
        finally:
            if not over:          # the client went away mid-stream (or the stream was cancelled)
                job.cancel()
                metrics.cancelled.inc()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await complete(request, ChatRequest)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await complete(request, CompletionRequest)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Response:
        if model_id != model_name:
            return failure(request.url.path, 404, "NotFound", f"model {model_id!r} is not served here "
                                                              f"(GET /v1/models lists {model_name!r})")
        return JSONResponse(model_card)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "instances": len(pool.instances), "busy": pool.busy(),
                "waiting": pool.waiting(), "max_queue": pool.max_queue}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return failure(request.url.path, 500, "InternalError", f"{type(error).__name__}: {error}")

    return app
