"""Closed-form probes on MiniLM features of the movie-review data.

    python experiments/closed_form_probe.py

Features are computed once per choice (pooling x layers) with the frozen backbone, then
a ridge (least squares) head and an L-BFGS logistic-regression head are fitted on the
train split, the L2 strength chosen on validation; prints test accuracy per choice.
"""

from __future__ import annotations

import time

import numpy as np

from ftjax.data import batching
from ftjax.data.splits import load_splits
from ftjax.models import from_pretrained, load_tokenizer
from ftjax.training import probe
from ftjax.training.config import standalone_task

CHOICES = [
    ("mean", "last"),
    ("cls", "last"),
    ("pooler", "last"),
    ("mean", "mean_last4"),
    ("mean", "concat_last4"),
    ("mean", "mean_all"),
]


def accuracy(head, x, y) -> float:
    dense = head["head"]["dense"]
    pred = np.argmax(x @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"]), 1)
    return float((pred == y).mean())


def main() -> None:
    model, params = from_pretrained("minilm")
    tokenizer = load_tokenizer("minilm")
    splits = load_splits("sentiment")
    encoder = standalone_task("classification", model, tokenizer)
    data = {s: encoder.encode(splits[s], s) for s in ("train", "validation", "test")}
    print("| features | head | l2 | validation | test | seconds |")
    print("|---|---|---:|---:|---:|---:|")
    for pooling, layers in CHOICES:
        task = standalone_task("classification", model, tokenizer, pooling=pooling, layers=layers)
        start = time.perf_counter()
        feats = {
            s: (
                probe.extract_features(
                    task,
                    params,
                    (b for b, _ in batching.batches(d, 64, {"source": 64}, shuffle=False)),
                ),
                d.arrays["labels"],
            )
            for s, d in data.items()
        }
        extract = time.perf_counter() - start
        for kind, l2s in (("ridge", (1.0, 10.0, 100.0)), ("logistic", (1e-4, 1e-3, 1e-2))):
            fits = []
            for l2 in l2s:
                start = time.perf_counter()
                fit = probe.ridge_head if kind == "ridge" else probe.logistic_head
                head = fit(*feats["train"], 2, l2=l2)
                seconds = time.perf_counter() - start
                fits.append((accuracy(head, *feats["validation"]), l2, head, seconds))
            val, l2, head, seconds = max(fits, key=lambda f: f[0])
            print(
                f"| {pooling}, {layers} | {kind} | {l2:g} | {val:.3f} | "
                f"{accuracy(head, *feats['test']):.3f} | {seconds:.1f} (+{extract:.0f} "
                "features) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
