"""The talon Triton model served locally through PyTriton (Triton Inference Server bundled in the
`nvidia-pytriton` wheel), CPU-only and on loopback by default:

    python -m talon_rt.runtime.triton.pytriton_serve --engine engines/demo --instances 2

Same tensors (spec.py) and the same streamed pieces (stream.py) as the python-backend model that
`talon-rt triton-repo` writes, with one Generator per instance. PyTriton needs numpy < 2 and the
interpreter's libpython on LD_LIBRARY_PATH: run it from its own virtualenv (`make pytriton`,
docs/serving.md). Prints one line, "ready http=PORT grpc=PORT", once the model is loaded; stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Iterator

from talon_rt.runtime.api import Generator
from talon_rt.runtime.errors import TalonError
from talon_rt.runtime.triton.spec import INPUTS, MODEL_NAME, OUTPUTS
from talon_rt.runtime.triton.stream import generate_stream, piece_arrays, read_request


def infer_function(gen: Generator) -> Callable[[list], Iterator[list[dict[str, Any]]]]:
    """A decoupled PyTriton inference callable: each yield is one streamed piece of the one request
    (batching is off, so Triton hands over one request at a time)."""
    def infer(requests: list) -> Iterator[list[dict[str, Any]]]:
        for request in requests:
            try:
                req = read_request(request.data.get)
                for piece in generate_stream(gen, req):
                    yield [piece_arrays(piece)]
            except TalonError as e:   # the client gets the runtime's named error
                raise ValueError(f"{type(e).__name__}: {e}") from None
    return infer


def main(argv: list[str] | None = None) -> int:
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    p = argparse.ArgumentParser(prog="python -m talon_rt.runtime.triton.pytriton_serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    args = p.parse_args(argv)
    threads = max(1, (os.cpu_count() or 1) // args.instances)
    gens = [Generator.open(args.engine, threads=threads) for _ in range(args.instances)]
    config = TritonConfig(http_address=args.host, http_port=args.http_port, grpc_address=args.host,
                          grpc_port=args.grpc_port, metrics_address=args.host, metrics_port=args.metrics_port)
    tensors = lambda specs: [Tensor(name=t.name, dtype=t.dtype, shape=t.shape, optional=t.optional)  # noqa: E731
                             for t in specs]
    try:
        with Triton(config=config) as triton:
            triton.bind(model_name=MODEL_NAME, infer_func=[infer_function(g) for g in gens],
                        inputs=tensors(INPUTS), outputs=tensors(OUTPUTS),
                        config=ModelConfig(batching=False, decoupled=True))
            triton.run()
            print(f"ready http={args.http_port} grpc={args.grpc_port}", flush=True)
            triton.serve()
    finally:
        for g in gens:
            g.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
