"""`talon-rt triton-repo`: a Triton model repository around an engine directory.

    REPO/talon/config.pbtxt     python backend, decoupled, the tensors of spec.py, instance_group
    REPO/talon/1/model.py       runtime/triton/model.py
    REPO/talon/engine/          the engine (copied; --link makes it a symlink to the engine instead)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from talon_rt.runtime.errors import InputError
from talon_rt.runtime.manifest import open_manifest
from talon_rt.runtime.triton.spec import INPUTS, MODEL_NAME, OUTPUTS, TensorSpec

KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


def _tensor(spec: TensorSpec) -> str:
    optional = " optional: true" if spec.optional else ""
    return (f'  {{ name: "{spec.name}" data_type: {spec.triton_type} '
            f'dims: [ {", ".join(str(d) for d in spec.shape)} ]{optional} }}')


def config_pbtxt(instances: int, kind: str, options: dict, name: str = MODEL_NAME) -> str:
    """The model's config.pbtxt: batch 1 requests (max_batch_size 0), one engine per instance."""
    return "\n".join([
        f'name: "{name}"',
        'backend: "python"',
        "max_batch_size: 0",
        "model_transaction_policy { decoupled: true }",
        "input [", ",\n".join(_tensor(t) for t in INPUTS), "]",
        "output [", ",\n".join(_tensor(t) for t in OUTPUTS), "]",
        f"instance_group [ {{ count: {instances} kind: {KINDS[kind]} }} ]",
        'parameters { key: "engine_dir" value: { string_value: "engine" } }',
        f'parameters {{ key: "options" value: {{ string_value: {json.dumps(json.dumps(options))} }} }}',
        "",
    ])


def write_repository(engine: str | Path, out: str | Path, instances: int = 1, kind: str = "cpu",
                     options: dict | None = None, link: bool = False, name: str = MODEL_NAME) -> Path:
    """Write REPO/<name>/ for `engine` (validated first); returns the model folder."""
    manifest = open_manifest(engine)              # a broken engine fails here, not inside Triton
    if instances < 1:
        raise InputError(f"--instances: {instances} must be >= 1")
    if kind not in KINDS:
        raise InputError(f"--kind: {kind!r} is not one of {', '.join(KINDS)}")
    model = Path(out) / name
    if model.exists():
        raise InputError(f"{model}: already exists (choose another --out or remove it)")
    (model / "1").mkdir(parents=True)
    shutil.copyfile(Path(__file__).with_name("model.py"), model / "1" / "model.py")
    (model / "config.pbtxt").write_text(config_pbtxt(instances, kind, options or {}, name))
    if link:
        (model / "engine").symlink_to(Path(manifest.dir).resolve(), target_is_directory=True)
    else:
        shutil.copytree(manifest.dir, model / "engine")
    return model
