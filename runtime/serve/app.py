"""The FastAPI application: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus
/health and /metrics. Handlers read a bounded body, validate, queue a Job on the Pool and relay its
events; a client that goes away (polled every DISCONNECT_POLL_S while its job waits or runs) cancels
its job, and so does the server's shutdown (`Server`: SIGINT/SIGTERM), which ends open streams with
an error event and [DONE]. With an API key, every /v1 route (and, if asked, /health and /metrics)
needs `Authorization: Bearer <key>`."""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from typing import Any, AsyncIterator, Sequence

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from talon_rt.runtime.api import Generator
from talon_rt.runtime.errors import ClosedError, TalonError
from talon_rt.runtime.options import Options
from talon_rt.runtime.serve.metrics import Metrics
from talon_rt.runtime.serve.pool import CancelledBeforeStart, Delta, Done, Failed, Job, Pool, QueueFull, Work
from talon_rt.runtime.serve.protocol import ChatRequest, CompletionRequest, Reply, Request as ApiRequest, error_body, parse, sse

log = logging.getLogger("talon_rt.serve")
DISCONNECT_POLL_S = 0.25           # how often a waiting handler checks that its client is still there
CLIENT_CLOSED = 499                # the status logged for a request whose client went away (nginx's)
MAX_BODY_BYTES = 4 << 20           # a request body; a context's worth of text, JSON-escaped, fits many times
BODY_TIMEOUT_S = 30.0              # to send a whole request body once its headers arrived


class Disconnected(Exception):
    """The client closed the connection."""


class ShuttingDown(Exception):
    """The server is stopping (SIGINT/SIGTERM)."""


class BodyRefused(Exception):
    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind = status, kind


def timed_h11(timeout_s: float) -> type:
    """uvicorn's h11 protocol that closes a connection which begins no request within `timeout_s`
    (half-sent headers, or nothing at all): uvicorn itself times out only idle keep-alive connections."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._watch()

        def _watch(self) -> None:
            self._timer = self.loop.call_later(timeout_s, self._check, self.cycle)

        def _check(self, seen: Any) -> None:
            if self.transport.is_closing():
                return
            if self.cycle is seen and (seen is None or seen.response_complete):   # no request began since
                self.transport.close()
            else:
                self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._timer.cancel()
            super().connection_lost(exc)

    return TimedH11


class Server(uvicorn.Server):
    """uvicorn's server that tells the app when a signal asks it to stop, so that running requests
    end at once (streams with an error event and [DONE]) instead of being cut off."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        stopping = getattr(getattr(self.config.app, "state", None), "stopping", None)
        if stopping is not None:
            stopping.set()
        super().handle_exit(sig, frame)


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


def create_app(pool: Pool, model_name: str, max_body_bytes: int = MAX_BODY_BYTES,
               body_timeout_s: float = BODY_TIMEOUT_S, api_key: str | None = None,
               protect_all: bool = False) -> FastAPI:
    """api_key: required on every /v1 route (and on /health and /metrics with protect_all); None = open."""
    app = FastAPI(title="talon-rt", docs_url=None, redoc_url=None, openapi_url=None)
    api = Api(pool, model_name, max_body_bytes, body_timeout_s)
    app.state.pool, app.state.metrics, app.state.stopping = pool, api.metrics, api.stopping
    if api_key is not None:
        add_authentication(app, api, api_key, protect_all)
    add_routes(app, api)
    return app


def add_authentication(app: FastAPI, api: Api, api_key: str, protect_all: bool) -> None:
    """A middleware that answers 401 unless the request carries `Authorization: Bearer <api_key>`."""
    expected = f"Bearer {api_key}".encode()

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        path = request.url.path
        if protect_all or path not in OPEN_PATHS:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                why = "no API key given" if not given else "incorrect API key"
                return api.failure(path, 401, "AuthenticationError",
                                   f"{why}: send the server's key as 'Authorization: Bearer <key>'",
                                   {"WWW-Authenticate": "Bearer"})
        return await call_next(request)


def add_routes(app: FastAPI, api: Api) -> None:
    """The OpenAI routes, /health, /metrics, and the handler of any unexpected exception."""
    pool, metrics, model_name = api.pool, api.metrics, api.model_name

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await api.complete(request, ChatRequest)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await api.complete(request, CompletionRequest)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [api.model_card]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Response:
        if model_id != model_name:
            return api.failure(request.url.path, 404, "NotFound", f"model {model_id!r} is not served here "
                                                                  f"(GET /v1/models lists {model_name!r})")
        return JSONResponse(api.model_card)

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
        return api.failure(request.url.path, 500, "InternalError", f"{type(error).__name__}: {error}")


