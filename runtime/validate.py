"""The one engine validator: every check `Generator.open`, `talon-rt inspect` and the exporter run
before an engine directory is used or shipped.

`validate_engine(dir)` = the manifest and its files (runtime/manifest/: schema, names, external
data, sizes, sha256, memory), the manifest's defaults as options for this engine (runtime/options.py),
and the tokenizer (a Hugging Face tokenizers file no larger than the model's vocabulary). The graphs'
I/O is checked against the manifest when a backend loads them (`check_graph_io`), and by `inspect`.
"""

from __future__ import annotations

import os
from typing import Any

from talon_rt.runtime.errors import EngineError
from talon_rt.runtime.manifest import Manifest, open_manifest
from talon_rt.runtime.options import check_defaults


def load_tokenizer(m: Manifest) -> Any:
    """The engine's `tokenizers.Tokenizer`; EngineError if the file is not one or outgrows the model."""
    from tokenizers import Tokenizer
    path = m.path(m.tokenizer.file)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise EngineError(f"{path}: not a Hugging Face tokenizers file ({str(e).splitlines()[0]})") from None
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > m.model.vocab_size:
        raise EngineError(f"{path}: the tokenizer has {size} tokens, more than model.vocab_size="
                          f"{m.model.vocab_size} of the manifest (ids past the model's vocabulary)")
    return tok


def validate_engine(engine_dir: str | os.PathLike[str]) -> tuple[Manifest, Any]:
    """(manifest, tokenizer) of a valid engine directory; EngineError naming the file and field if not."""
    m = open_manifest(engine_dir)
    check_defaults(m)
    return m, load_tokenizer(m)
