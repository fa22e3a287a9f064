"""Encoded examples -> fixed-shape, length-bucketed batches, in a seeded resumable order.

A task encodes a dataset split into `Examples`: per-example arrays, some ragged (token
sequences, per-token labels) and some fixed (a class label, a score). Each ragged field
belongs to a length group ("source", "target", "prompt"); the fields of one group have
the same length per example and are padded together to one bucketed length, and each
group gets its mask (`attention_mask`, `decoder_attention_mask`, `prompt_mask`). So a
seq2seq batch buckets its source and target lengths separately, and a prompt that
generation continues can be padded on the left.

Shapes are jit compile keys, so every batch has `batch_size` rows (the last one padded
with rows whose `example_mask` is 0) and, per group, a length from a small set of
buckets (multiples of `bucket_step` up to the group's limit). To keep padding low,
examples are shuffled, then grouped by length within large chunks, then the batches are
shuffled: compute follows the real lengths while the order stays random. The order of
epoch e is a pure function of (seed, e), so a run resumes at any (epoch, batch index).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

CHUNK_BATCHES = 64  # examples are length-sorted within chunks of this many batches
GROUP_MASKS = {
    "source": "attention_mask",
    "target": "decoder_attention_mask",
    "prompt": "prompt_mask",
}
IGNORE = -100  # label of positions no loss or metric counts (sub-words, padding, prompts)


@dataclasses.dataclass(frozen=True)
class Seq:
    """Layout of a ragged field: its length group, pad value and padding side."""

    group: str = "source"
    pad: int = 0
    left: bool = False  # pad on the left (prompts that generation continues)


@dataclasses.dataclass
class Examples:
    """One split after a task encoded it.

    `arrays` maps field names to a list of 1-D arrays (ragged fields, listed in `layout`)
    or to an array with one row per example. `rows[i]` is the dataset row example i came
    from (several examples may share one, e.g. QA windows). `host` is whatever the task
    keeps for turning predictions into metrics (references, word ids, offsets); `report`
    counts dropped and truncated rows.
    """

    arrays: dict[str, Any]
    layout: dict[str, Seq]
    rows: np.ndarray
    host: Any = None
    report: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.rows)
        for name, values in self.arrays.items():
            if len(values) != n:
                raise ValueError(f"Examples field {name!r} has {len(values)} entries, not {n}")
        for group in {s.group for s in self.layout.values()}:
            fields = [f for f, s in self.layout.items() if s.group == group]
            first = self.group_lengths(group)
            for other in fields[1:]:
                lengths = np.array([len(x) for x in self.arrays[other]])
                if not np.array_equal(lengths, first):
                    raise ValueError(
                        f"Examples fields {fields[0]!r} and {other!r} differ in length"
                    )

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(s.group for s in self.layout.values()))

    def group_lengths(self, group: str) -> np.ndarray:
        field = next(f for f, s in self.layout.items() if s.group == group)
        return np.array([len(x) for x in self.arrays[field]], np.int64)

    def sort_key(self) -> np.ndarray:
        """Per-example length that batches are grouped by (the longest group)."""
        groups = self.groups
        if not groups:
            return np.zeros(len(self), np.int64)
        return np.max([self.group_lengths(g) for g in groups], axis=0)

    def fixed(self) -> dict[str, np.ndarray]:
        """The fields with one fixed-shape value per example (labels, scores, spans)."""
        return {k: np.asarray(v) for k, v in self.arrays.items() if k not in self.layout}


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
    data: Examples, index: np.ndarray, batch_size: int, sizes: Mapping[str, Sequence[int]]
) -> dict[str, np.ndarray]:
    """Rows `index` of `data` as one batch: ragged fields padded to their group's bucket."""
    out: dict[str, np.ndarray] = {}
    for group in data.groups:
        lengths = data.group_lengths(group)[index]
        longest = int(lengths.max())
        if longest > sizes[group][-1]:
            raise ValueError(f"an example's {group} has {longest} tokens, over the limit")
        width = next(s for s in sizes[group] if s >= longest)
        fields = {f: s for f, s in data.layout.items() if s.group == group}
        left = next(iter(fields.values())).left
        mask = np.zeros((batch_size, width), np.int32)
        for field, seq in fields.items():
            out[field] = np.full((batch_size, width), seq.pad, np.int32)
        for row, (i, n) in enumerate(zip(index, lengths, strict=True)):
            span = slice(width - n, width) if left else slice(0, n)
            mask[row, span] = 1
            for field in fields:
                out[field][row, span] = data.arrays[field][i]
        out[GROUP_MASKS[group]] = mask
    for field, values in data.fixed().items():
        column = np.zeros((batch_size, *values.shape[1:]), values.dtype)
        column[: len(index)] = values[index]
        out[field] = column
    example_mask = np.zeros(batch_size, np.float32)
    example_mask[: len(index)] = 1
    out["example_mask"] = example_mask
    return out


def batches(
    data: Examples,
    batch_size: int,
    limits: Mapping[str, int],
    *,
    seed: int = 0,
    epoch: int = 0,
    start: int = 0,
    shuffle: bool = True,
    bucket_step: int = 16,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """(batch, example indices of its real rows) of `epoch`, from batch index `start` on.

    `limits` gives each length group's maximum (e.g. {"source": 64, "target": 16}).
    """
    sizes = {group: buckets(limits[group], bucket_step) for group in data.groups}
    for index in epoch_order(data.sort_key(), batch_size, seed, epoch, shuffle)[start:]:
        yield pad_batch(data, index, batch_size, sizes), index


def num_batches(data: Examples, batch_size: int) -> int:
    return -(-len(data) // batch_size)


def padding_report(data: Examples, batch_size: int, max_length: int, seed: int = 0) -> dict:
    """Mean source tokens per row: real, bucketed (ftjax), and padded to each random
    batch's longest row (what a plain shuffled loader with dynamic padding computes)."""
    lengths = data.group_lengths("source")
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
