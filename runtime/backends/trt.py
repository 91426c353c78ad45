"""TensorRT backend: the engine's `*.plan` files on one GPU (selected when plans exist and a GPU is
present; `tensorrt` is imported only here).

Every I/O tensor gets one device buffer at its maximum shape (q -> max(max_tree_tokens,
max_prefill_chunk), T -> max_seq_len) whose address is set on the execution context once. A call
sets the input shapes (`set_input_shape`), copies the small inputs host -> device, runs
`execute_async_v3` on the backend's stream and copies back what the loop reads (logits, top-k,
hidden_out). KV rows move device -> device with cudaMemcpy2D (see base.py for the bookkeeping).
Shape-inference inputs (`past_len` when a plan uses it for shapes) live in host memory, as TensorRT
requires.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from talon_rt.runtime.backends import cuda_rt
from talon_rt.runtime.backends.base import Backend, check_call
from talon_rt.runtime.errors import EngineError, OptionError
from talon_rt.runtime.manifest import Manifest, check_graph_io, expected_io


def trt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def check_profile(plan_dir: Any, target_q: int, draft_t: int, target_rows: int, draft_rows: int) -> None:
    """A round of `target_rows` tree tokens and `draft_rows` draft scratch rows must fit the plans'
    optimization profiles: target tree_mask [q, q] up to target_q, draft tree_mask [q, T] up to
    draft_t (a layer's mask spans the round's scratch rows so far and its own q rows)."""
    if target_rows > target_q:
        raise OptionError(f"option budget: a round verifies up to {target_rows} tokens; {plan_dir}/target.plan's "
                          f"optimization profile stops at q={target_q} (lower the budget or chain_depth)")
    if draft_rows > draft_t:
        raise OptionError(f"option policy: a round writes up to {draft_rows} draft scratch rows; {plan_dir}/draft.plan's "
                          f"optimization profile stops at tree_mask width {draft_t} (lower eagle3_top_k x "
                          f"eagle3_depth, or rebuild the plans with `make engines`)")


def _dtype_name(trt: Any, dt: Any) -> str:
    return {trt.float32: "float32", trt.float16: "float16", trt.int64: "int64", trt.int32: "int32",
            trt.bool: "bool"}.get(dt, str(dt))


class _Plan:
    """One deserialized plan with a device (or host, for shape inputs) buffer per I/O tensor."""

    def __init__(self, trt: Any, runtime: Any, m: Manifest, role: str, cuda: cuda_rt.CudaRT, q_max: int):
        path = m.plan(role)
        assert path is not None
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EngineError(f"{path}: TensorRT cannot deserialize the plan (built for another GPU or "
                              f"TensorRT version?)")
        self.engine, self.ctx, self.cuda = engine, engine.create_execution_context(), cuda
        ins, outs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            entry = (name, _dtype_name(trt, engine.get_tensor_dtype(name)),
                     [d if d >= 0 else "dynamic" for d in engine.get_tensor_shape(name)])
            (ins if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outs).append(entry)
        check_graph_io(m, role, ins, outs)
        spec_in, spec_out = expected_io(m, role)
        sizes = {"q": q_max, "T": m.limits.max_seq_len}
        self.dev: dict[str, int] = {}
        self.host: dict[str, np.ndarray] = {}
        self.dynamic = {name for name, _, shape in ins if "dynamic" in shape}
        for name, spec in {**spec_in, **spec_out}.items():
            count = int(np.prod([sizes[d] if isinstance(d, str) else d for d in spec.shape]))
            np_dtype = np.dtype(spec.dtype)
            if name in spec_in and engine.is_shape_inference_io(name):
                self.host[name] = np.zeros(count, np_dtype)
                self.ctx.set_tensor_address(name, self.host[name].ctypes.data)
            else:
                self.dev[name] = cuda.malloc(count * np_dtype.itemsize)
                self.ctx.set_tensor_address(name, self.dev[name])

    def put(self, name: str, src: np.ndarray, stream: int) -> None:
        """Copy a small host input into its buffer (device, or host for a shape input)."""
        if name in self.host:
            self.host[name][:src.size] = src.reshape(-1)
        else:
            src = np.ascontiguousarray(src)
            self.cuda.memcpy(self.dev[name], src.ctypes.data, src.nbytes, cuda_rt.H2D, stream)

    def get(self, name: str, dst: np.ndarray, stream: int) -> None:
        self.cuda.memcpy(dst.ctypes.data, self.dev[name], dst.nbytes, cuda_rt.D2H, stream)

    def run(self, shapes: dict[str, tuple[int, ...]], stream: int) -> None:
        for name, shape in shapes.items():
            if name in self.dynamic and not self.ctx.set_input_shape(name, shape):
                raise RuntimeError(f"TensorRT rejected shape {shape} for input {name!r}")
        if not self.ctx.execute_async_v3(stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def profile_max(self, name: str) -> tuple[int, ...]:
        """The largest shape of input `name` in the plan's optimization profile 0."""
        return tuple(self.engine.get_tensor_profile_shape(name, 0)[2])

    def close(self) -> None:
        for ptr in self.dev.values():
            self.cuda.free(ptr)
        self.dev.clear()


