"""`talon-rt serve`: the OpenAI-compatible HTTP API (runtime/serve, docs/serving.md) on uvicorn."""

from __future__ import annotations

import argparse
import math
import os
import sys

from talon_rt.runtime.commands.run import OPTION_ARGS, add_options
from talon_rt.runtime.errors import OptionError
from talon_rt.runtime.serve import API_KEY_ENV

DEFAULT_MAX_QUEUE = 64     # waiting requests beyond the busy instances; more get 429 + Retry-After
DEFAULT_MAX_BODY_BYTES = 4 << 20   # talon_rt.runtime.serve.app.MAX_BODY_BYTES (not imported: it pulls in fastapi)
DEFAULT_BODY_TIMEOUT_S = 30.0      # talon_rt.runtime.serve.app.BODY_TIMEOUT_S


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve an OpenAI-compatible HTTP API",
                       description="Serve /v1/chat/completions, /v1/completions, /v1/models, /health and "
                                   "/metrics. Options are the server's defaults; requests override the "
                                   "sampling ones and, in x_talon, the policy's.")
    p.add_argument("-e", "--engine", required=True, metavar="DIR", help="engine directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--instances", type=int, default=1, metavar="N",
                   help="engine instances = concurrent generations (default 1)")
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                   help=f"requests that may wait for an instance (default {DEFAULT_MAX_QUEUE})")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, metavar="N",
                   help=f"largest request body; larger ones get 413 (default {DEFAULT_MAX_BODY_BYTES})")
    p.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT_S, metavar="S",
                   help=f"seconds a client has to send its request headers (else the connection is closed) "
                        f"and then its body (else 408) (default {DEFAULT_BODY_TIMEOUT_S:g})")
    p.add_argument("--model-name", metavar="NAME", help="the model id clients send (default: the engine's name)")
    p.add_argument("--api-key", metavar="KEY", help=f"require 'Authorization: Bearer KEY' on every /v1 route "
                                                    f"(default: ${API_KEY_ENV} if set, else no key)")
    p.add_argument("--auth-all", action="store_true",
                   help="require the API key on /health and /metrics too (default: those stay open)")
    add_options(p)
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from talon_rt.runtime.serve.app import Server, create_app, timed_h11

    api_key = api_key_of(args)
    pool = open_pool(args)
    try:
        name = args.model_name or pool.manifest.name
        app = create_app(pool, name, args.max_body_bytes, args.body_timeout, api_key, args.auth_all)
        print(startup_line(name, args, pool, api_key), file=sys.stderr, flush=True)
        Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5,
                              http=timed_h11(args.body_timeout))).run()
    finally:
        pool.close()
    return 0


def check_settings(args: argparse.Namespace) -> None:
    """The server's own settings, checked before any engine is opened."""
    if not 0 <= args.port <= 65535:
        raise OptionError(f"--port: {args.port} is not a TCP port (0-65535)")
    cores = os.cpu_count() or 1
    if not 1 <= args.instances <= cores:
        raise OptionError(f"--instances: {args.instances} must be >= 1 and at most the {cores} CPU cores "
                          f"(each instance holds a copy of the engine's sessions and KV cache)")
    if args.max_queue < 1:
        raise OptionError(f"--max-queue: {args.max_queue} must be >= 1")
    if args.max_body_bytes < 1024:
        raise OptionError(f"--max-body-bytes: {args.max_body_bytes} must be >= 1024")
    if not (args.body_timeout > 0 and math.isfinite(args.body_timeout)):
        raise OptionError(f"--body-timeout: {args.body_timeout} must be a positive number of seconds")


def api_key_of(args: argparse.Namespace) -> str | None:
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if key is not None and (not key or key != key.strip()):
        source = "--api-key" if args.api_key is not None else API_KEY_ENV
        raise OptionError(f"{source}: the API key is empty or has surrounding whitespace")
    if args.auth_all and key is None:
        raise OptionError(f"--auth-all needs an API key (--api-key or {API_KEY_ENV})")
    return key


def startup_line(name: str, args: argparse.Namespace, pool, api_key: str | None) -> str:
    o, inst = pool.options, len(pool.instances)
    auth = ("API key required on every route" if args.auth_all else "API key required on /v1") if api_key \
        else "no API key"
    return (f"talon-rt serve: model {name!r} from engine {args.engine} ({o.policy}, budget {o.budget}, "
            f"{pool.instances[0].generator.backend}, {inst} instance{'s' if inst > 1 else ''}) "
            f"on http://{args.host}:{args.port}/v1 ({auth})")


def open_pool(args: argparse.Namespace):
    from talon_rt.runtime.api import Generator
    from talon_rt.runtime.serve.pool import Pool, threads_per_instance

    check_settings(args)
    options = {k: getattr(args, k) for k in OPTION_ARGS if getattr(args, k) is not None}
    if "threads" not in options and args.instances > 1:   # N instances share the cores instead of each taking all
        options["threads"] = threads_per_instance(args.instances)
    generators: list[Generator] = []
    try:
        for _ in range(args.instances):
            generators.append(Generator.open(args.engine, **options))
    except BaseException:
        for g in generators:
            g.close()
        raise
    return Pool(generators, args.max_queue)
