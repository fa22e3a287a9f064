"""ftjax's entry point.

For now it runs the foundation check on the bundled defaults: fetch the model and data
assets, load the model, encode a few real sentences and print the parameter table and
output shapes. (The trainer turns this into a training run.)

    python -m ftjax.main [--model minilm] [--data sentiment] [--num_sentences 4]
"""

from __future__ import annotations

import logging
import time

import jax
import numpy as np
from absl import app, flags

from ftjax.data import load_splits
from ftjax.models import from_pretrained, load_tokenizer
from ftjax.partition import param_table

MODEL = flags.DEFINE_string("model", "minilm", "asset name, checkpoint folder or hub id")
DATA = flags.DEFINE_string("data", "sentiment", "dataset asset name, local path or hub id")
NUM = flags.DEFINE_integer("num_sentences", 4, "how many test sentences to encode")
MAX_LENGTH = flags.DEFINE_integer("max_length", 64, "tokens per sentence, after truncation")


def mean_pool(hidden: jax.Array, mask: np.ndarray) -> np.ndarray:
    """Average of the real tokens' states: MiniLM's native sentence feature."""
    mask = mask[..., None].astype(np.float32)
    return np.asarray((hidden * mask).sum(1) / mask.sum(1))


def main(argv: list[str]) -> None:
    del argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    model, params = from_pretrained(MODEL.value)
    tokenizer = load_tokenizer(MODEL.value)
    test = load_splits(DATA.value)["test"]
    rows = test.select(range(NUM.value))
    print(f"model {MODEL.value}: {type(model).__name__}, {model.config}")
    print(param_table(params))

    batch = tokenizer(
        list(rows["text"]),
        padding=True,
        truncation=True,
        max_length=MAX_LENGTH.value,
        return_tensors="np",
    )
    inputs = {
        k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    out = jax.jit(lambda p, b: model.apply({"params": p}, **b, output_hidden_states=True))(
        params, inputs
    )
    print(
        f"input_ids {batch['input_ids'].shape}, real tokens per row "
        f"{batch['attention_mask'].sum(1).tolist()}"
    )
    for field in ("last_hidden_state", "pooled", "logits"):
        value = getattr(out, field)
        if value is not None:
            print(f"{field:<18} {tuple(value.shape)} {value.dtype}")
    print(f"hidden_states      {len(out.hidden_states)} x {tuple(out.hidden_states[0].shape)}")

    embeddings = mean_pool(out.last_hidden_state, batch["attention_mask"])
    embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    print("cosine similarity of mean-pooled sentence embeddings:")
    for i, row in enumerate(rows):
        sims = " ".join(f"{s:+.2f}" for s in embeddings[i] @ embeddings.T)
        print(f"  [{sims}]  label={row['label']}  {row['text'][:60]!r}")
    print(f"done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    app.run(main)
