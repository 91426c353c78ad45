"""The generated conversations of a work folder as token ids only: one compressed file per split
(`tokens-<split>.npz`, every shard's arrays under `<shard>/<name>`), a few MB for hundreds of thousands
of tokens. Hours of generation survive the machine that ran them: commit the folder, and any
machine rebuilds the shards from it (`restore`) and recomputes the features (the `data` step skips
the generation of every restored shard)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from talon_rt.export.errors import ExportError

from . import generate
from .dataset import data_folder


def path(folder: Path, split: str) -> Path:
    return folder / f"tokens-{split}.npz"


def save(work: Path, folder: Path, split: str) -> dict:
    """Write `split`'s shards under `work` into folder/tokens-<split>.npz (replaced atomically).
    Returns {"shards", "conversations", "tokens"}."""
    arrays = {}
    for shard in generate.shards(data_folder(work, split)):
        for k, v in generate.load_shard(shard).items():
            arrays[f"{shard.stem}/{k}"] = v
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"tokens-{split}.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    tmp.rename(path(folder, split))
    return {"shards": len({k.split("/")[0] for k in arrays}),
            "conversations": int(sum(v.size for k, v in arrays.items() if k.endswith("/lengths"))),
            "tokens": int(sum(v.size for k, v in arrays.items() if k.endswith("/tokens")))}


def restore(folder: Path, work: Path, splits) -> int:
    """Shards of folder/tokens-<split>.npz back into work's data folders (a shard already there is
    kept). Returns the shards restored."""
    n = 0
    for split in splits:
        src = path(folder, split)
        if not src.is_file():
            continue
        dest_folder = data_folder(work, split)
        dest_folder.mkdir(parents=True, exist_ok=True)
        try:
            with np.load(src) as z:
                by_shard: dict[str, dict] = {}
                for key in z.files:
                    shard, sep, name = key.partition("/")
                    if not sep or not shard.startswith("shard"):
                        raise ExportError(f"{src}: entry {key!r} is not <shard>/<array>")
                    by_shard.setdefault(shard, {})[name] = z[key]
        except (OSError, ValueError) as e:
            raise ExportError(f"{src}: not a token file ({type(e).__name__}: {e})") from None
        for shard, arrays in sorted(by_shard.items()):
            missing = {"tokens", "starts", "lengths", "prompt_lengths", "ids", "sampled"} - set(arrays)
            if missing:
                raise ExportError(f"{src}: shard {shard} lacks {', '.join(sorted(missing))}")
            dest = dest_folder / f"{shard}.npz"
            if not dest.exists():
                np.savez(dest_folder / f"{shard}.tmp.npz", **arrays)
                (dest_folder / f"{shard}.tmp.npz").rename(dest)
                n += 1
    return n
