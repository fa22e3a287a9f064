"""A tiny BERT checkpoint (with MiniLM's real tokenizer) and a small slice of real data,
so trainer tests run the real code path in seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ftjax import assets
from ftjax.config import base_config
from ftjax.data import load_splits
from ftjax.models import BertConfig, BertModel, init_params, save_pretrained

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def make_checkpoint(directory: Path) -> Path:
    model = BertModel(
        BertConfig(
            vocab_size=30522,
            hidden_size=16,
            num_layers=2,
            num_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        )
    )
    save_pretrained(model, init_params(model, 0), directory)
    source = assets.fetch("minilm")
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, directory / name)
    return directory


def make_dataset(directory: Path, sizes=(("train", 64), ("validation", 32), ("test", 32))):
    directory.mkdir(parents=True, exist_ok=True)
    splits = load_splits("sentiment")
    for split, n in sizes:
        with open(directory / f"{split}.jsonl", "w") as f:
            for row in splits[split].select(range(n)):
                f.write(json.dumps({"text": row["text"], "label": row["label"]}) + "\n")
    return directory


def tiny_config(model_dir: Path, data_dir: Path, method: str = "lora", **train):
    config = base_config(f"method={method},dtype=float32", data=str(data_dir), num_labels=2)
    config.model.name = str(model_dir)
    config.data.update(batch_size=8, eval_batch_size=16, max_length=32)
    config.train.update(log_every=1, **train)
    return config
