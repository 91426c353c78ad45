"""Build target.onnx, draft_fc.onnx and draft.onnx from the reference modules, in one of two flavours.

The graphs are written node by node with `onnx.helper` (no tracing), so the I/O is exactly the one in
docs/engine-format.md. Flavour "standard": standard ONNX ops only (opset 17), so TensorRT can parse
them; the graph returns the q new K/V rows. Flavour "gqa" (ONNX Runtime, CPU and CUDA): attention is
one `com.microsoft.GroupQueryAttention` per layer (rotary in the op) with the static cache bound as
both past and present, so the op writes the q new rows at [P, P+q) in place. Batch is 1, so
inside a standard graph the token rows are 2-D `[q, H]` and every linear layer is a `Gemm(x, W, transB=1)`
on the checkpoint's own `[out, in]` weight (a tied lm_head shares the embedding initializer). The gqa
flavour is written for ORT's CPU kernels, which pay per node: rows stay `[1, q, H]`, linear layers are
`MatMul` on pre-transposed weights with q|k|v packed into one projection (GroupQueryAttention takes the
packed rows), and the target fuses each residual Add with the next RMSNorm into one
`com.microsoft.SkipSimplifiedLayerNormalization` (~12 % off a q=1 target call on 2 cores).

fp16 graphs keep weights, KV, features and hidden in fp16; RMSNorm statistics, softmax and the draft's
log-softmax run in fp32 (as transformers does); the lm_head Gemm runs in fp16 and its output is cast,
so `logits` / `topk_logp` are float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from talon_rt.export.blocks import BLOCK, BlockWeight, concat
from talon_rt.export.quantize import WeightQuantizer
from talon_rt.export.reference import Eagle3Head, Target
from talon_rt.runtime.onnx_refs import initializer_spans

OPSET = 17
# standard: standard ops (TensorRT); gqa: GroupQueryAttention writes K/V in place (ORT); ort: ORT's fused
# ops with row-invariant attention (every row's logits and K/V equal, bit for bit, those of the same
# tokens in any other call: `ar` included), new K/V rows returned as in standard
FLAVOURS = ("standard", "gqa", "ort")
ORT_FLAVOURS = ("gqa", "ort")   # MatMul linears, fused norms, quantised weights: ONNX Runtime only
# logical positions per reduction chunk of the row-invariant attention (a multiple of 16: MLAS's kernels)
ATTN_CHUNK = 32
EXTERNAL_DATA_BYTES = 1_500_000_000  # above this a graph's weights go to `<file>.data` (protobuf caps at 2 GB)
MASK_NEG = -1e9  # additive bias for a hidden key: exp(-1e9) == 0 in fp32, finite for TensorRT

DTYPES = {"float32": (np.float32, TensorProto.FLOAT), "float16": (np.float16, TensorProto.FLOAT16)}
EMBED = "model.embed_tokens"  # the target's embedding initializers: EMBED.weight, or EMBED.qweight/.scales/...


@dataclass(frozen=True)
class TargetEmbedding:
    """The target's embedding as a written target file stores it, for the draft to read the same bytes.

    tensors: its initializers in the order [table] (float) or [qweight, scales, zero_points or None,
    mins_t or None] (blocks), each a TensorProto without data whose ONNX external data (location,
    offset, length) points at the bytes in the target's file (or in the target's own external-data file)."""
    tensors: tuple[onnx.TensorProto | None, ...]
    shape: tuple[int, int]   # [V, H]
    bits: int | None         # None: a float table read with Gather; 4 | 8: GatherBlockQuantized blocks


def target_embedding(path: Path) -> TargetEmbedding:
    """The embedding initializers of the target graph written at `path` (build_target's names)."""
    path = Path(path)
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name: t for t in graph.initializer}
    spans = initializer_spans(path)

    def ref(name: str) -> onnx.TensorProto | None:
        t = inits.get(name)
        if t is None:
            return None
        out = onnx.TensorProto(name=name, dims=t.dims, data_type=t.data_type,
                               data_location=onnx.TensorProto.EXTERNAL)
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out.external_data.extend(t.external_data)   # already beside the target: the same file and span
            return out
        if name not in spans:
            raise ValueError(f"{path.name}: initializer {name!r} keeps its values outside raw_data; the draft "
                             f"can only refer to raw bytes")
        offset, length = spans[name]
        for key, value in (("location", path.name), ("offset", str(offset)), ("length", str(length))):
            out.external_data.add(key=key, value=value)
        return out

    table = ref(EMBED + ".weight")
    if table is not None:
        return TargetEmbedding((table,), (table.dims[0], table.dims[1]), None)
    qweight = ref(EMBED + ".qweight")
    if qweight is None:
        raise ValueError(f"{path.name}: no {EMBED}.weight or {EMBED}.qweight initializer (not a target graph "
                         f"of this exporter)")
    n, blocks, width = qweight.dims      # [V, H/BLOCK, BLOCK*bits/8]
    return TargetEmbedding((qweight, ref(EMBED + ".scales"), ref(EMBED + ".zero_points"), ref(EMBED + ".mins_t")),
                           (n, blocks * BLOCK), width * 8 // BLOCK)


def rope_angles(inv_freq: torch.Tensor, max_seq_len: int) -> torch.Tensor:
    """[S, hd/2] fp32 rotary angles: position x inverse frequency."""
    return torch.arange(max_seq_len, dtype=torch.float32)[:, None] * inv_freq.float()[None]


class _Graph:
    """A tiny node/initializer accumulator with automatic names."""

    def __init__(self, dtype: str):
        self.np_dtype, self.onnx_dtype = DTYPES[dtype]
        self.half = dtype == "float16"
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}
        self.matmul = False  # linear layers as MatMul on a pre-transposed weight (ORT flavour)
        self.skip_norm = False  # residual Add + RMSNorm as one com.microsoft op (ORT flavour)
        self.quant: WeightQuantizer | None = None  # MatMul weights as MatMulNBits blocks (ORT flavour)
        self.names: dict[int, str] = {}  # id(module) -> checkpoint tensor name of its weight
        self._block_sums: dict[str, str] = {}  # activation -> its block sums (nbits_matmul with mins)
        self.rows2d = False  # flavour ort: token rows [q, H], row-invariant products (Gemm)

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, domain: str = "",
           **attrs) -> str | list[str]:
        names = outputs if isinstance(outputs, list) else [self._name(op_type) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self._name("n_" + op_type),
                                           domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def weight(self, name: str, t: torch.Tensor) -> str:
        """A model weight in the graph dtype."""
        return self.init(name, t.detach().float().numpy().astype(self.np_dtype))

    def const(self, values, dtype=np.int64) -> str:
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(self._name("const"), arr)
        return self._consts[key]

    def input(self, name: str, elem: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, value: str, name: str, elem: int, shape: list) -> None:
        self.op("Identity", value, outputs=[name])
        self.declare_output(name, elem, shape)

    def declare_output(self, name: str, elem: int, shape: list) -> None:
        """A graph output that a node already produces under `name` (no Identity: an in-place KV
        output must be the op's own output, or ORT would copy it)."""
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def model(self, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.inits)
        opsets = [helper.make_opsetid("", OPSET)]
        if any(n.domain == "com.microsoft" for n in self.nodes):
            opsets.append(helper.make_opsetid("com.microsoft", 1))
        m = helper.make_model(graph, opset_imports=opsets, producer_name="talon-rt")
        m.ir_version = 8  # readable by ORT >= 1.14 and TensorRT 10
        return m

    # -- layers -------------------------------------------------------------------------------

    def linear(self, x: str, lin: torch.nn.Linear, prefix: str) -> str:
        """x [n, in] -> [n, out] = x @ W^T (+ b)."""
        if self.matmul:
            return self.matmul_linear(x, [lin], prefix)
        w = self.weight(prefix + ".weight", lin.weight)
        if lin.bias is None:
            return self.op("Gemm", x, w, transB=1)
        return self.op("Gemm", x, w, self.weight(prefix + ".bias", lin.bias), transB=1)

    def matmul_linear(self, x: str, lins: list[torch.nn.Linear], prefix: str) -> str:
        """x [..., in] -> [..., sum(out)]: one MatMul on the concatenated, transposed weights (+ bias).

        ORT runs MatMul on rows of any rank (no 2-D reshapes around it) and one fused projection
        (e.g. q|k|v) costs one kernel launch instead of three."""
        if self.quant is not None:
            blocks = [self.block_weight(lin) for lin in lins]
            if len({b.bits for b in blocks}) == 1:
                w = concat(blocks)
                y = self.nbits_matmul(x, w, self.nbits_init(w, prefix))
            else:   # llama.cpp files may mix types (Q8_0 v beside Q4_1 q, k): one product per weight
                y = self.op("Concat", *[self.nbits_matmul(x, b, self.nbits_init(b, f"{prefix}.{j}"))
                                        for j, b in enumerate(blocks)], axis=-1)
        else:
            w = torch.cat([lin.weight.detach().float() for lin in lins], 0).t()
            y = self.rows_matmul(x, self.init(prefix + ".weight_t", w.numpy().astype(self.np_dtype)))
        if all(lin.bias is None for lin in lins):
            return y
        b = torch.cat([lin.bias.detach().float() if lin.bias is not None else torch.zeros(lin.out_features)
                       for lin in lins])
        return self.op("Add", y, self.init(prefix + ".bias", b.numpy().astype(self.np_dtype)))

    def block_weight(self, module: torch.nn.Module) -> BlockWeight:
        """The quantised weight [out, in] of a Linear or Embedding."""
        return self.quant.block_weight(self.names.get(id(module)), module.weight.detach().float().numpy())

    def nbits_init(self, w: BlockWeight, prefix: str) -> list[str]:
        """The initializers of a quantised weight: [qweight, scales, zero_points or "", mins_t [K/BLOCK, N]]
        (the last only with block minimums)."""
        names = [self.init(prefix + ".qweight", w.data), self.init(prefix + ".scales", w.scales),
                 "" if w.zero_points is None else self.init(prefix + ".zero_points", w.zero_points)]
        if w.mins is not None:
            names.append(self.init(prefix + ".mins_t", np.ascontiguousarray(w.mins.T)))
        return names

    def nbits_matmul(self, x: str, w: BlockWeight, inits: list[str]) -> str:
        """x [1, q, K] -> [1, q, N] = x @ dequantize(w)^T (com.microsoft.MatMulNBits, plus the block
        minimums' term when w has them)."""
        n, k = w.shape
        y = self.op("MatMulNBits", x, *inits[:3], domain="com.microsoft", K=k, N=n, bits=w.bits, block_size=BLOCK,
                    accuracy_level=self.quant.accuracy_level)
        if w.mins is None:
            return y
        return self.block_sums_matmul(x, inits[3], k // BLOCK, y)

    def rows_matmul(self, x: str, w: str) -> str:
        """x @ w [K, N]. Flavour ort (`rows2d`: x [q, K]) uses Gemm: ORT's one-row MatMul (a
        matrix-vector kernel) rounds apart from its many-row one, its Gemm rounds every row alike, and a
        row must not depend on q."""
        return self.op("Gemm", x, w) if self.rows2d else self.op("MatMul", x, w)

    def block_sums_matmul(self, x: str, mins_t: str, kb: int, y: str) -> str:
        """y + blocksum(x) @ mins_t: blocksum(x) [..., kb = K/BLOCK] the sums of x over each block
        (computed once per x). Flavour ort: one Gemm with y as its addend (row-invariant, see rows_matmul)."""
        sums = self._block_sums.get(x)
        if sums is None:
            shape = [0, kb, BLOCK] if self.rows2d else [0, 0, kb, BLOCK]
            sums = self._block_sums[x] = self.op("ReduceSum", self.op("Reshape", x, self.const(shape)),
                                                 self.const([len(shape) - 1]), keepdims=0)   # [..., K/BLOCK]
        if self.rows2d:
            return self.op("Gemm", sums, mins_t, y)
        return self.op("Add", y, self.op("MatMul", sums, mins_t))

    def nbits_gather(self, shape: tuple[int, int], bits: int, inits: list[str], ids: str) -> str:
        """Rows `ids` of the dequantised weight [N, K] (com.microsoft.GatherBlockQuantized) from
        `nbits_init`'s initializers (mins_t only with block minimums); qweight [N, K/BLOCK, bytes] is
        read as [N, K*bits/8]."""
        n, k = shape
        data = self.op("Reshape", inits[0], self.const([n, k * bits // 8]))
        zp = [inits[2]] if inits[2] else []
        rows = self.op("GatherBlockQuantized", data, ids, inits[1], *zp, domain="com.microsoft", bits=bits,
                       block_size=BLOCK, gather_axis=0, quantize_axis=1)
        if len(inits) < 4:
            return rows
        # + each row's block minimums, repeated over its block: mins [N, K/BLOCK] from mins_t
        mins = self.op("Gather", self.op("Transpose", inits[3], perm=[1, 0]), ids)          # [..., K/BLOCK]
        mins = self.op("Expand", self.op("Unsqueeze", mins, self.const([-1])), self.const([k // BLOCK, BLOCK]))
        return self.op("Add", rows, self.op("Reshape", mins, self.op("Shape", rows)))

    def target_rows(self, e: TargetEmbedding, ids: str) -> str:
        """Rows `ids` [n] of the target's embedding, read from the target's own initializers -> [n, H]."""
        if e.bits is None and e.tensors[0].data_type != self.onnx_dtype:
            raise ValueError(f"the target's embedding is {TensorProto.DataType.Name(e.tensors[0].data_type)}, "
                             f"the draft graph {TensorProto.DataType.Name(self.onnx_dtype)}: export both in one dtype")
        self.inits += [t for t in e.tensors if t is not None]
        if e.bits is None:
            return self.op("Gather", e.tensors[0].name, ids)
        qweight, scales, zp, mins_t = e.tensors
        inits = [qweight.name, scales.name, "" if zp is None else zp.name] + ([] if mins_t is None else [mins_t.name])
        return self.nbits_gather(e.shape, e.bits, inits, ids)

    def rmsnorm(self, x: str, norm, prefix: str) -> str:
        """RMSNorm over the last axis; statistics in fp32."""
        xf = self.op("Cast", x, to=TensorProto.FLOAT) if self.half else x
        # Pow/ReduceMean/Add/Sqrt/Div/Mul: the pattern ORT fuses into one SimplifiedLayerNormalization
        ms = self.op("ReduceMean", self.op("Pow", xf, self.const(2.0, np.float32)), axes=[-1], keepdims=1)
        rms = self.op("Sqrt", self.op("Add", ms, self.const(norm.eps, np.float32)))
        y = self.op("Div", xf, rms)
        if self.half:
            y = self.op("Cast", y, to=self.onnx_dtype)
        return self.op("Mul", y, self.weight(prefix + ".weight", norm.weight))

    def add_norm(self, x: str, delta: str | None, norm, prefix: str) -> tuple[str, str]:
        """(rmsnorm(x + delta), x + delta); delta None: (rmsnorm(x), x)."""
        if delta is None:
            return self.rmsnorm(x, norm, prefix), x
        if not self.skip_norm:
            s = self.op("Add", x, delta)
            return self.rmsnorm(s, norm, prefix), s
        y, s = self._name("skipnorm"), self._name("residual")
        self.op("SkipSimplifiedLayerNormalization", x, delta, self.weight(prefix + ".weight", norm.weight),
                outputs=[y, "", "", s], domain="com.microsoft", epsilon=float(norm.eps))
        return y, s

    def mlp(self, x: str, mlp, prefix: str) -> str:
        if self.matmul:   # one gate|up projection, split (one kernel launch instead of two)
            both = self.matmul_linear(x, [mlp.gate_proj, mlp.up_proj], prefix + ".gate_up_proj")
            n = mlp.gate_proj.out_features
            gate, up = self.op("Split", both, self.const([n, n]), axis=-1, outputs=2)
        else:
            gate = self.linear(x, mlp.gate_proj, prefix + ".gate_proj")
            up = self.linear(x, mlp.up_proj, prefix + ".up_proj")
        return self.linear(self.op("Mul", self.op("Mul", gate, self.op("Sigmoid", gate)), up),
                           mlp.down_proj, prefix + ".down_proj")

    def heads(self, x: str, n: int, hd: int) -> str:
        """[q, n*hd] -> [1, q, n, hd]."""
        return self.op("Reshape", x, self.const([1, -1, n, hd]))

    def rope(self, x: str, cos: str, sin: str, hd: int) -> str:
        """x [1, h, q, hd]; cos, sin [1, 1, q, hd]: x*cos + rotate_half(x)*sin."""
        half = hd // 2
        axis = self.const([3])
        x1 = self.op("Slice", x, self.const([0]), self.const([half]), axis)
        x2 = self.op("Slice", x, self.const([half]), self.const([hd]), axis)
        rot = self.op("Concat", self.op("Neg", x2), x1, axis=3)
        return self.op("Add", self.op("Mul", x, cos), self.op("Mul", rot, sin))

    def attention(self, q: str, k: str, v: str, past_k: str, past_v: str, past_len: str, bias: str,
                  nh: int, kvh: int, hd: int) -> str:
        """q [1,nh,q,hd]; new k, v [1,kvh,q,hd]; past buffers [1,kvh,S,hd] read at [0, past_len).

        GQA without copying K/V: query heads g*rep..g*rep+rep-1 share KV head g, so q is viewed as
        [1, kvh, rep*q, hd]. bias [1, 1, q, P+q] fp32 additive. Returns [q, nh*hd].
        """
        zero, axis2 = self.const([0]), self.const([2])
        k_all = self.op("Concat", self.op("Slice", past_k, zero, past_len, axis2), k, axis=2)
        v_all = self.op("Concat", self.op("Slice", past_v, zero, past_len, axis2), v, axis=2)
        qg = self.op("Reshape", q, self.const([1, kvh, -1, hd]))
        scores = self.op("MatMul", qg, self.op("Transpose", k_all, perm=[0, 1, 3, 2]))
        if self.half:
            scores = self.op("Cast", scores, to=TensorProto.FLOAT)
        scores = self.op("Mul", scores, self.const(1.0 / math.sqrt(hd), np.float32))
        scores = self.op("Add", self.op("Reshape", scores, self.const([1, nh, -1, 0])), bias)
        probs = self.op("Softmax", scores, axis=-1)
        if self.half:
            probs = self.op("Cast", probs, to=self.onnx_dtype)
        out = self.op("MatMul", self.op("Reshape", probs, self.const([1, kvh, -1, 0])), v_all)
        out = self.op("Transpose", self.op("Reshape", out, self.const([1, nh, -1, hd])), perm=[0, 2, 1, 3])
        return self.op("Reshape", out, self.const([-1, nh * hd]))

    def rope_tables(self, inv_freq: torch.Tensor, max_seq_len: int, position_ids: str) -> tuple[str, str]:
        """cos, sin [1, 1, q, hd] gathered at position_ids from [S, hd] tables (angles in fp32)."""
        pos = rope_angles(inv_freq, max_seq_len)
        emb = torch.cat([pos, pos], -1)
        cos_t = self.weight("rope.cos", emb.cos())
        sin_t = self.weight("rope.sin", emb.sin())
        ax = self.const([1])
        return (self.op("Unsqueeze", self.op("Gather", cos_t, position_ids), ax),
                self.op("Unsqueeze", self.op("Gather", sin_t, position_ids), ax))

    def gqa_inputs(self, inv_freq: torch.Tensor, max_seq_len: int, tree_mask: str, past_len: str,
                   q_len: str) -> dict[str, str]:
        """The per-call inputs every GroupQueryAttention of a graph shares.

        cos/sin caches [S, hd/2] (the op rotates q and k itself, rotate-half convention, at
        position_ids); seqlens_k [1] int32 = P+q-1; total_sequence_length scalar int32 = P+q;
        attention_bias [1, 1, q, P+q] in the graph dtype (the op is causal as well, which a tree mask
        already implies: ancestors come before their descendants).
        """
        freqs = rope_angles(inv_freq, max_seq_len)
        total = self.op("Add", past_len, q_len)                                       # [1] int64
        bias = self.mask_bias(tree_mask, past_len, q_len)
        if self.half:
            bias = self.op("Cast", bias, to=self.onnx_dtype)                          # -1e9 -> -inf: still exp() == 0
        return {
            "cos": self.weight("rope.cos_cache", freqs.cos()),
            "sin": self.weight("rope.sin_cache", freqs.sin()),
            "seqlens_k": self.op("Cast", self.op("Sub", total, self.const([1])), to=TensorProto.INT32),
            "total": self.op("Cast", self.op("Squeeze", total, self.const([0])), to=TensorProto.INT32),
            "bias": bias,
        }

    def gqa(self, q: str, k: str, v: str, past_k: str, past_v: str, present_k: str, present_v: str,
             position_ids: str, shared: dict[str, str], nh: int, kvh: int, hd: int) -> str:
        """q [1, q, nh*hd] and k, v [1, q, kvh*hd] before rotary, or k = v = "" and q the packed q|k|v
        projection [1, q, (nh+2*kvh)*hd] -> attention output [1, q, nh*hd].

        past_k/past_v are the static caches [1, kvh, S, hd]; bound to the same buffers as present_k /
        present_v, the op writes the rotated k and v at rows [P, P+q) in place.
        """
        out, _, _ = self.op("GroupQueryAttention", q, k, v, past_k, past_v, shared["seqlens_k"], shared["total"],
                            shared["cos"], shared["sin"], position_ids, shared["bias"],
                            outputs=[self._name("gqa"), present_k, present_v], domain="com.microsoft",
                            num_heads=nh, kv_num_heads=kvh, do_rotary=1, rotary_interleaved=0,
                            scale=1.0 / math.sqrt(hd))
        return out

    def invariant_inputs(self, inv_freq: torch.Tensor, max_seq_len: int, tree_mask: str, past_len: str,
                         q_len: str, kvh: int, rep: int, hd: int) -> dict[str, str]:
        """The per-call tensors every row-invariant attention of a graph shares (computed once).

        Keys are reduced in chunks of C = ATTN_CHUNK logical positions: chunk c holds positions
        [cC, (c+1)C). The prefix chunks [0, B), B = floor(P/C)*C, are the same cache rows for every
        row of the call; the window [B, B+W) (W = C*ceil((P-B+q)/C)) is gathered per row into logical
        order: the D = P-B cache rows [B, P), then the row's visible tree nodes (ancestors, then
        itself) in cache order, then padding (masked). So each row reduces the same values at the
        same chunk offsets as a call that saw its tokens at contiguous rows (`ar`'s q=1 calls).
        """
        C = ATTN_CHUNK
        i64 = TensorProto.INT64
        zero, one = self.const(0), self.const(1)
        B = self.op("Mul", self.op("Div", past_len, self.const([C])), self.const([C]))          # [1]
        D = self.op("Sub", past_len, B)
        W = self.op("Mul", self.op("Div", self.op("Add", self.op("Add", D, q_len), self.const([C - 1])),
                                   self.const([C])), self.const([C]))
        nb, nw = self.op("Div", B, self.const([C])), self.op("Div", W, self.const([C]))
        q_s = self.op("Squeeze", q_len, self.const([0]))
        mask = self.op("Reshape", tree_mask, self.op("Concat", q_len, q_len, axis=0))         # [q, q]
        col = self.op("Range", zero, q_s, one)                                                # [q]
        key = self.op("Where", mask, col, self.op("Add", col, q_s))
        _, order = self.op("TopK", key, q_len, axis=-1, largest=0, sorted=1, outputs=2)       # visible first
        n_vis = self.op("ReduceSum", self.op("Cast", mask, to=i64), self.const([1]), keepdims=1)  # [q, 1]
        jj = self.op("Range", zero, self.op("Squeeze", W, self.const([0])), one)              # [W]
        t = self.op("Sub", jj, D)                                                             # tree slot
        t_c = self.op("Max", self.op("Min", t, self.op("Sub", q_s, one)), zero)
        shape_qw = self.op("Concat", q_len, self.op("Shape", jj), axis=0)
        tree_idx = self.op("Add", self.op("GatherElements", order, self.op("Expand", t_c, shape_qw), axis=1), D)
        valid = self.op("Less", t, n_vis)                                                     # [q, W]
        win = self.op("Where", self.op("Less", jj, D), jj, self.op("Where", valid, tree_idx, zero))  # [q, W]
        # each row's keys in logical order as columns of the call's scores [1, kvh, q*rep, P+q]
        prefix = self.op("Expand", self.op("Range", zero, self.op("Squeeze", B, self.const([0])), one),
                         self.op("Concat", q_len, B, axis=0))                                 # [q, B]
        cols = self.op("Concat", prefix, self.op("Add", win, B), axis=1)                     # [q, B+W]
        q_rep = self.op("Mul", q_len, self.const([rep]))
        each_head = (self.op("Concat", q_len, self.const([rep, 1]), axis=0),
                     self.op("Concat", self.const([1, 1]), q_rep, self.const([-1]), axis=0))
        # [q, L] -> [1, 1, q*rep, L]: a row's values for each of its query heads, rows ordered (q, rep)
        per_head = lambda x: self.op("Reshape", self.op("Expand", self.op("Unsqueeze", x, self.const([1])),  # noqa: E731
                                                        each_head[0]), each_head[1])
        cols = self.op("Expand", per_head(cols), self.op("Concat", self.const([1, kvh]), q_rep, self.const([1]),
                                                         axis=0))                            # [1,kvh,q*rep,B+W]
        vis = per_head(self.op("Concat", self.op("Expand", self.const(True, np.bool_),
                                                 self.op("Concat", q_len, B, axis=0)), valid, axis=1))  # [1,1,q*rep,B+W]
        freqs = rope_angles(inv_freq, max_seq_len)
        cat = lambda *xs: self.op("Concat", *xs, axis=0)   # noqa: E731
        return {
            "B": B, "win": win, "cols": cols, "vis": vis,
            "cos": self.weight("rope.cos_cache", freqs.cos()), "sin": self.weight("rope.sin_cache", freqs.sin()),
            # q's tables times 1/sqrt(hd): the scores' scale folded into q's rotation (exact for hd = 4^n)
            "q_cos": self.weight("rope.q_cos_cache", freqs.cos() / math.sqrt(hd)),
            "q_sin": self.weight("rope.q_sin_cache", freqs.sin() / math.sqrt(hd)),
            # shapes
            "pre_e": cat(self.const([kvh]), self.op("Mul", q_len, self.const([rep])), nb, self.const([C])),
            "pre_v": cat(self.const([kvh]), nb, self.const([C, hd])),
            "tail_e": cat(self.const([kvh]), q_len, self.const([rep]), nw, self.const([C])),
            "tail_v": cat(self.const([kvh]), q_len, nw, self.const([C, hd])),
            "sum_pre": cat(self.const([kvh]), q_len, self.const([-1, rep, hd])),
            "q_rows": cat(q_len, self.const([kvh, rep, hd])),
            "heads": cat(self.const([1]), q_len, self.const([kvh, hd])),
        }

    def invariant_attention(self, q: str, k: str, v: str, past_k: str, past_v: str, past_len: str,
                            position_ids: str, s: dict[str, str], nh: int, kvh: int, hd: int,
                            present: tuple[str, str]) -> str:
        """Attention whose every row is independent of the call's shape and of where its keys sit.

        q [q, nh*hd], k, v [q, kvh*hd] before rotary; past buffers [1, kvh, S, hd] read at [0, P);
        the new K/V rows [1, kvh, q, hd] become the graph outputs `present`. Scores are one MatMul over
        cache order (each a hd-term dot product, the same whatever the column); softmax runs over each
        row's keys in logical order (`invariant_inputs`) with its denominator summed sequentially
        (CumSum); P@V is one MatMul per chunk of C keys (ORT's CPU GEMM rounds a row the same way for
        any M >= 2 and with trailing zeros), and the chunks are added in order (CumSum). Returns the
        attention output [q, nh*hd].
        """
        rep = nh // kvh
        zero, axis2, axis3 = self.const([0]), self.const([2]), self.const([3])
        end = self.const([np.iinfo(np.int64).max])
        last = (self.const([-1]), end)
        rot = lambda x, n, c: self.op("RotaryEmbedding", self.op("Reshape", x, self.const([1, -1, n * hd])),  # noqa: E731
                                      position_ids, s[c + "cos"], s[c + "sin"], domain="com.microsoft",
                                      interleaved=0, num_heads=n)
        k_new, v_new = present
        self.op("Transpose", self.op("Reshape", rot(k, kvh, ""), s["heads"]), perm=[0, 2, 1, 3], outputs=[k_new])
        self.op("Transpose", self.op("Reshape", v, s["heads"]), perm=[0, 2, 1, 3], outputs=[v_new])
        # q rotated with tables pre-scaled by 1/sqrt(hd); rows ordered (q, rep) within each KV head
        qg = self.op("Reshape", self.op("Transpose", self.op("Reshape", rot(q, nh, "q_"), s["q_rows"]),
                                        perm=[1, 0, 2, 3]), self.const([1, kvh, -1, hd]))
        k_all = self.op("Concat", self.op("Slice", past_k, zero, past_len, axis2), k_new, axis=2)
        scores = self.op("MatMul", qg, self.op("Transpose", k_all, perm=[0, 1, 3, 2]))   # [1,kvh,q*rep,P+q]
        if self.half:   # softmax in fp32, as transformers does
            scores = self.op("Cast", scores, to=TensorProto.FLOAT)
        scores = self.op("Where", s["vis"], self.op("GatherElements", scores, s["cols"], axis=3),
                         self.const(MASK_NEG, np.float32))                                 # [1,kvh,q*rep,B+W]
        e = self.op("Exp", self.op("Sub", scores, self.op("ReduceMax", scores, axes=[3], keepdims=1)))
        e = self.op("Div", e, self.op("Slice", self.op("CumSum", e, self.const(3)), *last, axis3))
        if self.half:
            e = self.op("Cast", e, to=self.onnx_dtype)
        # prefix chunks: one [q*rep, C] x [C, hd] product per chunk, V read from the cache, added in order
        e_pre = self.op("Transpose", self.op("Reshape", self.op("Slice", e, zero, s["B"], axis3), s["pre_e"],
                                             allowzero=1), perm=[0, 2, 1, 3])             # [kvh,nb,q*rep,C]
        v_pre = self.op("Reshape", self.op("Slice", past_v, zero, s["B"], axis2), s["pre_v"], allowzero=1)
        pre = self.op("Slice", self.op("CumSum", self.op("MatMul", e_pre, v_pre), self.const(1)), *last,
                      self.const([1]))                                                    # [kvh,<=1,q*rep,hd]
        pre = self.op("Reshape", pre, s["sum_pre"])                                       # [kvh,q,<=1,rep,hd]
        # window chunks: each row's own V rows in logical order, one [rep, C] x [C, hd] per row and chunk
        e_tail = self.op("Transpose", self.op("Reshape", self.op("Slice", e, s["B"], end, axis3), s["tail_e"]),
                         perm=[0, 1, 3, 2, 4])                                            # [kvh,q,nw,rep,C]
        v_win = self.op("Concat", self.op("Slice", past_v, s["B"], past_len, axis2), v_new, axis=2)
        v_tail = self.op("Reshape", self.op("Gather", v_win, s["win"], axis=2), s["tail_v"])   # [kvh,q,nw,C,hd]
        parts = self.op("Concat", pre, self.op("MatMul", e_tail, v_tail), axis=2)         # [kvh,q,n,rep,hd]
        out = self.op("Slice", self.op("CumSum", parts, self.const(2)), *last, axis2)     # [kvh,q,1,rep,hd]
        return self.op("Reshape", self.op("Transpose", out, perm=[2, 1, 0, 3, 4]), self.const([-1, nh * hd]))

    def mask_bias(self, tree_mask: str, past_len: str, q_len: str) -> str:
        """tree_mask [1, q, T] bool over the trailing T of P+q keys -> additive [1, 1, q, P+q] fp32."""
        t_len = self.op("Slice", self.op("Shape", tree_mask), self.const([2]), self.const([3]))
        prefix = self.op("Sub", self.op("Add", past_len, q_len), t_len)  # keys every query sees
        prefix_shape = self.op("Concat", self.const([1]), q_len, prefix, axis=0)
        visible = self.op("ConstantOfShape", prefix_shape,
                          value=numpy_helper.from_array(np.zeros(1, np.float32)))
        tree = self.op("Where", tree_mask, self.const(0.0, np.float32), self.const(MASK_NEG, np.float32))
        return self.op("Unsqueeze", self.op("Concat", visible, tree, axis=2), self.const([1]))


def _check_flavour(flavour: str) -> None:
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour {flavour!r}: expected one of {', '.join(FLAVOURS)}")


def _check_quant(quant: WeightQuantizer | None, flavour: str) -> None:
    if quant is not None and flavour not in ORT_FLAVOURS:
        raise ValueError(f"quantised weights need flavour {' or '.join(ORT_FLAVOURS)} (ONNX Runtime), got {flavour!r}")


def build_target(model: Target, dtype: str, max_seq_len: int, flavour: str = "standard",
                 quant: WeightQuantizer | None = None) -> onnx.ModelProto:
    """target.onnx: logits, their argmax, EAGLE-3 features and the new K/V for q tokens (engine-format.md).

    quant: every linear layer, the LM head and the embedding as MatMulNBits / GatherBlockQuantized
    blocks (flavour gqa only); a tied embedding and LM head share one set of blocks."""
    _check_flavour(flavour)
    _check_quant(quant, flavour)
    g = _target_graph(model, dtype, flavour, quant)
    t = _target_inputs(g, model, max_seq_len, flavour)
    embedding = _embed(g, model, t.ids, flavour)
    h, hidden_states = _decoder_layers(g, model, embedding.rows, t, flavour)
    logits = _lm_head(g, model, h, embedding, flavour)
    _target_outputs(g, model.config, logits, hidden_states)
    return g.model("target")


@dataclass
class _GraphInputs:
    """A target's or a draft's graph inputs (names), and what its attention layers share of them."""
    ids: str
    pos: str
    tree_mask: str
    past_len: str
    past: list[tuple[str, str]]   # (past_key, past_value) per layer
    S: int
    hidden: str = ""              # draft: the hidden rows it continues from
    shared: Any = None            # gqa / ort: the attention inputs every layer shares
    cos: str = ""                 # standard: the rotary tables and the tree mask's additive bias
    sin: str = ""
    bias: str = ""


@dataclass
class _Embedding:
    rows: str                     # the embedded tokens: [1, q, H] / [q, H]
    weight: str = ""              # float: the embedding initializer (a tied lm_head reads it)
    blocks: BlockWeight | None = None   # quantised: its blocks and their initializers
    inits: list[str] | None = None


def _target_graph(model: Target, dtype: str, flavour: str, quant: WeightQuantizer | None) -> _Graph:
    g = _Graph(dtype)
    g.quant = quant
    g.names = {id(m): f"{name}.weight" for name, m in model.named_modules()}
    g.matmul = g.skip_norm = flavour in ORT_FLAVOURS  # ORT only: rows stay [1, q, H], MatMul linears, one q|k|v projection
    g.rows2d = flavour == "ort"
    return g


def _target_inputs(g: _Graph, model: Target, S: int, flavour: str) -> _GraphInputs:
    """The graph inputs, then what every layer's attention reads of them (rotary, mask)."""
    c = model.config
    kvh, hd, nh = c.num_kv_heads, c.head_dim, c.num_heads
    ids = g.input("input_ids", TensorProto.INT64, [1, "q"])
    pos = g.input("position_ids", TensorProto.INT64, [1, "q"])
    tree_mask = g.input("tree_mask", TensorProto.BOOL, [1, "q", "q"])
    past_len = g.input("past_len", TensorProto.INT64, [1])
    past = [(g.input(f"past_key_{i}", g.onnx_dtype, [1, kvh, S, hd]),
             g.input(f"past_value_{i}", g.onnx_dtype, [1, kvh, S, hd])) for i in range(c.num_layers)]
    t = _GraphInputs(ids, pos, tree_mask, past_len, past, S)
    q_len = g.op("Slice", g.op("Shape", ids), g.const([1]), g.const([2]))
    if flavour == "gqa":       # GroupQueryAttention, K/V written into the bound cache
        t.shared = g.gqa_inputs(model.inv_freq, S, tree_mask, past_len, q_len)
    elif flavour in ORT_FLAVOURS:
        t.shared = g.invariant_inputs(model.inv_freq, S, tree_mask, past_len, q_len, kvh, nh // kvh, hd)
    else:
        t.cos, t.sin = g.rope_tables(model.inv_freq, S, pos)
        t.bias = g.mask_bias(tree_mask, past_len, q_len)
    return t


def _embed(g: _Graph, model: Target, ids: str, flavour: str) -> _Embedding:
    if g.quant is not None:
        blocks = g.block_weight(model.model.embed_tokens)
        inits = g.nbits_init(blocks, EMBED)
        rows = g.nbits_gather(blocks.shape, blocks.bits, inits,
                              g.op("Reshape", ids, g.const([-1])) if g.rows2d else ids)
        return _Embedding(rows, blocks=blocks, inits=inits)
    embed = g.weight(EMBED + ".weight", model.model.embed_tokens.weight)
    rows = g.op("Gather", embed, ids if flavour == "gqa" else g.op("Reshape", ids, g.const([-1])))  # [1, q, H] / [q, H]
    return _Embedding(rows, weight=embed)


def _decoder_layers(g: _Graph, model: Target, x: str, t: _GraphInputs, flavour: str) -> tuple[str, list[str]]:
    """(the final norm's output, the residual stream entering each layer then the last layer's output)."""
    hidden_states = [x]
    delta = None          # the last sublayer's output, not yet added to x
    for i, layer in enumerate(model.model.layers):
        p = f"model.layers.{i}"
        h, x = g.add_norm(x, delta, layer.input_layernorm, p + ".input_layernorm")
        if i:
            hidden_states.append(x)
        a = _attention(g, model, i, h, t, flavour)
        h, x = g.add_norm(x, g.linear(a, layer.self_attn.o_proj, p + ".self_attn.o_proj"),
                          layer.post_attention_layernorm, p + ".post_attention_layernorm")
        delta = g.mlp(h, layer.mlp, p + ".mlp")
    h, x = g.add_norm(x, delta, model.model.norm, "model.norm")
    hidden_states.append(x)
    return h, hidden_states


def _attention(g: _Graph, model: Target, i: int, h: str, t: _GraphInputs, flavour: str) -> str:
    """Layer i's attention output for the normed rows `h`; declares (or outputs) its present K/V."""
    c, at = model.config, model.model.layers[i].self_attn
    S, kvh, hd, nh = t.S, c.num_kv_heads, c.head_dim, c.num_heads
    fused, in_place = flavour in ORT_FLAVOURS, flavour == "gqa"
    p = f"model.layers.{i}"
    past_k, past_v = t.past[i]
    if fused and not c.qk_norm:
        qkv = g.matmul_linear(h, [at.q_proj, at.k_proj, at.v_proj], p + ".self_attn.qkv_proj")
        if in_place:
            a = g.gqa(qkv, "", "", past_k, past_v, f"present_key_{i}", f"present_value_{i}", t.pos,
                      t.shared, nh, kvh, hd)
        else:
            axis = g.const([-1])
            cuts = [0, nh * hd, (nh + kvh) * hd, (nh + 2 * kvh) * hd]
            qs, ks, vs = (g.op("Slice", qkv, g.const([a]), g.const([b]), axis) for a, b in zip(cuts, cuts[1:]))
    else:
        qs = g.linear(h, at.q_proj, p + ".self_attn.q_proj")   # [q, nh*hd]
        ks = g.linear(h, at.k_proj, p + ".self_attn.k_proj")   # [q, kvh*hd]
        vs = g.linear(h, at.v_proj, p + ".self_attn.v_proj")
    if c.qk_norm:   # per head, before rotary
        qs = g.rmsnorm(g.heads(qs, nh, hd), at.q_norm, p + ".self_attn.q_norm")
        ks = g.rmsnorm(g.heads(ks, kvh, hd), at.k_norm, p + ".self_attn.k_norm")
    if in_place:
        if c.qk_norm:
            qs = g.op("Reshape", qs, g.const([1, -1, nh * hd]))
            ks = g.op("Reshape", ks, g.const([1, -1, kvh * hd]))
            a = g.gqa(qs, ks, vs, past_k, past_v, f"present_key_{i}", f"present_value_{i}", t.pos,
                      t.shared, nh, kvh, hd)
        g.declare_output(f"present_key_{i}", g.onnx_dtype, [1, kvh, S, hd])
        g.declare_output(f"present_value_{i}", g.onnx_dtype, [1, kvh, S, hd])
    elif fused:   # flavour ort (its rotary reshapes q and k itself, qk-normed heads included)
        present = (f"present_key_{i}", f"present_value_{i}")
        a = g.invariant_attention(qs, ks, vs, past_k, past_v, t.past_len, t.pos, t.shared, nh, kvh, hd, present)
        for name in present:
            g.declare_output(name, g.onnx_dtype, [1, kvh, "q", hd])
    else:
        qs = g.rope(g.op("Transpose", g.heads(qs, nh, hd), perm=[0, 2, 1, 3]), t.cos, t.sin, hd)
        ks = g.rope(g.op("Transpose", g.heads(ks, kvh, hd), perm=[0, 2, 1, 3]), t.cos, t.sin, hd)
        vs = g.op("Transpose", g.heads(vs, kvh, hd), perm=[0, 2, 1, 3])
        a = g.attention(qs, ks, vs, past_k, past_v, t.past_len, t.bias, nh, kvh, hd)
        g.output(ks, f"present_key_{i}", g.onnx_dtype, [1, kvh, "q", hd])
        g.output(vs, f"present_value_{i}", g.onnx_dtype, [1, kvh, "q", hd])
    return a


def _lm_head(g: _Graph, model: Target, h: str, embedding: _Embedding, flavour: str) -> str:
    """logits [1, q, V] / [q, V] of the final rows `h`, in float32."""
    c = model.config
    if g.quant is not None:   # [1, q, V]
        if c.tie_word_embeddings:
            logits = g.nbits_matmul(h, embedding.blocks, embedding.inits)
        else:
            lm_q = g.block_weight(model.lm_head)
            logits = g.nbits_matmul(h, lm_q, g.nbits_init(lm_q, "lm_head"))
    elif flavour in ORT_FLAVOURS:   # [1, q, V]; a tied lm_head reads the embedding through a Transpose ORT folds at load
        lm_w = (g.op("Transpose", embedding.weight, perm=[1, 0]) if c.tie_word_embeddings else
                g.init("lm_head.weight_t", model.lm_head.weight.detach().float().t().numpy().astype(g.np_dtype)))
        logits = g.rows_matmul(h, lm_w)
    else:
        lm_w = embedding.weight if c.tie_word_embeddings else g.weight("lm_head.weight", model.lm_head.weight)
        logits = g.op("Gemm", h, lm_w, transB=1)
    if g.half:
        logits = g.op("Cast", logits, to=TensorProto.FLOAT)
    return logits


def _target_outputs(g: _Graph, c, logits: str, hidden_states: list[str]) -> None:
    """logits, argmax and features ahead of the K/V pairs already declared: the documented order."""
    feats = g.op("Concat", *[hidden_states[i] for i in c.feature_layers], axis=-1)
    kv_outputs = g.outputs
    g.outputs = []
    g.output(g.op("Reshape", logits, g.const([1, -1, c.vocab_size])), "logits", TensorProto.FLOAT,
             [1, "q", c.vocab_size])
    # greedy verification reads q ids instead of q x V floats (first index of the maximum, as numpy)
    g.output(g.op("Reshape", g.op("ArgMax", logits, axis=-1, keepdims=0), g.const([1, -1])), "argmax",
             TensorProto.INT64, [1, "q"])
    g.output(g.op("Reshape", feats, g.const([1, -1, 3 * c.hidden_size])), "features", g.onnx_dtype,
             [1, "q", 3 * c.hidden_size])
    g.outputs += kv_outputs


def build_draft_fc(head: Eagle3Head, dtype: str, quant: WeightQuantizer | None = None) -> onnx.ModelProto:
    """draft_fc.onnx: features [1, q, 3H] -> hidden [1, q, H].

    quant: the fc as one MatMulNBits on the [1, q, 3H] rows (ONNX Runtime only, as the draft's)."""
    H = head.config.hidden_size
    g = _Graph(dtype)
    f = g.input("features", g.onnx_dtype, [1, "q", 3 * H])
    if quant is not None:
        g.quant, g.matmul = quant, True
        g.output(g.linear(f, head.fc, "fc"), "hidden", g.onnx_dtype, [1, "q", H])
        return g.model("draft_fc")
    h = g.linear(g.op("Reshape", f, g.const([-1, 3 * H])), head.fc, "fc")
    g.output(g.op("Reshape", h, g.const([1, -1, H])), "hidden", g.onnx_dtype, [1, "q", H])
    return g.model("draft_fc")


def build_draft(head: Eagle3Head, dtype: str, max_seq_len: int, k_max: int,
                flavour: str = "standard", quant: WeightQuantizer | None = None,
                embedding: TargetEmbedding | None = None) -> onnx.ModelProto:
    """draft.onnx: one EAGLE-3 layer + top-k_max over the draft vocab, ids mapped to target ids.

    quant: every linear layer (LM head included) as MatMulNBits blocks (flavour gqa only).
    embedding: a head without its own embedding reads the target's initializers where the target
    file stores them (`target_embedding`: the same values the target gathers, no copy); None: the
    graph holds a copy of the head's target embedding (a standalone graph)."""
    _check_flavour(flavour)
    _check_quant(quant, flavour)
    c, lay = head.config, head.midlayer
    if not 1 <= k_max <= c.draft_vocab_size:
        raise ValueError(f"k_max {k_max} must be in [1, draft_vocab_size={c.draft_vocab_size}]")
    g = _Graph(dtype)
    g.quant = quant
    t = _draft_inputs(g, head, max_seq_len)
    q_len = g.op("Slice", g.op("Shape", t.ids), g.const([1]), g.const([2]))
    flat_ids = g.op("Reshape", t.ids, g.const([-1]))
    if head.embed_tokens is None and embedding is not None:
        emb = g.target_rows(embedding, flat_ids)                                      # [q, H]
    else:
        embed_w = head.embed_tokens.weight if head.embed_tokens is not None else head._target_embed
        emb = g.op("Gather", g.weight("embed_tokens.weight", embed_w), flat_ids)
    h_in = g.op("Reshape", t.hidden, g.const([-1, c.hidden_size]))
    normed_h = g.rmsnorm(h_in, lay.hidden_norm, "midlayer.hidden_norm")
    x = g.op("Concat", g.rmsnorm(emb, lay.input_layernorm, "midlayer.input_layernorm"), normed_h, axis=-1)
    a, present = _draft_attention(g, head, x, t, q_len, flavour)
    residual = normed_h if c.norm_before_residual else h_in
    h = g.op("Add", residual, g.linear(a, lay.self_attn.o_proj, "midlayer.self_attn.o_proj"))
    h = g.op("Add", h, g.mlp(g.rmsnorm(h, lay.post_attention_layernorm, "midlayer.post_attention_layernorm"),
                             lay.mlp, "midlayer.mlp"))
    _draft_outputs(g, head, h, k_max, t.S, present)
    return g.model("draft")


def _draft_inputs(g: _Graph, head: Eagle3Head, S: int) -> _GraphInputs:
    c = head.config
    kvh, hd = c.num_kv_heads, c.head_dim
    ids = g.input("input_ids", TensorProto.INT64, [1, "q"])
    hidden = g.input("hidden", g.onnx_dtype, [1, "q", c.hidden_size])
    pos = g.input("position_ids", TensorProto.INT64, [1, "q"])
    tree_mask = g.input("tree_mask", TensorProto.BOOL, [1, "q", "T"])
    past_len = g.input("past_len", TensorProto.INT64, [1])
    past_k = g.input("past_key", g.onnx_dtype, [1, kvh, S, hd])
    past_v = g.input("past_value", g.onnx_dtype, [1, kvh, S, hd])
    return _GraphInputs(ids, pos, tree_mask, past_len, [(past_k, past_v)], S, hidden=hidden)


def _draft_attention(g: _Graph, head: Eagle3Head, x: str, t: _GraphInputs, q_len: str,
                     flavour: str) -> tuple[str, tuple[str, str] | None]:
    """(the attention output [q, nh*hd], the q new K/V rows to output; None: gqa wrote them in place)."""
    c, at = head.config, head.midlayer.self_attn
    S, kvh, hd, nh = t.S, c.num_kv_heads, c.head_dim, c.num_heads
    (past_k, past_v), = t.past
    g.matmul = flavour == "gqa"   # ORT only: MatMul linears, one q|k|v projection
    if flavour == "gqa":
        shared = g.gqa_inputs(head.inv_freq, S, t.tree_mask, t.past_len, q_len)
        qkv = g.matmul_linear(x, [at.q_proj, at.k_proj, at.v_proj], "midlayer.self_attn.qkv_proj")
        a = g.gqa(g.op("Unsqueeze", qkv, g.const([0])), "", "", past_k, past_v, "present_key", "present_value",
                  t.pos, shared, nh, kvh, hd)
        return g.op("Reshape", a, g.const([-1, nh * hd])), None
    qs = g.linear(x, at.q_proj, "midlayer.self_attn.q_proj")   # [q, nh*hd]
    ks = g.linear(x, at.k_proj, "midlayer.self_attn.k_proj")   # [q, kvh*hd]
    vs = g.linear(x, at.v_proj, "midlayer.self_attn.v_proj")
    cos, sin = g.rope_tables(head.inv_freq, S, t.pos)
    bias = g.mask_bias(t.tree_mask, t.past_len, q_len)
    qs = g.rope(g.op("Transpose", g.heads(qs, nh, hd), perm=[0, 2, 1, 3]), cos, sin, hd)
    ks = g.rope(g.op("Transpose", g.heads(ks, kvh, hd), perm=[0, 2, 1, 3]), cos, sin, hd)
    vs = g.op("Transpose", g.heads(vs, kvh, hd), perm=[0, 2, 1, 3])
    return g.attention(qs, ks, vs, past_k, past_v, t.past_len, bias, nh, kvh, hd), (ks, vs)


def _draft_outputs(g: _Graph, head: Eagle3Head, h: str, k_max: int, S: int,
                   present: tuple[str, str] | None) -> None:
    """topk_ids, topk_logp (the top k_max of the draft's log-softmax), hidden_out, then the K/V."""
    c = head.config
    kvh, hd, H = c.num_kv_heads, c.head_dim, c.hidden_size
    logits = g.linear(g.rmsnorm(h, head.norm, "norm"), head.lm_head, "lm_head")  # [q, Vd]
    if g.half:
        logits = g.op("Cast", logits, to=TensorProto.FLOAT)
    logp = g.op("LogSoftmax", logits, axis=-1)
    top_logp, top_draft = g.op("TopK", logp, g.const([k_max]), axis=-1, largest=1, sorted=1, outputs=2)
    # target id = draft id + d2t[draft id], folded into one table
    d2t_map = g.init("d2t_map", (torch.arange(c.draft_vocab_size) + head.d2t).numpy().astype(np.int64))
    top_ids = g.op("Gather", d2t_map, top_draft)
    g.output(g.op("Reshape", top_ids, g.const([1, -1, k_max])), "topk_ids", TensorProto.INT64, [1, "q", k_max])
    g.output(g.op("Reshape", top_logp, g.const([1, -1, k_max])), "topk_logp", TensorProto.FLOAT, [1, "q", k_max])
    g.output(g.op("Reshape", h, g.const([1, -1, H])), "hidden_out", g.onnx_dtype, [1, "q", H])
    if present is None:
        g.declare_output("present_key", g.onnx_dtype, [1, kvh, S, hd])
        g.declare_output("present_value", g.onnx_dtype, [1, kvh, S, hd])
    else:
        g.output(present[0], "present_key", g.onnx_dtype, [1, kvh, "q", hd])
        g.output(present[1], "present_value", g.onnx_dtype, [1, kvh, "q", hd])


def save(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Write a graph (weights to `<file>.data` above EXTERNAL_DATA_BYTES); returns the files written
    (a draft's references to the target's file are not among them)."""
    path = Path(path)
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    if size > EXTERNAL_DATA_BYTES:
        data = path.name + ".data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data, size_threshold=1024)
        onnx.checker.check_model(str(path))
        return [path, path.with_name(data)]
    if any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer):
        onnx.save_model(model, str(path))      # the draft reading the target's file: checked beside it
        onnx.checker.check_model(str(path))
        return [path]
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return [path]


