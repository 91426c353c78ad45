"""`python -m talon_rt.export.trt ENGINE_DIR`: build TensorRT plans for an engine directory's graphs.

One optimization profile per graph: q (tokens per call) in [1, max(max_tree_tokens, max_prefill_chunk)],
optimised for the default budget; the draft's T (trailing keys under tree_mask) up to the widest mask
a round passes (`draft_mask_width`: the policies' draft scratch footprints under the engine's
defaults, e.g. eagle3's depth x top_k = 70, or q_max if larger); `past_len` is a shape input (host memory at run time) with values in [0, max_seq_len - 1]. Precision
comes from the ONNX dtypes (strongly typed network; TensorRT 11 knows no other mode); TF32 is turned
off so that fp32 plans match ORT. The plans are written as `<role>.plan`, listed in the manifest's
`files` and described in its `tensorrt` section. `--check` runs each plan once against ORT CPU.

Without tensorrt or a CUDA GPU the command exits with status 2 and a one-line explanation.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from talon_rt.export.engine_dir import file_record, verify_engine_dir
from talon_rt.export.errors import ExportError
from talon_rt.runtime.manifest import ROLES
from talon_rt.talon.policies import BUDGET, KNOBS, SPECS

EXIT_UNAVAILABLE = 2


class TrtUnavailable(ExportError):
    """tensorrt is not installed or no CUDA GPU is visible."""


def load_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise TrtUnavailable("tensorrt is not installed (`make install-gpu` on a machine with an NVIDIA GPU, "
                             "docs/gpu.md); no plans built") from None
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as e:  # TensorRT raises a plain RuntimeError/TypeError when CUDA is unusable
        raise TrtUnavailable(f"TensorRT {trt.__version__} cannot start: no usable CUDA GPU ({e})") from None
    if builder is None:
        raise TrtUnavailable(f"TensorRT {trt.__version__} cannot start: no usable CUDA GPU")
    return trt, logger, builder


def draft_mask_width(manifest: dict) -> int:
    """Widest draft tree_mask [q, T] a generation passes: T = q for a feed chunk (q <= q_max), and
    T = scratch rows so far + q <= the policy's draft scratch footprint while a tree grows; over every
    drafting policy under the engine's defaults at the largest budget, at most max_seq_len."""
    lim = manifest["limits"]
    q_max = max(lim["max_tree_tokens"], lim["max_prefill_chunk"])
    defaults = manifest["defaults"]
    knobs = {k.option: defaults[k.option] if defaults.get(k.option) is not None else k.default for k in KNOBS}
    knobs[BUDGET.option] = lim["max_tree_tokens"]
    scratch = [s.footprint(knobs)[1] for s in SPECS.values() if s.needs_head]   # headless ones never draft
    return min(max(q_max, *scratch), lim["max_seq_len"])


