"""GGUF checkpoints (llama.cpp's single-file format): header parsed by `gguf_header`,
quantised tensors dequantised by the `gguf` package.

`read(path)` returns what a Hugging Face folder would hold: a config.json dict and
float32 tensors under transformers' names, so the family's one tensor table loads them.
Quantised tensors are dequantised to float32. llama.cpp's converter permutes the rows of
the query and key projections (it pairs rotary dimensions i, i+1; transformers pairs i,
i + head_dim/2); `read` undoes that, per query head for Q and per key/value head for K.
The tokenizer is in the file's metadata: `hub.load_tokenizer` hands the file to
transformers.
"""

from __future__ import annotations

import mmap
import re
from pathlib import Path
from typing import Any

import numpy as np

from ftjax.models import gguf_header

SUFFIX = ".gguf"

# llama.cpp tensor names -> transformers' LlamaForCausalLM names ({} = layer index).
_LLAMA_GLOBAL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LLAMA_LAYER = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Recomputed from the config by ftjax (llama3 RoPE frequencies), not parameters.
_DERIVED = {"rope_freqs"}


class GGUFError(ValueError):
    """A GGUF file ftjax cannot read; the message names the file and what is wrong."""


def find(source: Path) -> Path | None:
    """The GGUF file a checkpoint source names: the source itself when it is one, else
    the one .gguf file of a folder without config.json (an asset or a download)."""
    if source.suffix == SUFFIX and source.is_file():
        return source
    if (source / "config.json").is_file():
        return None
    files = sorted(source.glob(f"*{SUFFIX}"))
    if len(files) > 1:
        raise GGUFError(
            f"{source} holds several GGUF files ({', '.join(f.name for f in files)}): "
            "name the one to load"
        )
    return files[0] if files else None


def _header(path: Path) -> tuple[dict[str, Any], list[gguf_header.Tensor]]:
    try:
        return gguf_header.parse(path)
    except ValueError as err:  # the header's own errors, and numpy's on a malformed table
        raise GGUFError(
            f"{path} is not a readable GGUF file (truncated, corrupt, or a tensor type this "
            f"gguf package does not know): {err}"
        ) from err


def config(
    path: Path, header: tuple[dict[str, Any], list[gguf_header.Tensor]] | None = None
) -> dict[str, Any]:
    """The transformers config.json dict of a GGUF file's model (`header`: its
    `gguf_header.parse`, when already read)."""
    metadata, tensors = header or _header(path)
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"{path}: general.architecture={arch!r} is not supported (llama)")

    def need(key: str) -> Any:
        value = metadata.get(f"llama.{key}")
        if value is None:
            raise GGUFError(f"{path}: metadata key llama.{key} is missing")
        return value

    heads = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = metadata.get("llama.vocab_size") or (len(tokens) if tokens else None)
    scaling = metadata.get("llama.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise GGUFError(f"{path}: llama.rope.scaling.type={scaling!r} is not supported")
    names = {t.name for t in tensors}
    hf = {
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "num_hidden_layers": int(need("block_count")),
        "intermediate_size": int(need("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(metadata.get("llama.attention.head_count_kv", heads)),
        "head_dim": int(metadata.get("llama.rope.dimension_count", hidden // heads)),
        "max_position_embeddings": int(metadata.get("llama.context_length", 2048)),
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(metadata.get("llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": metadata.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": metadata.get("tokenizer.ggml.padding_token_id"),
    }
    if scaling == "linear":
        factor = float(need("rope.scaling.factor"))
        hf["rope_scaling"] = {"rope_type": "linear", "factor": factor}
    return hf


def _hf_name(name: str) -> str | None:
    """transformers' name of a llama.cpp tensor name, None for derived tensors."""
    stem, _, kind = name.rpartition(".")
    if stem in _DERIVED:
        return None
    if stem in _LLAMA_GLOBAL:
        return f"{_LLAMA_GLOBAL[stem]}.{kind}"
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if match and match.group(2) in _LLAMA_LAYER:
        return f"model.layers.{match.group(1)}.{_LLAMA_LAYER[match.group(2)]}.{kind}"
    raise GGUFError(f"GGUF tensor {name!r} has no transformers counterpart ftjax knows")


def _unpermute(rows: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head interleaving of rotary halves along the output rows."""
    half = rows.shape[0] // heads // 2
    return rows.reshape(heads, half, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _dequantise(path: Path, tensor, data: np.ndarray | None = None) -> np.ndarray:
    """Float32 values of `tensor`, or of `data`: some of its rows (first axis)."""
    from gguf import quants

    try:
        values = quants.dequantize(tensor.data if data is None else data, tensor.tensor_type)
    except NotImplementedError as err:
        raise GGUFError(
            f"{path}: tensor {tensor.name!r} has quantisation type {tensor.tensor_type.name}, "
            "which ftjax cannot dequantise"
        ) from err
    return np.asarray(values, np.float32).reshape((-1, *shape(tensor)[1:]))


def shape(tensor) -> tuple[int, ...]:
    """A GGUF tensor's shape in transformers' layout (GGUF lists dimensions innermost
    first)."""
    return tuple(int(d) for d in reversed(tensor.shape))


def _permuted_heads(name: str, hf: dict[str, Any]) -> int | None:
    """How many heads llama.cpp interleaved the rows of tensor `name` by, if it did."""
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return hf["num_attention_heads"]
    if name.endswith(("k_proj.weight", "k_proj.bias")):
        return hf["num_key_value_heads"]
    return None


def tensor_table(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json dict, {transformers tensor name: its memory-mapped `gguf_header.Tensor`})
    of a GGUF file; nothing is dequantised until `read_tensor`."""
    path = Path(path)
    header = _header(path)
    hf = config(path, header)
    table = {}
    for tensor in header[1]:
        name = _hf_name(tensor.name)
        if name is not None:
            table[name] = tensor
    return hf, table


def read_tensor(
    path: Path, hf: dict[str, Any], name: str, tensor, rows: slice | None = None
) -> np.ndarray:
    """Float32 values of the tensor transformers calls `name`, Q/K rows un-permuted; with
    `rows`, only those rows (first axis) of it. A matrix's rows are whole quantisation
    blocks, so only the file's bytes for those rows are dequantised, a few MB at a time
    (the dequantiser's float temporaries stay small)."""
    wanted = slice(None) if rows is None else rows
    heads = _permuted_heads(name, hf)
    if heads is not None:  # row i of the result is row order[i] of the file
        wanted = _unpermute(np.arange(shape(tensor)[0]), heads)[wanted]
    if len(tensor.shape) == 1:  # a vector: small, and its blocks span "rows"
        return _dequantise(path, tensor)[wanted]
    data = tensor.data[wanted]  # a slice stays a view of the file; an index array copies
    out = np.empty((len(data), *shape(tensor)[1:]), np.float32)
    step = max(1, _CHUNK_BYTES // (out[:1].nbytes or 1))
    for start in range(0, len(data), step):
        out[start : start + step] = _dequantise(path, tensor, data[start : start + step])
    return out


_CHUNK_BYTES = 1 << 22


def drop_pages(tensor) -> None:
    """Hands back the file pages that reading `tensor` mapped into this process (the
    header's parse maps the whole file; they stay in the page cache): the resident memory of a
    load tensor by tensor then holds no more of the file than one tensor's bytes."""
    mapping = getattr(tensor.data, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config.json dict, {transformers tensor name: float32 array}) of a GGUF file."""
    hf, table = tensor_table(path)
    return hf, {name: read_tensor(path, hf, name, tensor) for name, tensor in table.items()}
