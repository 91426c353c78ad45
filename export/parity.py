"""Drive the exported graphs with numpy through ONNX Runtime, for parity checks (tests, TensorRT build).

Not the runtime: no IO binding, no preallocation discipline; just enough to feed the documented
inputs (docs/engine-format.md) and keep the static KV buffers of one sequence.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx


def ort_session(model: onnx.ModelProto | str | Path, threads: int = 1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def ancestors_mask(parents: list[int]) -> np.ndarray:
    """[n, n] bool: node i sees itself and its ancestors (parents[i] < i, -1 = attached to the past)."""
    n = len(parents)
    m = np.zeros((n, n), dtype=bool)
    for i, p in enumerate(parents):
        m[i, i] = True
        if p >= 0:
            m[i] |= m[p]
    return m


def causal(q: int) -> np.ndarray:
    return np.tril(np.ones((q, q), dtype=bool))


class GraphRunner:
    """One graph plus its static KV buffers [1, kvh, S, hd] (one pair per layer) for one sequence."""

    def __init__(self, session, kv_names: list[tuple[str, str]]):
        self.sess = session
        self.kv_names = kv_names  # [(past_key name, past_value name)] in present-output order
        shapes = {i.name: i for i in session.get_inputs()}
        k0 = shapes[kv_names[0][0]]
        dtype = np.float16 if k0.type == "tensor(float16)" else np.float32
        self.kv = [[np.zeros(k0.shape, dtype), np.zeros(k0.shape, dtype)] for _ in kv_names]
        self.past_len = 0
        present = {o.name: o.shape for o in session.get_outputs()}[kv_names[0][0].replace("past_", "present_")]
        self.in_place = present[2] == k0.shape[2]   # flavour "gqa": present is the whole static buffer

    @classmethod
    def target(cls, session):
        n = sum(1 for i in session.get_inputs() if i.name.startswith("past_key_"))
        return cls(session, [(f"past_key_{i}", f"past_value_{i}") for i in range(n)])

    @classmethod
    def draft(cls, session):
        return cls(session, [("past_key", "past_value")])

    def run(self, feeds: dict, positions, tree_mask: np.ndarray, commit: bool = True) -> dict:
        """Run q tokens at `positions` (explicit); tree_mask [q, T] over the trailing T keys.

        commit=True writes the new K/V at [P, P+q) and advances P; False leaves the cache alone.
        Returns every output by name.
        """
        q = len(positions)
        feed = dict(feeds)
        feed["position_ids"] = np.asarray(positions, dtype=np.int64).reshape(1, q)
        feed["tree_mask"] = np.asarray(tree_mask, dtype=bool).reshape(1, q, -1)
        feed["past_len"] = np.array([self.past_len], dtype=np.int64)
        for (kn, vn), (k, v) in zip(self.kv_names, self.kv):
            feed[kn], feed[vn] = k, v
        if self.in_place:
            out = self._run_in_place(feed)
            if commit:
                self.past_len += q
            return out
        names = [o.name for o in self.sess.get_outputs()]
        out = dict(zip(names, self.sess.run(None, feed)))
        if commit:
            self.append(out, q)
        return out

    def _run_in_place(self, feed: dict) -> dict:
        """Flavour "gqa": each cache array is bound as both past_* and present_*; the graph writes the
        q new rows at [P, P+q) itself (commit=False leaves P alone: those rows are then stale)."""
        binding = self.sess.io_binding()
        kv = {}
        for (kn, vn), (k, v) in zip(self.kv_names, self.kv):
            kv[kn], kv[vn] = k, v
        for name, arr in feed.items():
            if name in kv:
                continue
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        for name, arr in kv.items():
            for bound in (name, name.replace("past_", "present_")):
                bind = binding.bind_input if bound == name else binding.bind_output
                bind(bound, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
        names = [o.name for o in self.sess.get_outputs() if not o.name.startswith("present_")]
        for name in names:
            binding.bind_output(name, "cpu")
        self.sess.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()[len(kv):]))

    def append(self, out: dict, q: int) -> None:
        """Write the present_* rows of `out` at [P, P+q)."""
        P = self.past_len
        for (kn, vn), kv in zip(self.kv_names, self.kv):
            kv[0][:, :, P:P + q] = out[kn.replace("past_", "present_")]
            kv[1][:, :, P:P + q] = out[vn.replace("past_", "present_")]
        self.past_len = P + q
