"""KV-cache bytes of an engine and whether they fit this machine's memory."""

from __future__ import annotations

import os

import numpy as np

from talon_rt.runtime.errors import EngineError
from talon_rt.runtime.manifest.schema import Manifest


def cache_bytes(layers: int, kv_heads: int, rows: int, head_dim: int, itemsize: int) -> int:
    """Bytes of K and V for `layers` layers of `rows` rows: 2 * layers * [kv_heads, rows, head_dim]."""
    return 2 * layers * kv_heads * rows * head_dim * itemsize


def kv_buffers(m: Manifest) -> dict[str, int]:
    """Bytes of the K/V buffers a backend allocates for this manifest."""
    md, dd, S = m.model, m.draft, m.limits.max_seq_len
    q_max = max(m.limits.max_tree_tokens, m.limits.max_prefill_chunk)
    item = np.dtype(m.kv_dtype).itemsize
    bufs = {"target_cache": cache_bytes(md.num_layers, md.num_kv_heads, S, md.head_dim, item)}
    if m.graphs["target"].flavour == "standard":   # gqa writes the new rows into the cache in place
        bufs["target_new_rows"] = cache_bytes(md.num_layers, md.num_kv_heads, q_max, md.head_dim, item)
    if dd is None:
        return bufs
    bufs["draft_cache"] = cache_bytes(1, dd.num_kv_heads, S, dd.head_dim, item)
    if m.graphs["draft"].flavour == "standard":
        bufs["draft_new_rows"] = cache_bytes(1, dd.num_kv_heads, q_max, dd.head_dim, item)
    return bufs


def physical_memory() -> int | None:
    """Bytes of RAM of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_memory(nbytes: int, what: str) -> None:
    """EngineError when `nbytes` of KV cache exceed this machine's RAM (named by `what`)."""
    ram = physical_memory()
    if ram is not None and nbytes > ram:
        raise EngineError(f"{what} needs {nbytes / 2**30:.1f} GiB of KV cache, more than this machine's "
                          f"{ram / 2**30:.1f} GiB of memory")
