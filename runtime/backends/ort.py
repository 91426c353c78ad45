"""ONNX Runtime backend (CPU EP; CUDA EP when onnxruntime-gpu and a GPU are present), IO binding.

Every buffer is allocated once at its maximum shape. A call binds views of those buffers at the
call's shape; the IOBinding of each q is made once and cached (q is bounded by the engine limits),
so a step only rewrites the small inputs in place and re-binds `tree_mask` when its width changes.

Layout: the K/V caches of all layers live in one array `[2L, kvh, S, hd]` (K of layer i at 2i,
V at 2i+1; each `[1, kvh, S, hd]` slice is contiguous and bound as `past_*`). Flavour "standard":
the q new rows of a call land in one array `[2L, kvh*q_max*hd]` whose per-layer prefix `[kvh, q, hd]`
is bound as `present_*`, and a commit is one numpy gather for all layers. Flavour "gqa": `present_*`
is bound to the same slice as `past_*`, the graph writes the q new rows at [P, P+q) itself, and a
commit only moves an accepted path that is not a prefix down to [P, P+a).

Greedy verification reads the target's in-graph `argmax` [q] (`target_argmax`); on CUDA its
binding leaves `logits` on the device, so only q ids cross to the host.

Threading (docs/design.md §7: the target and draft sessions alternate on 2 cores, and an idle ORT pool that
spins steals the core the other session needs):
- "runspin": per-session pools that spin between the ops of a run but stop when the run returns
  (`session.force_spinning_stop=1`), so an idle session leaves the cores to the other (default:
  fastest measured; a q=1 target call on 2 threads takes ~0.6x the time of "nospin", whose workers
  sleep and wake around every op);
- "nospin": per-session pools with `session.intra_op.allow_spinning=0`;
- "shared": one process-wide pool (`set_global_thread_pool_sizes`, `use_per_session_threads=False`);
- "spin":   ORT's defaults (per-session pools that spin), for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import onnxruntime as ort

from runtime.backends.base import Backend
from runtime.errors import EngineError, OptionError
from runtime.manifest import Manifest, check_graph_io, ort_io

_GLOBAL_POOL: dict[str, int] = {}


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _load(path: Any, so: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception classes without a common base
        raise EngineError(f"{path}: onnxruntime cannot load the graph: {str(e).splitlines()[0]}") from None


def check_graphs(m: Manifest) -> None:
    """Load each graph (no optimisation) and check its declared I/O against the manifest."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    for role in ("target", "draft_fc", "draft"):
        check_graph_io(m, role, *ort_io(_load(m.path(m.graphs[role].file), so, ["CPUExecutionProvider"])))


def _session_options(threads: int, thread_mode: str) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if thread_mode == "shared":
        if not _GLOBAL_POOL:
            # must precede the first session of the process; ORT keeps one env per process
            try:
                ort.capi._pybind_state.set_global_thread_pool_sizes(threads, 1)
            except Exception as e:  # ORT raises a bare RuntimeError once its env exists
                raise OptionError(f"option thread_mode: 'shared' needs the global ORT thread pool, "
                                  f"which must be set before any other session is created ({e})") from None
            _GLOBAL_POOL["threads"] = threads
        elif _GLOBAL_POOL["threads"] != threads:
            raise OptionError(f"option threads: the shared pool of this process already has "
                              f"{_GLOBAL_POOL['threads']} threads, not {threads}")
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        if thread_mode == "nospin":
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        elif thread_mode == "runspin":
            so.add_session_config_entry("session.force_spinning_stop", "1")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


@dataclass
class _Tensor:
    """A bound tensor: a flat buffer and the shape it takes for a call of (q, T)."""
    name: str
    buffer: np.ndarray | ort.OrtValue
    dtype: type
    shape: Callable[[int, int], list[int]]
    device: str = "cpu"          # "cpu" or "cuda"
    uses_t: bool = False

    def ptr(self, offset: int = 0) -> int:
        base = self.buffer.ctypes.data if isinstance(self.buffer, np.ndarray) else self.buffer.data_ptr()
        return base + offset * np.dtype(self.dtype).itemsize


