"""A streaming client of the talon Triton model (gRPC, PyTriton's DecoupledModelClient): prints one JSON
line per response as it arrives, {"t": seconds since the request, "text": ..., "tokens": [...]}.

    python -m talon_rt.runtime.triton.client --url grpc://127.0.0.1:8001 --prompt "def fib(n):" --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from talon_rt.runtime.triton.spec import MODEL_NAME


def main(argv: list[str] | None = None) -> int:
    from pytriton.client import DecoupledModelClient

    p = argparse.ArgumentParser(prog="python -m talon_rt.runtime.triton.client", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="grpc://127.0.0.1:8001")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args(argv)
    inputs = {"text_input": np.array([args.prompt.encode("utf-8")], dtype=np.object_)}
    if args.max_tokens is not None:
        inputs["max_tokens"] = np.array([args.max_tokens], dtype=np.int32)
    with DecoupledModelClient(args.url, MODEL_NAME, init_timeout_s=args.timeout,
                              inference_timeout_s=args.timeout) as client:
        t0 = time.perf_counter()
        for out in client.infer_sample(**inputs):
            print(json.dumps({"t": time.perf_counter() - t0, "text": out["text_output"][0].decode("utf-8"),
                              "tokens": out["token_ids"].tolist()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
