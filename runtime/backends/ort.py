"""ONNX Runtime backend (CPU EP; CUDA EP when onnxruntime-gpu and a GPU are present), IO binding.

Every buffer is allocated once at its maximum shape (`OrtDims`). A call binds views of those buffers
at the call's shape; the IOBinding of each q is made once and cached (q is bounded by the engine
limits). Where the buffers live and how rows move between them is the I/O strategy's business
(runtime/backends/ort_io.py): on the CPU a step only rewrites the small inputs in place; on CUDA
those host inputs are bound again before every run, since ORT copies them when they are bound.

Layout: the K/V caches of all layers live in one array `[2L, kvh, S, hd]` (K of layer i at 2i,
V at 2i+1; each `[1, kvh, S, hd]` slice is contiguous and bound as `past_*`). Flavour "standard":
the q new rows of a call land in one array `[2L, kvh*q_max*hd]` whose per-layer prefix `[kvh, q, hd]`
is bound as `present_*`, and a commit is one gather for all layers. Flavour "gqa" (CPU only: ORT's
CUDA GroupQueryAttention takes no attention_bias, so no tree mask): `present_*` is bound to the same
slice as `past_*`, the graph writes the q new rows at [P, P+q) itself, and a commit only moves an
accepted path that is not a prefix down to [P, P+a).

Greedy verification reads the target's in-graph `argmax` [q] (`target_argmax`); on CUDA its
binding leaves `logits` on the device. What crosses the host on CUDA per call: the small inputs,
the argmax ids (greedy) or logits (sampling), the draft's top-k and `hidden_out`, and draft_fc's
`hidden` (the loop keeps each tree node's hidden state on the host). The target's `features` stay
on the device: draft_fc reads its rows from a device -> device gather.

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

from talon_rt.runtime.backends.base import Backend, check_call
from talon_rt.runtime.backends.ort_io import DeviceIO, HostIO, KVLayout
from talon_rt.runtime.errors import EngineError, OptionError
from talon_rt.runtime.manifest import Manifest, check_graph_io

_GLOBAL_POOL: dict[str, int] = {}


# ORT NodeArg.type strings -> dtype names
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
             "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}


def session_io(session: Any) -> tuple[list[tuple[str, str, list[Any]]], list[tuple[str, str, list[Any]]]]:
    """Declared (inputs, outputs) of an onnxruntime InferenceSession as check_graph_io wants them."""
    def conv(args: Any) -> list[tuple[str, str, list[Any]]]:
        return [(a.name, ORT_TYPES.get(a.type, a.type), list(a.shape)) for a in args]
    return conv(session.get_inputs()), conv(session.get_outputs())


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
    for role in m.roles:
        check_graph_io(m, role, *session_io(_load(m.path(m.graphs[role].file), so, ["CPUExecutionProvider"])))


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
    device: str = "cpu"          # ORT device name of the buffer
    uses_t: bool = False
    offset: int = 0              # element offset inside the buffer

    def ptr(self) -> int:
        base = self.buffer.ctypes.data if isinstance(self.buffer, np.ndarray) else self.buffer.data_ptr()
        return base + self.offset * np.dtype(self.dtype).itemsize


class _Graph:
    """One ORT session with its inputs and outputs bound to preallocated buffers.

    `per_call` inputs are bound again before every run (host inputs of a device session: ORT copies
    them to the device when they are bound); the rest stay bound for every call of the same q.
    """

    def __init__(self, session: ort.InferenceSession, inputs: list[_Tensor], outputs: list[_Tensor],
                 per_call: tuple[str, ...] = ()):
        self.session = session
        self.inputs = inputs
        self.outputs = outputs
        self.per_call = [x for x in inputs if x.name in per_call]
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
        else:
            if entry[1] != t:
                for x in self.inputs:
                    if x.uses_t:
                        entry[0].bind_input(x.name, x.device, 0, x.dtype, x.shape(q, t), x.ptr())
                entry[1] = t
            for x in self.per_call:
                entry[0].bind_input(x.name, x.device, 0, x.dtype, x.shape(q, t), x.ptr())
        self.session.run_with_iobinding(entry[0])


@dataclass(frozen=True)
class OrtDims:
    """The sizes every buffer of the backend is allocated from (one engine, batch 1)."""
    layers: int           # target decoder layers
    kv_heads: int         # target K/V heads
    head_dim: int
    vocab: int
    features: int         # 3H: the EAGLE-3 taps, concatenated
    # the draft's sizes: 0 for a target-only engine (no draft buffers)
    hidden: int           # draft hidden size
    draft_kv_heads: int
    draft_head_dim: int
    k_max: int            # children per draft row
    S: int                # limits.max_seq_len
    q_max: int            # max(max_tree_tokens, max_prefill_chunk): tokens per call

    @classmethod
    def of(cls, m: Manifest) -> OrtDims:
        md, dd, lim = m.model, m.draft, m.limits
        hidden, kvh, hd, k_max = ((dd.hidden_size, dd.num_kv_heads, dd.head_dim, dd.k_max) if dd is not None
                                  else (0, 0, 0, 0))
        return cls(layers=md.num_layers, kv_heads=md.num_kv_heads, head_dim=md.head_dim, vocab=md.vocab_size,
                   features=m.feature_size, hidden=hidden, draft_kv_heads=kvh,
                   draft_head_dim=hd, k_max=k_max, S=lim.max_seq_len,
                   q_max=max(lim.max_tree_tokens, lim.max_prefill_chunk))

    @property
    def target_kv(self) -> KVLayout:
        return KVLayout(2 * self.layers, self.kv_heads, self.head_dim, self.S, self.q_max)

    @property
    def draft_kv(self) -> KVLayout:
        return KVLayout(2, self.draft_kv_heads, self.draft_head_dim, self.S, self.q_max)


SMALL_INPUTS = ("input_ids", "position_ids", "tree_mask", "past_len")
GQA_ON_CUDA = ("ORT's CUDA GroupQueryAttention kernel rejects attention_bias (the tree mask) and has no "
               "float32 kernel")


def _check_device(m: Manifest, device: str) -> None:
    if device != "cuda":
        return
    gqa = [r for r in ("target", "draft") if r in m.graphs and m.graphs[r].flavour == "gqa"]
    if gqa:
        raise OptionError(f"option backend: 'ort-cuda' cannot run flavour 'gqa' graphs ({GQA_ON_CUDA}); "
                          f"{m.dir} has graphs.{gqa[0]}.flavour 'gqa' (export with --flavour standard)")
    if not cuda_available():
        raise OptionError("option backend: 'ort-cuda' needs onnxruntime-gpu with a CUDA device"
                          + ort_gpu_conflict())
    from talon_rt.runtime.backends import cuda_rt
    cuda_rt.preload_pip_cuda()


def session_providers(device: str) -> list[Any]:
    """Session providers. CUDA: TF32 off (`use_tf32`), so fp32 graphs compute as on the CPU."""
    if device == "cuda":
        return [("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def check_providers(session: Any, path: Any, device: str) -> None:
    """The session must run on the provider asked for (ORT falls back to CPU with only a log line)."""
    want = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    got = session.get_providers()
    if not got or got[0] != want:
        raise EngineError(f"{path}: onnxruntime created the session on {got}, not {want} "
                          f"(CUDA or cuDNN libraries missing or mismatched?)")


def ort_gpu_conflict() -> str:
    """A hint when onnxruntime and onnxruntime-gpu are both installed (they share one package folder)."""
    from importlib import metadata
    have = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            have.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    if len(have) < 2:
        return ""
    return (f"; both {' and '.join(have)} are installed and overwrite each other (run `make install-gpu`, "
            f"see docs/gpu.md)")


def _default_io(device: str, dt: type) -> HostIO:
    """Device buffers through libcudart on CUDA; host buffers bound in place on the CPU."""
    if device == "cuda":
        from talon_rt.runtime.backends import cuda_rt
        return DeviceIO(cuda_rt.load(), dt)
    return HostIO()


def _open_sessions(m: Manifest, device: str, threads: int, thread_mode: str) -> dict[str, ort.InferenceSession]:
    """One session per graph of the engine, its providers and declared I/O checked."""
    sessions = {}
    for role in m.roles:
        path = m.path(m.graphs[role].file)
        sess = _load(path, _session_options(threads, thread_mode), session_providers(device))
        check_providers(sess, path, device)
        check_graph_io(m, role, *session_io(sess))
        sessions[role] = sess
    return sessions


class OrtBackend(Backend):
    """Target, draft_fc and draft graphs on one ORT execution provider (the target alone for a
    target-only engine: its draft calls are never made)."""

    def __init__(self, m: Manifest, device: str = "cpu", threads: int = 0, thread_mode: str = "runspin",
                 io: HostIO | None = None):
        _check_device(m, device)
        self.name = f"ort-{device}"
        self.device = device
        self.dims = d = OrtDims.of(m)
        self.S, self.q_max = d.S, d.q_max
        self.io = io if io is not None else _default_io(device, m.kv_dtype)
        sessions = _open_sessions(m, device, threads, thread_mode)
        self._alloc_small_inputs()
        self.in_place = {r: r in m.graphs and m.graphs[r].flavour == "gqa" for r in ("target", "draft")}
        self._bind_target(sessions["target"], m.kv_dtype)
        self._q_t = 0
        self._closed = False
        if m.draft is None:
            self.kv_d = self.new_d = self.fc_in = self.fc_out = self.hidden = None
            self.topk_ids = self.topk_logp = self.hidden_out = None
            self._fc = self._draft = None
            return
        self._bind_draft_fc(sessions["draft_fc"], m.kv_dtype)
        self._bind_draft(sessions["draft"], m.kv_dtype)

    @property
    def _per_call(self) -> tuple[str, ...]:
        """The inputs bound again before every run (host inputs of a device session)."""
        return SMALL_INPUTS + ("hidden",) if self.io.rebind_inputs else ()

    def _alloc_small_inputs(self) -> None:
        """Small host inputs, shared by the target and the draft (they never run at once)."""
        qm, S = self.q_max, self.S
        self.ids = np.zeros(qm, np.int64)
        self.pos = np.zeros(qm, np.int64)
        self.mask = np.zeros(qm * S, np.bool_)     # [q, T] with T <= S (draft scratch + new rows)
        self.past = np.zeros(1, np.int64)

    def _bind_target(self, session: ort.InferenceSession, dt: type) -> None:
        """target: cache [2L, kvh, S, hd]; present [2L, kvh*qm*hd] (standard); features stay with the cache."""
        d, io, qm, S, dev = self.dims, self.io, self.q_max, self.S, self.io.device
        tk = d.target_kv
        self.kv_t = io.alloc(tk.slabs * tk.heads * S * tk.head_dim, dt)
        self.new_t = io.alloc(1 if self.in_place["target"] else tk.slabs * tk.heads * qm * tk.head_dim, dt)
        self.logits = np.zeros(qm * d.vocab, np.float32)
        self.argmax = np.zeros(qm, np.int64)
        self.features = io.alloc(qm * d.features, dt)
        small = self._small_inputs(with_t=False)
        kv_in, kv_out = self._kv_tensors(tk, "past_{}_{}", "present_{}_{}", self.kv_t, self.new_t,
                                         self.in_place["target"], dt, dev)
        rest = [_Tensor("argmax", self.argmax, np.int64, lambda q, t: [1, q]),
                _Tensor("features", self.features, dt, lambda q, t: [1, q, d.features], dev)] + kv_out
        self._target = _Graph(session, small + kv_in,
                              [_Tensor("logits", self.logits, np.float32, lambda q, t: [1, q, d.vocab])] + rest,
                              self._per_call)
        self._target_greedy = self._target
        if io.resident:   # greedy: logits stay in a device buffer, only the argmax ids cross
            self.logits_dev = io.alloc(qm * d.vocab, np.float32)
            self._target_greedy = _Graph(session, small + kv_in, [
                _Tensor("logits", self.logits_dev, np.float32, lambda q, t: [1, q, d.vocab], dev)] + rest,
                self._per_call)

    def _bind_draft_fc(self, session: ort.InferenceSession, dt: type) -> None:
        """draft_fc: feature rows (gathered next to the features) -> hidden."""
        d, qm = self.dims, self.q_max
        self.fc_in = self.io.alloc(qm * d.features, dt)
        self.fc_out = np.zeros(qm * d.hidden, dt)
        self._fc = _Graph(session, [_Tensor("features", self.fc_in, dt, lambda q, t: [1, q, d.features],
                                            self.io.device)],
                          [_Tensor("hidden", self.fc_out, dt, lambda q, t: [1, q, d.hidden])])

    def _bind_draft(self, session: ort.InferenceSession, dt: type) -> None:
        """draft: its own one-layer cache [2, kvd, S, hdd]."""
        d, io, qm, S, dev = self.dims, self.io, self.q_max, self.S, self.io.device
        dk = d.draft_kv
        self.kv_d = io.alloc(2 * dk.heads * S * dk.head_dim, dt)
        self.new_d = io.alloc(1 if self.in_place["draft"] else 2 * dk.heads * qm * dk.head_dim, dt)
        self.hidden = np.zeros(qm * d.hidden, dt)
        self.topk_ids = np.zeros(qm * d.k_max, np.int64)
        self.topk_logp = np.zeros(qm * d.k_max, np.float32)
        self.hidden_out = np.zeros(qm * d.hidden, dt)
        d_past, d_present = self._kv_tensors(dk, "past_{}", "present_{}", self.kv_d, self.new_d,
                                             self.in_place["draft"], dt, dev)
        d_in = (self._small_inputs(with_t=True) + [_Tensor("hidden", self.hidden, dt, lambda q, t: [1, q, d.hidden])]
                + d_past)
        d_out = [
            _Tensor("topk_ids", self.topk_ids, np.int64, lambda q, t: [1, q, d.k_max]),
            _Tensor("topk_logp", self.topk_logp, np.float32, lambda q, t: [1, q, d.k_max]),
            _Tensor("hidden_out", self.hidden_out, dt, lambda q, t: [1, q, d.hidden])] + d_present
        self._draft = _Graph(session, d_in, d_out, self._per_call)

    def _small_inputs(self, with_t: bool) -> list[_Tensor]:
        return [
            _Tensor("input_ids", self.ids, np.int64, lambda q, t: [1, q]),
            _Tensor("position_ids", self.pos, np.int64, lambda q, t: [1, q]),
            _Tensor("tree_mask", self.mask, np.bool_, (lambda q, t: [1, q, t]) if with_t else (lambda q, t: [1, q, q]),
                    uses_t=with_t),
            _Tensor("past_len", self.past, np.int64, lambda q, t: [1]),
        ]

    @staticmethod
    def _kv_tensors(kv: KVLayout, past: str, present: str, cache: Any, new: Any, in_place: bool, dt: type,
                    dev: str) -> tuple[list[_Tensor], list[_Tensor]]:
        """past_* bound to each slab of the cache; present_* to the same slab (gqa, in place) or to the
        q-row prefix of the slab's new-rows buffer (standard). `past`/`present` format (kind, layer)."""
        ins, outs = [], []
        for slab in range(kv.slabs):
            kind, layer = ("key", "value")[slab % 2], slab // 2
            ins.append(_Tensor(past.format(kind, layer), cache, dt, lambda q, t: [1, kv.heads, kv.S, kv.head_dim],
                               dev, offset=slab * kv.heads * kv.S * kv.head_dim))
            if in_place:
                outs.append(replace(ins[-1], name=present.format(kind, layer)))
            else:
                outs.append(_Tensor(present.format(kind, layer), new, dt, lambda q, t: [1, kv.heads, q, kv.head_dim],
                                    dev, offset=slab * kv.heads * kv.q_max * kv.head_dim))
        return ins, outs

    def _stage(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, past_len: int) -> tuple[int, int]:
        q, t = mask.shape
        check_call(q, past_len, self.q_max, self.S)
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
        V = self.dims.vocab
        return self.logits[:q * V].reshape(q, V)

    def target_argmax(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, past_len: int) -> np.ndarray:
        q, _ = self._stage(ids, positions, mask, past_len)
        self._target_greedy.run(q, q)
        self._q_t = q
        return self.argmax[:q]

    def commit_target(self, past_len: int, rows: np.ndarray) -> None:
        if not self.in_place["target"]:
            self.io.store_rows(self.dims.target_kv, self.kv_t, self.new_t, past_len, self._q_t, rows)
        elif len(rows) and rows[-1] != len(rows) - 1:   # gqa wrote the q rows at [P, P+q); a prefix is in place
            self.io.compact_rows(self.dims.target_kv, self.kv_t, past_len, rows)

    # -- draft --------------------------------------------------------------------------------------

    def keep_features(self, rows: np.ndarray, at: int) -> None:
        self.io.gather_rows(self.fc_in, self.features, rows, self.dims.features, self._q_t, at)

    def draft_fc(self, rows: np.ndarray, kept: int = 0) -> np.ndarray:
        n, H = kept + len(rows), self.dims.hidden
        if len(rows):
            self.io.gather_rows(self.fc_in, self.features, rows, self.dims.features, self._q_t, kept)
        self._fc.run(n, n)
        return self.fc_out[:n * H].reshape(n, H)

    def draft(self, ids: np.ndarray, hidden: np.ndarray, positions: np.ndarray, mask: np.ndarray,
              past_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q, t = self._stage(ids, positions, mask, past_len)
        H, k = self.dims.hidden, self.dims.k_max
        self.hidden[:q * H] = hidden.reshape(-1)
        self._draft.run(q, t)
        if not self.in_place["draft"]:   # flavour gqa wrote its q rows at [past_len, past_len+q) itself
            self.io.store_rows(self.dims.draft_kv, self.kv_d, self.new_d, past_len, q, None)
        return (self.topk_ids[:q * k].reshape(q, k), self.topk_logp[:q * k].reshape(q, k),
                self.hidden_out[:q * H].reshape(q, H))

    def buffer_ids(self) -> tuple[int, ...]:
        bufs = (self.kv_t, self.new_t, self.kv_d, self.new_d, self.logits, self.argmax, self.features, self.fc_in,
                self.fc_out, self.hidden, self.topk_ids, self.topk_logp, self.hidden_out, self.ids,
                self.pos, self.mask, self.past)
        return tuple(b.ctypes.data if isinstance(b, np.ndarray) else b.data_ptr() for b in bufs if b is not None)

    def close(self) -> None:
        if not self._closed:
            self._target = self._target_greedy = self._fc = self._draft = None  # type: ignore[assignment]
            self._closed = True