class Api:
    """The completion endpoints over one pool: admit a request, submit its job, answer whole or streamed."""

    def __init__(self, pool: Pool, model_name: str, max_body_bytes: int, body_timeout_s: float):
        self.pool, self.model_name = pool, model_name
        self.max_body_bytes, self.body_timeout_s = max_body_bytes, body_timeout_s
        self.metrics = Metrics(pool)
        self.stopping = threading.Event()   # set by Server.handle_exit (a signal handler: not an asyncio.Event)
        self.max_prompt_chars = pool.max_prompt_chars()
        self.model_card = {"id": model_name, "object": "model", "created": int(time.time()), "owned_by": "talon-rt"}
        self.token_text = pool.instances[0].generator.token_text

    def failure(self, endpoint: str, status: int, kind: str, message: str,
                headers: dict[str, str] | None = None) -> JSONResponse:
        self.metrics.requests.labels(endpoint, str(status)).inc()
        self.metrics.errors.labels(kind).inc()
        return JSONResponse(error_body(kind, message), status_code=status, headers=headers)

    def failed(self, endpoint: str, error: BaseException) -> JSONResponse:
        status, kind = status_of(error)
        message = str(error) if status != 500 else f"generation failed: {type(error).__name__}: {error}"
        return self.failure(endpoint, status, kind, message)

    def shutting_down(self, endpoint: str) -> JSONResponse:
        return self.failure(endpoint, 503, "ShuttingDown", "the server is shutting down")

    def gone(self, endpoint: str, cancelled: bool = True) -> Response:
        if cancelled:
            self.metrics.cancelled.inc()
        self.metrics.requests.labels(endpoint, str(CLIENT_CLOSED)).inc()
        return Response(status_code=CLIENT_CLOSED)

    def finished(self, done: Done, t0: float) -> None:
        self.metrics.generation(done)
        self.metrics.duration.observe(time.perf_counter() - t0)

    async def read_body(self, request: Request) -> bytes:
        """The request body, at most `max_body_bytes`, sent within `body_timeout_s`."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BodyRefused(413, "RequestTooLarge", f"request body: {declared} bytes, more than the server's "
                                                      f"limit of {limit} (--max-body-bytes)")
        chunks: list[bytes] = []
        size = 0

        async def collect() -> None:
            nonlocal size
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyRefused(413, "RequestTooLarge", f"request body: more than the server's limit "
                                                              f"of {limit} bytes (--max-body-bytes)")
                chunks.append(chunk)
        try:
            await asyncio.wait_for(collect(), self.body_timeout_s)
        except asyncio.TimeoutError:
            raise BodyRefused(408, "RequestTimeout", f"request body: not received within "
                                                     f"{self.body_timeout_s:g} s (--body-timeout)") from None
        return b"".join(chunks)

    async def next_event(self, job: Job, request: Request) -> Delta | Done | Failed:
        """The job's next event; every DISCONNECT_POLL_S (however fast events come) the client and the
        server are checked: a client gone or a server stopping cancels the job."""
        while True:
            if time.monotonic() - job.watched >= DISCONNECT_POLL_S:
                job.watched = time.monotonic()
                if self.stopping.is_set():
                    job.cancel()
                    raise ShuttingDown
                if await request.is_disconnected():
                    job.cancel()
                    raise Disconnected
            try:
                return job.events.get_nowait()
            except asyncio.QueueEmpty:
                pass
            try:
                return await asyncio.wait_for(job.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                pass

    async def complete(self, request: Request, kind: type[ApiRequest]) -> Response:
        endpoint, t0 = request.url.path, time.perf_counter()
        admitted = await self.admit(request, kind)
        if isinstance(admitted, Response):
            return admitted
        req, options = admitted
        job = new_job(req, options)
        try:
            self.pool.submit(job)
        except QueueFull as e:
            return self.failure(endpoint, 429, "QueueFull", str(e), {"Retry-After": str(e.retry_after_s)})
        try:
            first = await self.next_event(job, request)      # the first token, or why there is none
        except Disconnected:
            return self.gone(endpoint)
        except ShuttingDown:
            return self.shutting_down(endpoint)
        if isinstance(first, Failed):
            return self.failed(endpoint, first.error)
        self.metrics.ttft.observe(time.perf_counter() - t0)
        reply = Reply(isinstance(req, ChatRequest), self.model_name, self.token_text)
        if req.stream:
            return self.streamed(job, request, reply, first, req, t0)
        return await self.whole(job, request, reply, first, req, t0)

    async def admit(self, request: Request, kind: type[ApiRequest]) -> tuple[ApiRequest, Options] | Response:
        """(the parsed request, its resolved options), or the error response that refuses it."""
        endpoint = request.url.path
        try:
            body = await self.read_body(request)
        except ClientDisconnect:
            return self.gone(endpoint, cancelled=False)
        except BodyRefused as e:
            return self.failure(endpoint, e.status, e.kind, str(e), {"Connection": "close"})
        try:
            req = parse(body, kind)
            options = self.pool.resolve(req.overrides())
        except TalonError as e:
            return self.failure(endpoint, 400, type(e).__name__, str(e))
        chars = (sum(len(m.text()) for m in req.messages) if isinstance(req, ChatRequest)
                 else len(req.prompt_value()) if isinstance(req.prompt_value(), str) else 0)
        if chars > self.max_prompt_chars:
            where = "messages" if isinstance(req, ChatRequest) else "prompt"
            return self.failure(endpoint, 400, "InputError", f"field {where}: {chars} characters, longer than the "
                                                             f"context can hold (at most {self.max_prompt_chars}: "
                                                             f"limits.max_seq_len tokens of the longest token)")
        if self.stopping.is_set():
            return self.shutting_down(endpoint)
        if req.model != self.model_name:
            return self.failure(endpoint, 404, "NotFound", f"field model: {req.model!r} is not served here "
                                                           f"(GET /v1/models lists {self.model_name!r})")
        return req, options

    def streamed(self, job: Job, request: Request, reply: Reply, first: Delta | Done | Failed, req: ApiRequest,
                 t0: float) -> StreamingResponse:
        self.metrics.requests.labels(request.url.path, "200").inc()
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        body = self.stream(job, request, reply, first, include_usage, req.x_talon.return_tokens, t0)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def whole(self, job: Job, request: Request, reply: Reply, first: Delta | Done | Failed,
                    req: ApiRequest, t0: float) -> Response:
        """The whole completion once every choice is done."""
        endpoint = request.url.path
        parts: list[list[str]] = [[] for _ in range(job.n)]
        dones: list[Done] = []
        event: Delta | Done | Failed = first
        try:
            while not isinstance(event, Failed):
                if isinstance(event, Delta):
                    parts[event.index].append(event.text)
                else:
                    self.finished(event, t0)
                    dones.append(event)
                    if len(dones) == job.n:
                        break
                event = await self.next_event(job, request)
        except Disconnected:
            return self.gone(endpoint)
        except ShuttingDown:
            return self.shutting_down(endpoint)
        if isinstance(event, Failed):
            return self.failed(endpoint, event.error)
        self.metrics.requests.labels(endpoint, "200").inc()
        return JSONResponse(reply.complete(["".join(p) for p in parts], dones, req.x_talon.return_tokens,
                                           job.logprobs))

    async def stream(self, job: Job, request: Request, reply: Reply, first: Delta | Done | Failed,
                     include_usage: bool, return_tokens: bool, t0: float) -> AsyncIterator[str]:
        metrics = self.metrics
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
                    self.finished(event, t0)
                    dones.append(event)
                    yield sse(reply.last_chunk(event, return_tokens))
                    if len(dones) == job.n:
                        break
                else:
                    break
                event = await self.next_event(job, request)
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
        except ShuttingDown:
            over = True
            metrics.errors.labels("ShuttingDown").inc()
            yield sse(error_body("ShuttingDown", "the server is shutting down; the generation was stopped"))
            yield sse("[DONE]")
        finally:
            if not over:          # the client went away mid-stream (or the stream was cancelled)
                job.cancel()
                metrics.cancelled.inc()


def new_job(req: ApiRequest, options: Options) -> Job:
    """The pool job of an admitted request (on the running event loop)."""
    k = req.top_logprobs_k()
    work = chat_work(req.chat_messages(), k) if isinstance(req, ChatRequest) else prompt_work(req.prompt_value(), k)
    return Job(work, options, req.new_tokens(), req.stops(), asyncio.get_running_loop(), n=req.n,
               logprobs=k is not None)
