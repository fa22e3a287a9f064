"""Tokenized examples -> fixed-shape, length-bucketed batches, in a seeded resumable order.

Shapes are jit compile keys, so every batch has `batch_size` rows (the last one padded
with rows whose `example_mask` is 0) and a length from a small set of buckets
(multiples of 16 up to `max_length`). To keep padding low, examples are shuffled, then
grouped by length within large chunks, then the batches are shuffled: compute follows
the real lengths while the order stays random. The order of epoch e is a pure function
of (seed, e), so a run resumes at any (epoch, batch index).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

CHUNK_BATCHES = 64  # examples are length-sorted within chunks of this many batches


class LabelError(ValueError):
    """A dataset row whose label is not in the task's label set."""


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Variable-length token ids (special tokens included) and integer labels."""

    ids: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def encode(
    rows,
    tokenizer,
    max_length: int,
    text_column: str = "text",
    label_column: str = "label",
    num_labels: int | None = None,
) -> Encoded:
    """Tokenizes `rows[text_column]` (truncated to max_length) and checks the labels."""
    missing = [c for c in (text_column, label_column) if c not in rows.column_names]
    if missing:
        raise KeyError(f"dataset has no column(s) {missing}; it has {rows.column_names}")
    labels = np.asarray(rows[label_column])
    if not np.issubdtype(labels.dtype, np.integer):
        raise LabelError(f"column {label_column!r} must hold integer labels, found {labels.dtype}")
    if num_labels is not None:
        bad = np.flatnonzero((labels < 0) | (labels >= num_labels))
        if len(bad):
            raise LabelError(
                f"row {int(bad[0])}: {label_column}={int(labels[bad[0]])} is outside the label "
                f"set 0..{num_labels - 1} ({len(bad)} such rows)"
            )
    texts = list(rows[text_column])
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return Encoded([np.asarray(x, np.int32) for x in ids], labels.astype(np.int32))


def buckets(max_length: int, step: int = 16) -> list[int]:
    """[16, 32, 48, 64] for max_length 64; max_length itself always closes the list."""
    sizes = list(range(step, max_length, step))
    return [*sizes, max_length]


def epoch_order(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, shuffle: bool = True
) -> list[np.ndarray]:
    """The batches (arrays of example indices) of one epoch."""
    n = len(lengths)
    if not shuffle:
        return [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    batches = []
    chunk = batch_size * CHUNK_BATCHES
    for start in range(0, n, chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[s : s + batch_size] for s in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def pad_batch(
    data: Encoded, index: np.ndarray, batch_size: int, sizes: Sequence[int], pad_id: int
) -> dict[str, np.ndarray]:
    longest = max(len(data.ids[i]) for i in index)
    length = next(s for s in sizes if s >= longest)
    input_ids = np.full((batch_size, length), pad_id, np.int32)
    mask = np.zeros((batch_size, length), np.int32)
    for row, i in enumerate(index):
        n = len(data.ids[i])
        input_ids[row, :n] = data.ids[i]
        mask[row, :n] = 1
    labels = np.zeros(batch_size, np.int32)
    labels[: len(index)] = data.labels[index]
    example_mask = np.zeros(batch_size, np.float32)
    example_mask[: len(index)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": labels,
        "example_mask": example_mask,
    }


def batches(
    data: Encoded,
    batch_size: int,
    max_length: int,
    pad_id: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    start: int = 0,
    shuffle: bool = True,
    bucket_step: int = 16,
) -> Iterator[dict[str, np.ndarray]]:
    """The batches of `epoch` from batch index `start` on."""
    lengths = np.array([len(x) for x in data.ids])
    sizes = buckets(max_length, bucket_step)
    for index in epoch_order(lengths, batch_size, seed, epoch, shuffle)[start:]:
        yield pad_batch(data, index, batch_size, sizes, pad_id)


def num_batches(data: Encoded, batch_size: int) -> int:
    return -(-len(data) // batch_size)


def padding_report(data: Encoded, batch_size: int, max_length: int, seed: int = 0) -> dict:
    """Mean tokens per row: real, bucketed (ftjax), and padded to each random batch's
    longest row (what a plain shuffled loader with dynamic padding computes)."""
    lengths = np.array([len(x) for x in data.ids])
    sizes = buckets(max_length)
    rows = num_batches(data, batch_size) * batch_size
    bucketed = sum(
        batch_size * next(s for s in sizes if s >= lengths[index].max())
        for index in epoch_order(lengths, batch_size, seed, 0)
    )
    order = np.random.default_rng(seed).permutation(len(lengths))
    dynamic = sum(
        batch_size * lengths[order[s : s + batch_size]].max()
        for s in range(0, len(order), batch_size)
    )
    return {
        "mean_real_length": float(lengths.mean()),
        "mean_bucketed_length": bucketed / rows,
        "mean_random_batch_length": dynamic / rows,
    }
