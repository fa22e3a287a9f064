"""The tokenizer in a GGUF file's metadata, converted by transformers once per file.

transformers builds a fast tokenizer from the file's vocabulary and merges each time it
is asked (~11 s for SmolLM2 on a 2-core CPU); the result is saved as an ordinary
tokenizer folder under $FTJAX_CACHE/tokenizers/ and later loads read that (well under a
second). The folder is keyed by the file (path, size, modification time) and the
transformers version that converted it, so an edited file or another converter converts
again. A cache that cannot be written only costs the next load the conversion.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ftjax.data import assets

log = logging.getLogger(__name__)


def cache_folder(gguf_file: Path) -> Path:
    """Where the converted tokenizer of `gguf_file` is kept."""
    import transformers

    gguf_file = Path(gguf_file).resolve()
    stat = gguf_file.stat()
    key = f"{gguf_file}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return assets.cache_dir() / "tokenizers" / f"{gguf_file.stem}-{digest}"


def convert(gguf_file: Path) -> Any:
    """transformers' tokenizer built from the file's metadata, saved for the next load."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    folder = cache_folder(gguf_file)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".convert.", dir=folder.parent))
        tokenizer.save_pretrained(scratch)
        try:
            os.replace(scratch, folder)  # whole or not at all; another process may win
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
    except OSError as err:
        log.warning("%s: tokenizer not cached (%s); the next load converts it again", folder, err)
    return tokenizer