class TrtBackend(Backend):
    name = "tensorrt"

    def __init__(self, m: Manifest):
        if m.draft is None:
            raise OptionError(f"option backend: 'tensorrt' runs engines with a draft head; {m.dir} is target-only "
                              f"(draft: null): use backend ort-cuda or ort-cpu")
        odd = [r for r in ("target", "draft") if m.graphs[r].flavour != "standard"]
        if odd:
            raise OptionError(f"option backend: 'tensorrt' needs flavour 'standard' graphs; {m.dir} has "
                              f"{m.graphs[odd[0]].flavour!r} (graphs.{odd[0]}.flavour)")
        if not trt_available():
            raise OptionError("option backend: 'tensorrt' needs the tensorrt Python package")
        if cuda_rt.device_count() == 0:
            raise OptionError("option backend: 'tensorrt' needs a CUDA device")
        missing = [r for r in ("target", "draft_fc", "draft") if m.plan(r) is None]
        if missing:
            raise OptionError(f"option backend: 'tensorrt' needs {', '.join(r + '.plan' for r in missing)} "
                              f"in {m.dir} (build them with `make engines`)")
        import tensorrt as trt
        self.cuda = cuda_rt.load()
        self.stream = self.cuda.stream()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        lim, md, dd = m.limits, m.model, m.draft
        self.q_max = max(lim.max_tree_tokens, lim.max_prefill_chunk)
        self.S = lim.max_seq_len
        self.m = m
        self.es = np.dtype(m.kv_dtype).itemsize
        self.plans = {r: _Plan(trt, self._runtime, m, r, self.cuda, self.q_max) for r in ("target", "draft_fc", "draft")}
        qm = self.q_max
        self.logits = np.zeros(qm * md.vocab_size, np.float32)
        self.argmax = np.zeros(qm, np.int64)
        self.topk_ids = np.zeros(qm * dd.k_max, np.int64)
        self.topk_logp = np.zeros(qm * dd.k_max, np.float32)
        self.hidden_out = np.zeros(qm * dd.hidden_size, m.kv_dtype)
        self.fc_out = np.zeros(qm * dd.hidden_size, m.kv_dtype)
        self._q_t = 0
        self._closed = False
        self._past = np.zeros(1, np.int64)
        # [1, q, q] and [1, q, T] at the profiles' maximum
        self.target_q = self.plans["target"].profile_max("tree_mask")[1]
        self.draft_q, self.draft_t = self.plans["draft"].profile_max("tree_mask")[1:]
        self.fc_q = self.plans["draft_fc"].profile_max("features")[1]

    def check_footprint(self, target_rows: int, draft_rows: int) -> None:
        check_profile(self.m.dir, self.target_q, self.draft_t, target_rows, draft_rows)

    def _small(self, plan: _Plan, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, past_len: int) -> None:
        self._past[0] = past_len
        plan.put("input_ids", ids.astype(np.int64, copy=False), self.stream)
        plan.put("position_ids", positions.astype(np.int64, copy=False), self.stream)
        plan.put("tree_mask", mask.astype(np.bool_, copy=False), self.stream)
        plan.put("past_len", self._past, self.stream)

    def _run_target(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, past_len: int) -> int:
        q = ids.shape[0]
        check_call(q, past_len, min(self.q_max, self.target_q), self.S)
        p, md = self.plans["target"], self.m.model
        self._small(p, ids, positions, mask, past_len)
        kv = {f"past_{k}_{i}": (1, md.num_kv_heads, self.S, md.head_dim)
              for i in range(md.num_layers) for k in ("key", "value")}
        p.run({"input_ids": (1, q), "position_ids": (1, q), "tree_mask": (1, q, q), "past_len": (1,), **kv},
              self.stream)
        self._q_t = q
        return q

    def target(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, past_len: int) -> np.ndarray:
        q, V = self._run_target(ids, positions, mask, past_len), self.m.model.vocab_size
        out = self.logits[:q * V]
        self.plans["target"].get("logits", out, self.stream)
        self.cuda.sync(self.stream)
        return out.reshape(q, V)

    def target_argmax(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, past_len: int) -> np.ndarray:
        q = self._run_target(ids, positions, mask, past_len)
        out = self.argmax[:q]
        self.plans["target"].get("argmax", out, self.stream)
        self.cuda.sync(self.stream)
        return out

    def _copy_rows(self, cache: int, new: int, kvh: int, hd: int, past_len: int, q: int, rows: np.ndarray) -> None:
        cuda_rt.copy_rows(self.cuda, cache, new, kvh, hd * self.es, self.S, q, past_len, rows, self.stream)

    def commit_target(self, past_len: int, rows: np.ndarray) -> None:
        p, md = self.plans["target"], self.m.model
        for i in range(md.num_layers):
            for k in ("key", "value"):
                self._copy_rows(p.dev[f"past_{k}_{i}"], p.dev[f"present_{k}_{i}"], md.num_kv_heads, md.head_dim,
                                past_len, self._q_t, rows)
        self.cuda.sync(self.stream)

    def keep_features(self, rows: np.ndarray, at: int) -> None:
        check_call(at + rows.shape[0], 0, min(self.q_max, self.fc_q), self.S)
        t, fc = self.plans["target"], self.plans["draft_fc"]
        row = self.m.feature_size * self.es
        base = fc.dev["features"] + at * row
        if rows[-1] == rows.shape[0] - 1:
            self.cuda.memcpy(base, t.dev["features"], rows.shape[0] * row, cuda_rt.D2D, self.stream)
        else:
            for j, r in enumerate(rows):
                self.cuda.memcpy(base + j * row, t.dev["features"] + int(r) * row, row, cuda_rt.D2D, self.stream)

    def draft_fc(self, rows: np.ndarray, kept: int = 0) -> np.ndarray:
        n = kept + rows.shape[0]
        check_call(n, 0, min(self.q_max, self.fc_q), self.S)
        fc, H, F = self.plans["draft_fc"], self.m.draft.hidden_size, self.m.feature_size
        if rows.shape[0]:
            self.keep_features(rows, kept)
        fc.run({"features": (1, n, F)}, self.stream)
        out = self.fc_out[:n * H]
        fc.get("hidden", out, self.stream)
        self.cuda.sync(self.stream)
        return out.reshape(n, H)

    def draft(self, ids: np.ndarray, hidden: np.ndarray, positions: np.ndarray, mask: np.ndarray,
              past_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q, t = mask.shape
        check_call(q, past_len, min(self.q_max, self.draft_q), self.S)
        if t > self.draft_t:
            raise ValueError(f"draft call with a mask {t} keys wide exceeds draft.plan's profile (T <= {self.draft_t})")
        p, dd = self.plans["draft"], self.m.draft
        self._small(p, ids, positions, mask, past_len)
        p.put("hidden", hidden.astype(self.m.kv_dtype, copy=False), self.stream)
        kv = (1, dd.num_kv_heads, self.S, dd.head_dim)
        p.run({"input_ids": (1, q), "hidden": (1, q, dd.hidden_size), "position_ids": (1, q),
               "tree_mask": (1, q, t), "past_len": (1,), "past_key": kv, "past_value": kv}, self.stream)
        k, H = dd.k_max, dd.hidden_size
        outs = (self.topk_ids[:q * k], self.topk_logp[:q * k], self.hidden_out[:q * H])
        for name, dst in zip(("topk_ids", "topk_logp", "hidden_out"), outs):
            p.get(name, dst, self.stream)
        for kind in ("key", "value"):
            self._copy_rows(p.dev[f"past_{kind}"], p.dev[f"present_{kind}"], dd.num_kv_heads, dd.head_dim,
                            past_len, q, np.arange(q))
        self.cuda.sync(self.stream)
        return outs[0].reshape(q, k), outs[1].reshape(q, k), outs[2].reshape(q, H)

    def buffer_ids(self) -> tuple[int, ...]:
        return tuple(ptr for p in self.plans.values() for ptr in p.dev.values())

    def close(self) -> None:
        if not self._closed:
            self.cuda.sync(self.stream)
            for p in self.plans.values():
                p.close()
            self._closed = True