class _Graph:
    """One ORT session with its inputs and outputs bound to preallocated buffers."""

    def __init__(self, session: ort.InferenceSession, inputs: list[_Tensor], outputs: list[_Tensor]):
        self.session = session
        self.inputs = inputs
        self.outputs = outputs
        self._bindings: dict[int, list[Any]] = {}   # q -> [IOBinding, T]

    def run(self, q: int, t: int) -> None:
        entry = self._bindings.get(q)
        if entry is None:
            binding = self.session.io_binding()
            for x in self.inputs:
                binding.bind_input(x.name, x.device, 0, x.dtype, x.shape(q, t), x.ptr())
            for x in self.outputs:
                binding.bind_output(x.name, x.device, 0, x.dtype, x.shape(q, t), x.ptr())
            entry = self._bindings[q] = [binding, t]
        elif entry[1] != t:
            for x in self.inputs:
                if x.uses_t:
                    entry[0].bind_input(x.name, x.device, 0, x.dtype, x.shape(q, t), x.ptr())
            entry[1] = t
        self.session.run_with_iobinding(entry[0])


def _flat(n: int, dtype: type, device: str) -> np.ndarray | ort.OrtValue:
    if device == "cpu":
        return np.zeros(n, dtype=dtype)
    return ort.OrtValue.ortvalue_from_shape_and_type([n], dtype, "cuda", 0)


