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
    keep(tokenizer, cache_folder(gguf_file))
    return tokenizer


def keep(tokenizer: Any, folder: Path) -> bool:
    """Saves `tokenizer` as `folder`, whole or not at all; False (and a warning) when it
    cannot be written. A folder another process saved first is left as it is."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".convert.", dir=folder.parent))
    except OSError as err:
        log.warning("%s: tokenizer not cached (%s); the next load converts it again", folder, err)
        return False
    try:
        scratch.chmod(0o755)  # mkdtemp makes it private; a shared cache must stay readable
        tokenizer.save_pretrained(scratch)
        os.replace(scratch, folder)
    except OSError as err:
        shutil.rmtree(scratch, ignore_errors=True)
        if not folder.is_dir():
            log.warning("%s: tokenizer not cached (%s)", folder, err)
            return False
    return True