def profile_shapes(manifest: dict, role: str) -> tuple[dict, dict]:
    """({input: (min, opt, max) shapes}, {shape input: (min, opt, max) values}) for one graph."""
    lim, m, d = manifest["limits"], manifest["model"], manifest["draft"]
    q_max = max(lim["max_tree_tokens"], lim["max_prefill_chunk"])
    q_opt = min(manifest["defaults"].get(BUDGET.option, BUDGET.default), q_max)
    S = lim["max_seq_len"]
    H = m["hidden_size"]

    def q(*tail):
        return ((1, 1, *tail), (1, q_opt, *tail), (1, q_max, *tail))

    if role == "draft_fc":
        return {"features": q(len(m["feature_layers"]) * H)}, {}
    shapes = {"input_ids": q(), "position_ids": q()}
    if role == "target":
        shapes["tree_mask"] = ((1, 1, 1), (1, q_opt, q_opt), (1, q_max, q_max))
    else:
        shapes["hidden"] = q(d["hidden_size"])
        shapes["tree_mask"] = ((1, 1, 1), (1, q_opt, q_opt), (1, q_max, draft_mask_width(manifest)))
    values = {"past_len": ([0], [min(S // 2, S - q_max)], [S - 1])}
    return shapes, values


def build_plan(trt, logger, builder, onnx_path: Path, manifest: dict, role: str, workspace_gb: float) -> bytes:
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path.name}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 graphs must match ORT's fp32
    shapes, values = profile_shapes(manifest, role)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        if inp.is_shape_tensor:
            if inp.name not in values:
                raise ExportError(f"{onnx_path.name}: input {inp.name!r} is a shape tensor; no profile values for it")
            profile.set_shape_input(inp.name, *values[inp.name])
        elif inp.name in shapes:
            profile.set_shape(inp.name, *shapes[inp.name])
        elif any(dim < 0 for dim in inp.shape):
            raise ExportError(f"{onnx_path.name}: input {inp.name!r} has dynamic shape {tuple(inp.shape)} "
                              f"and no profile")
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"{onnx_path.name}: TensorRT build failed (see the TensorRT log above)")
    return bytes(plan)


@dataclass(frozen=True)
class PlanCheck:
    """A plan's outputs against ORT CPU's on one call."""
    max_abs_diff: float     # over the float outputs
    argmax_mismatches: int  # argmax rows whose pick is not a near-maximum of the reference logits


def compare_outputs(expect: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> PlanCheck:
    """Float outputs by max |diff|; `argmax` ids against the reference logits: with every logit within
    d of the reference, a correct argmax j has ref[j] >= max(ref) - 2d, so only picks below that
    count as mismatches (a near-tie may flip). `topk_ids` can swap at near-ties too; their log-probs
    are compared instead."""
    floats = [n for n, ref in expect.items() if ref.dtype.kind == "f"]
    diffs = {n: float(np.abs(np.asarray(got[n], np.float32) - expect[n].astype(np.float32)).max()) for n in floats}
    mismatches = 0
    if "argmax" in expect:
        ref = expect["logits"].astype(np.float32).reshape(-1, expect["logits"].shape[-1])
        pick = np.asarray(got["argmax"]).reshape(-1)
        slack = 2 * diffs["logits"]
        mismatches = int((ref[np.arange(len(pick)), pick] < ref.max(axis=-1) - slack).sum())
    return PlanCheck(max(diffs.values(), default=0.0), mismatches)


def check_plan(plan: bytes, onnx_path: Path, manifest: dict, role: str) -> PlanCheck:
    """Run the plan and ORT CPU on one random call (P=5 cached rows, q=4) and compare the outputs."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from talon_rt.export.parity import ancestors_mask, ort_session
    sess = ort_session(onnx_path)
    rng = np.random.default_rng(0)
    feed = {}
    q, P = 4, 5
    for inp in sess.get_inputs():
        dt = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(bool)": bool}[inp.type]
        if inp.name in ("input_ids",):
            feed[inp.name] = rng.integers(0, manifest["model"]["vocab_size"], (1, q))
        elif inp.name == "position_ids":
            feed[inp.name] = np.array([[P, P + 1, P + 1, P + 2]])
        elif inp.name == "tree_mask":
            feed[inp.name] = ancestors_mask([-1, 0, 0, 1])[None]
        elif inp.name == "past_len":
            feed[inp.name] = np.array([P], dtype=np.int64)
        else:
            shape = [q if isinstance(s, str) else s for s in inp.shape]
            feed[inp.name] = (0.5 * rng.standard_normal(shape)).astype(dt)
    expect = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    with TrtRunner(EngineFromBytes(plan)) as runner:
        got = runner.infer(feed)
    return compare_outputs(expect, got)


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def build_engine_plans(engine_dir: Path, workspace_gb: float = 4.0, check: bool = False,
                       log=print) -> dict:
    """Build `<role>.plan` for every graph, update manifest.json; returns the new manifest."""
    manifest = verify_engine_dir(engine_dir)
    if manifest.get("draft") is None:
        raise ExportError(f"{engine_dir}: a target-only engine (draft: null in manifest.json); the TensorRT "
                          f"backend runs engines with a draft head (ORT runs this one: --backend ort-cuda)")
    odd = [r for r in ROLES if manifest["graphs"][r]["flavour"] != "standard"]
    if odd:
        raise ExportError(f"{engine_dir}: graphs {odd} are flavour {manifest['graphs'][odd[0]]['flavour']!r}; "
                          f"TensorRT needs flavour 'standard' (export with --flavour standard)")
    for role, section in (("target", "model"), ("draft", "draft")):
        weights = manifest[section].get("weights", "float")
        if weights != "float":
            raise ExportError(f"{engine_dir}: {role} weights are {weights} (ONNX Runtime's MatMulNBits); "
                              f"TensorRT plans need float {role} weights (export with --{role}-weights float)")
    trt, logger, builder = load_tensorrt()
    section = {"version": trt.__version__, "device": gpu_name(), "plans": {}}
    for role in ROLES:
        onnx_path = engine_dir / manifest["graphs"][role]["file"]
        t0 = time.perf_counter()
        plan = build_plan(trt, logger, builder, onnx_path, manifest, role, workspace_gb)
        name = f"{role}.plan"
        tmp = engine_dir / f".{name}.tmp-{os.getpid()}"
        tmp.write_bytes(plan)
        os.replace(tmp, engine_dir / name)
        shapes, values = profile_shapes(manifest, role)
        entry = {"file": name, "build_s": round(time.perf_counter() - t0, 1),
                 "profile": {k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])} for k, v in shapes.items()},
                 "shape_inputs": {k: {"min": v[0], "opt": v[1], "max": v[2]} for k, v in values.items()}}
        if check:
            result = check_plan(plan, onnx_path, manifest, role)
            entry["max_abs_diff_vs_ort"] = result.max_abs_diff
            entry["argmax_mismatches_vs_ort"] = result.argmax_mismatches
        section["plans"][role] = entry
        manifest["files"][name] = file_record(engine_dir / name)
        log(f"built {name} ({len(plan) / 1e6:.1f} MB, {entry['build_s']} s)"
            + (f", max |diff| vs ORT {entry['max_abs_diff_vs_ort']:.2e}, "
               f"{entry['argmax_mismatches_vs_ort']} argmax rows off" if check else ""))
    manifest["tensorrt"] = section
    tmp = engine_dir / f".manifest.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, engine_dir / "manifest.json")
    return verify_engine_dir(engine_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m talon_rt.export.trt",
                                description="Build TensorRT plans (<role>.plan) for an engine directory.")
    p.add_argument("engine_dir", type=Path, help="an engine directory written by `python -m talon_rt.export`")
    p.add_argument("--workspace-gb", type=float, default=4.0, help="builder workspace (default %(default)s)")
    p.add_argument("--check", action="store_true", help="run each plan once against ORT CPU and report the diff")
    args = p.parse_args(argv)
    try:
        build_engine_plans(args.engine_dir, args.workspace_gb, args.check,
                           log=lambda msg: print(f"talon_rt.export.trt: {msg}", file=sys.stderr))
    except TrtUnavailable as e:
        print(f"talon_rt.export.trt: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ExportError as e:
        print(f"talon_rt.export.trt: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
