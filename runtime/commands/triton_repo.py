"""`talon-rt triton-repo`: write a Triton Inference Server model repository for an engine
(runtime/triton/repo.py, docs/serving.md)."""

from __future__ import annotations

import argparse
import json

from talon_rt.runtime.commands.run import OPTION_ARGS, add_options
from talon_rt.runtime.triton.repo import KINDS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("triton-repo", help="write a Triton model repository for an engine",
                       description="Write REPO/talon/ (config.pbtxt, 1/model.py, engine/): a python-backend, "
                                   "decoupled (streaming) model that a stock Triton server serves. The options "
                                   "given are the model's defaults.")
    p.add_argument("-e", "--engine", required=True, metavar="DIR", help="engine directory")
    p.add_argument("--out", required=True, metavar="REPO", help="model repository folder (created if needed)")
    p.add_argument("--instances", type=int, default=1, metavar="N",
                   help="instance_group count: engines (= concurrent streams) per Triton server")
    p.add_argument("--kind", choices=sorted(KINDS), default="cpu", help="instance_group kind (default cpu)")
    p.add_argument("--link", action="store_true", help="symlink the engine instead of copying it")
    add_options(p)
    p.set_defaults(func=triton_repo)


def triton_repo(args: argparse.Namespace) -> int:
    from talon_rt.runtime.manifest import open_manifest
    from talon_rt.runtime.options import resolve_options
    from talon_rt.runtime.triton.repo import write_repository

    options = {k: getattr(args, k) for k in OPTION_ARGS if getattr(args, k) is not None}
    resolve_options(open_manifest(args.engine), options)      # bad options fail here, not inside Triton
    model = write_repository(args.engine, args.out, args.instances, args.kind, options, args.link)
    print(f"wrote {model}: serve it with `tritonserver --model-repository {model.parent}` "
          f"(options {json.dumps(options)})")
    return 0