class OrtBackend(Backend):
    """Target, draft_fc and draft graphs on one ORT execution provider."""

    def __init__(self, m: Manifest, device: str = "cpu", threads: int = 0, thread_mode: str = "runspin"):
        if device == "cuda" and not cuda_available():
            raise OptionError("option backend: 'ort-cuda' needs onnxruntime-gpu with a CUDA device")
        self.name = f"ort-{device}"
        self.device = device
        md, dd, lim = m.model, m.draft, m.limits
        self.S = lim.max_seq_len
        self.q_max = max(lim.max_tree_tokens, lim.max_prefill_chunk)
        dt = m.kv_dtype
        qm, S = self.q_max, self.S
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda"
                     else ["CPUExecutionProvider"])
        sessions = {}
        for role in ("target", "draft_fc", "draft"):
            sess = _load(m.path(m.graphs[role].file), _session_options(threads, thread_mode), providers)
            check_graph_io(m, role, *ort_io(sess))
            sessions[role] = sess

        # small host inputs, shared by the target and the draft (they never run at once)
        self.ids = np.zeros(qm, np.int64)
        self.pos = np.zeros(qm, np.int64)
        self.mask = np.zeros(qm * S, np.bool_)     # [q, T] with T <= S (draft scratch + new rows)
        self.past = np.zeros(1, np.int64)
        L, kvh, hd, V, F, H = md.num_layers, md.num_kv_heads, md.head_dim, md.vocab_size, m.feature_size, md.hidden_size
        kvd, hdd, k = dd.num_kv_heads, dd.head_dim, dd.k_max

        self.in_place = {r: m.graphs[r].flavour == "gqa" for r in ("target", "draft")}

        # target: cache [2L, kvh, S, hd]; present [2L, kvh*qm*hd] (standard); outputs read on the host
        self.kv_t = _flat(2 * L * kvh * S * hd, dt, device)
        self.new_t = _flat(1 if self.in_place["target"] else 2 * L * kvh * qm * hd, dt, device)
        self.logits = np.zeros(qm * V, np.float32)
        self.argmax = np.zeros(qm, np.int64)
        self.features = np.zeros(qm * F, dt)
        small = self._small_inputs(with_t=False)
        kv_in, kv_out = [], []
        for i in range(L):
            for j, kind in enumerate(("key", "value")):
                slab = 2 * i + j
                kv_in.append(_Offset(f"past_{kind}_{i}", self.kv_t, dt, lambda q, t: [1, kvh, S, hd], device,
                                     offset=slab * kvh * S * hd))
                if self.in_place["target"]:
                    kv_out.append(replace(kv_in[-1], name=f"present_{kind}_{i}"))
                else:
                    kv_out.append(_Offset(f"present_{kind}_{i}", self.new_t, dt, lambda q, t: [1, kvh, q, hd],
                                          device, offset=slab * kvh * qm * hd))
        rest = [_Tensor("argmax", self.argmax, np.int64, lambda q, t: [1, q]),
                _Tensor("features", self.features, dt, lambda q, t: [1, q, F])] + kv_out
        self._target = _Graph(sessions["target"], small + kv_in,
                              [_Tensor("logits", self.logits, np.float32, lambda q, t: [1, q, V])] + rest)
        self._target_greedy = self._target
        if device == "cuda":   # greedy: logits stay in a device buffer
            self.logits_dev = _flat(qm * V, np.float32, device)
            self._target_greedy = _Graph(sessions["target"], small + kv_in, [
                _Tensor("logits", self.logits_dev, np.float32, lambda q, t: [1, q, V], device)] + rest)
        self._q_t = 0

        # draft_fc: features rows -> hidden
        self.fc_in = np.zeros(qm * F, dt)
        self.fc_out = np.zeros(qm * H, dt)
        self._fc = _Graph(sessions["draft_fc"], [_Tensor("features", self.fc_in, dt, lambda q, t: [1, q, F])],
                          [_Tensor("hidden", self.fc_out, dt, lambda q, t: [1, q, H])])

        # draft: its own one-layer cache [2, kvd, S, hdd]
        self.kv_d = _flat(2 * kvd * S * hdd, dt, device)
        self.new_d = _flat(1 if self.in_place["draft"] else 2 * kvd * qm * hdd, dt, device)
        self.hidden = np.zeros(qm * H, dt)
        self.topk_ids = np.zeros(qm * k, np.int64)
        self.topk_logp = np.zeros(qm * k, np.float32)
        self.hidden_out = np.zeros(qm * H, dt)
        d_past = [_Offset("past_key", self.kv_d, dt, lambda q, t: [1, kvd, S, hdd], device, offset=0),
                  _Offset("past_value", self.kv_d, dt, lambda q, t: [1, kvd, S, hdd], device, offset=kvd * S * hdd)]
        if self.in_place["draft"]:
            d_present = [replace(x, name=x.name.replace("past_", "present_")) for x in d_past]
        else:
            d_present = [
                _Offset("present_key", self.new_d, dt, lambda q, t: [1, kvd, q, hdd], device, offset=0),
                _Offset("present_value", self.new_d, dt, lambda q, t: [1, kvd, q, hdd], device,
                        offset=kvd * qm * hdd)]
        d_in = self._small_inputs(with_t=True) + [_Tensor("hidden", self.hidden, dt, lambda q, t: [1, q, H])] + d_past
        d_out = [
            _Tensor("topk_ids", self.topk_ids, np.int64, lambda q, t: [1, q, k]),
            _Tensor("topk_logp", self.topk_logp, np.float32, lambda q, t: [1, q, k]),
            _Tensor("hidden_out", self.hidden_out, dt, lambda q, t: [1, q, H])] + d_present
        self._draft = _Graph(sessions["draft"], d_in, d_out)
        self._dims = (L, kvh, hd, V, F, H, kvd, hdd, k)
        if device == "cuda":
            from runtime.backends import cuda_rt
            self._cuda = cuda_rt.load()
        self._closed = False

    def _small_inputs(self, with_t: bool) -> list[_Tensor]:
        return [
            _Tensor("input_ids", self.ids, np.int64, lambda q, t: [1, q]),
            _Tensor("position_ids", self.pos, np.int64, lambda q, t: [1, q]),
            _Tensor("tree_mask", self.mask, np.bool_, (lambda q, t: [1, q, t]) if with_t else (lambda q, t: [1, q, q]),
                    uses_t=with_t),
            _Tensor("past_len", self.past, np.int64, lambda q, t: [1]),
        ]

    def _stage(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, past_len: int) -> tuple[int, int]:
        q, t = mask.shape
        if q > self.q_max or past_len + q > self.S:
            raise ValueError(f"call of q={q} at past_len={past_len} exceeds the buffers (q_max={self.q_max}, S={self.S})")
        self.ids[:q] = ids
        self.pos[:q] = positions
        self.mask[:q * t] = mask.reshape(-1)
        self.past[0] = past_len
        return q, t

    # -- target -------------------------------------------------------------------------------------

    def target(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, past_len: int) -> np.ndarray:
        q, _ = self._stage(ids, positions, mask, past_len)
        self._target.run(q, q)
        self._q_t = q
        return self.logits[:q * self._dims[3]].reshape(q, self._dims[3])

    def target_argmax(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, past_len: int) -> np.ndarray:
        q, _ = self._stage(ids, positions, mask, past_len)
        self._target_greedy.run(q, q)
        self._q_t = q
        return self.argmax[:q]

    def commit_target(self, past_len: int, rows: np.ndarray) -> None:
        L, kvh, hd = self._dims[:3]
        a, q = len(rows), self._q_t
        if self.in_place["target"]:
            self._compact_target(past_len, rows)
            return
        if self.device == "cuda":
            self._commit_cuda(self.kv_t, self.new_t, 2 * L, kvh, hd, past_len, q, rows)
            return
        new = self.new_t.reshape(2 * L, -1)[:, :kvh * q * hd].reshape(2 * L, kvh, q, hd)
        cache = self.kv_t.reshape(2 * L, kvh, self.S, hd)
        if a == q or rows[-1] == a - 1:   # rows are 0..a-1: the accepted path is a prefix
            cache[:, :, past_len:past_len + a] = new[:, :, :a]
        else:
            cache[:, :, past_len:past_len + a] = new[:, :, rows]

    def _compact_target(self, past_len: int, rows: np.ndarray) -> None:
        """Flavour "gqa": the call left its q rows at [P, P+q); move the accepted path to [P, P+a)."""
        L, kvh, hd = self._dims[:3]
        a = len(rows)
        if a == 0 or rows[-1] == a - 1:   # a prefix is already in place
            return
        if self.device == "cuda":
            from runtime.backends import cuda_rt
            row = hd * self.features.dtype.itemsize
            for s in range(2 * L):
                cuda_rt.compact_rows(self._cuda, self.kv_t.data_ptr() + s * kvh * self.S * row, kvh, row, self.S,
                                     past_len, rows)
            self._cuda.sync(0)
            return
        cache = self.kv_t.reshape(2 * L, kvh, self.S, hd)
        cache[:, :, past_len:past_len + a] = cache[:, :, past_len + rows]   # fancy index: a temporary of a rows

    # -- draft --------------------------------------------------------------------------------------

    def draft_fc(self, rows: np.ndarray) -> np.ndarray:
        F, H = self._dims[4], self._dims[5]
        n = len(rows)
        feats = self.features[:self._q_t * F].reshape(self._q_t, F)
        np.take(feats, rows, axis=0, out=self.fc_in[:n * F].reshape(n, F))
        self._fc.run(n, n)
        return self.fc_out[:n * H].reshape(n, H)

    def draft(self, ids: np.ndarray, hidden: np.ndarray, positions: np.ndarray, mask: np.ndarray,
              past_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q, t = self._stage(ids, positions, mask, past_len)
        H, k = self._dims[5], self._dims[8]
        self.hidden[:q * H] = hidden.reshape(-1)
        self._draft.run(q, t)
        if not self.in_place["draft"]:   # flavour gqa wrote its q rows at [past_len, past_len+q) itself
            self._store_draft_rows(past_len, q)
        return (self.topk_ids[:q * k].reshape(q, k), self.topk_logp[:q * k].reshape(q, k),
                self.hidden_out[:q * H].reshape(q, H))

    def _store_draft_rows(self, past_len: int, q: int) -> None:
        kvd, hdd = self._dims[6:8]
        if self.device == "cuda":
            self._commit_cuda(self.kv_d, self.new_d, 2, kvd, hdd, past_len, q, np.arange(q))
            return
        new = self.new_d.reshape(2, -1)[:, :kvd * q * hdd].reshape(2, kvd, q, hdd)
        self.kv_d.reshape(2, kvd, self.S, hdd)[:, :, past_len:past_len + q] = new

    # -- device commit ------------------------------------------------------------------------------

    def _commit_cuda(self, cache: Any, new: Any, slabs: int, kvh: int, hd: int, past_len: int, q: int,
                     rows: np.ndarray) -> None:
        """Rows of new [slabs][kvh, q, hd] -> cache [slabs][kvh, S, hd] rows past_len + j, on the device.

        run_with_iobinding has synchronised ORT's stream, so the copies (on the legacy default stream)
        see the outputs; ORT's stream may not wait for the default stream, so they finish before return.
        """
        from runtime.backends import cuda_rt
        row = hd * self.features.dtype.itemsize
        for s in range(slabs):
            cuda_rt.copy_rows(self._cuda, cache.data_ptr() + s * kvh * self.S * row,
                              new.data_ptr() + s * kvh * self.q_max * row, kvh, row, self.S, q, past_len, rows)
        self._cuda.sync(0)

    def buffer_ids(self) -> tuple[int, ...]:
        bufs = (self.kv_t, self.new_t, self.kv_d, self.new_d, self.logits, self.argmax, self.features, self.fc_in,
                self.fc_out, self.hidden, self.topk_ids, self.topk_logp, self.hidden_out, self.ids,
                self.pos, self.mask, self.past)
        return tuple(b.ctypes.data if isinstance(b, np.ndarray) else b.data_ptr() for b in bufs)

    def close(self) -> None:
        if not self._closed:
            self._target = self._target_greedy = self._fc = self._draft = None  # type: ignore[assignment]
            self._closed = True


@dataclass
class _Offset(_Tensor):
    """A tensor bound at an element offset inside a bigger flat buffer."""
    offset: int = 0

    def ptr(self, offset: int = 0) -> int:
        return super().ptr(self.offset + offset)
