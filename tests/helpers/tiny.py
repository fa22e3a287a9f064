"""Tiny checkpoints of every family (with MiniLM's real WordPiece tokenizer) and small
data, so trainer and task tests run the real code path in seconds.

GPT-2 and T5 checkpoints borrow the BERT tokenizer: [PAD]=0 pads, [SEP]=102 is their
end-of-sequence token and [CLS]=101 GPT-2's beginning; T5 starts decoding from [PAD].
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ftjax.data import assets
from ftjax.data.splits import load_splits
from ftjax.models import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    LlamaConfig,
    LlamaModel,
    T5Config,
    T5Model,
    init_params,
    save_pretrained,
)
from ftjax.training.config import base_config

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
PAD, CLS, SEP = 0, 101, 102

WIDTH = dict(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)


def tiny_model(family: str = "bert", **overrides):
    if family == "bert":
        return BertModel(
            BertConfig(**{"vocab_size": 30522, "max_position_embeddings": 64, **WIDTH, **overrides})
        )
    if family == "gpt2":
        return GPT2Model(
            GPT2Config(
                **{
                    **dict(
                        vocab_size=30522,
                        max_position_embeddings=128,
                        bos_token_id=CLS,
                        eos_token_id=SEP,
                    ),
                    **WIDTH,
                    **overrides,
                }
            )
        )
    if family == "llama":  # grouped-query: two query heads share one key/value head
        return LlamaModel(
            LlamaConfig(
                vocab_size=30522,
                num_kv_heads=1,
                head_dim=8,
                bos_token_id=CLS,
                eos_token_id=SEP,
                pad_token_id=PAD,
                **{"max_position_embeddings": 128, **WIDTH, **overrides},
            )
        )
    if family == "t5":
        return T5Model(
            T5Config(
                **{
                    **dict(
                        vocab_size=30522,
                        hidden_size=16,
                        head_dim=8,
                        intermediate_size=32,
                        num_layers=2,
                        num_decoder_layers=2,
                        num_heads=2,
                        relative_buckets=8,
                        relative_max_distance=32,
                        pad_token_id=PAD,
                        eos_token_id=SEP,
                        decoder_start_token_id=PAD,
                    ),
                    **overrides,
                }
            )
        )
    raise ValueError(family)


def make_checkpoint(directory: Path, family: str = "bert", seed: int = 0, **overrides) -> Path:
    model = tiny_model(family, **overrides)
    save_pretrained(model, init_params(model, seed), directory)
    source = assets.fetch("minilm")
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, directory / name)
    return directory


def make_checkpoints(directory: Path, num_layers: int = 2) -> dict[str, Path]:
    """One tiny checkpoint per family, each stack `num_layers` deep."""
    depth = {"t5": {"num_layers": num_layers, "num_decoder_layers": num_layers}}
    return {
        family: make_checkpoint(
            directory / family, family, **depth.get(family, {"num_layers": num_layers})
        )
        for family in ("bert", "gpt2", "llama", "t5")
    }


def write_splits(directory: Path, splits: dict[str, list[dict]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(directory / f"{split}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return directory


def make_dataset(directory: Path, sizes=(("train", 64), ("validation", 32), ("test", 32))):
    splits = load_splits("sentiment")
    return write_splits(
        directory,
        {
            split: [
                {"text": r["text"], "label": r["label"]} for r in splits[split].select(range(n))
            ]
            for split, n in sizes
        },
    )


def tiny_config(model_dir: Path, data_dir: Path, method: str = "lora", **train):
    config = base_config(f"method={method},dtype=float32", data=str(data_dir), num_labels=2)
    config.model.name = str(model_dir)
    # One bucket (32), unpacked: each step compiles once; tests of bucketing and packing
    # set their own.
    config.data.update(
        batch_size=8, eval_batch_size=16, max_length=32, bucket_step=32, pack_length=0
    )
    config.train.update(log_every=1, **train)
    return config
