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
Evaluation batches are sorted by length (`sort=True`); the caller restores example order
from the indices each batch comes with.

Packing (`pack_length > 0`, single-group tasks): batches of randomly mixed lengths (not
grouped by length), each batch's examples laid back to back (first-fit decreasing) in
rows of `pack_length` tokens (`pack_batch`). Token fields become [rows, pack_length],
with `segment_ids` (1, 2, ... per example in its row, 0 for padding) and `position_ids`
restarting at 0 in each segment; fixed fields (labels) stay one per example slot, with
the slot's place: `example_row`, `example_start`, `example_length`. Models attend
within a segment only, so each example's outputs are its unpacked ones.
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


def coarse_buckets(max_length: int, smallest: int = 32) -> list[int]:
    """[32, 64, 128, 256] for max_length 256: doubling widths, for batches whose every
    width costs a long compile (a generation loop) more than the padding it saves."""
    sizes = []
    size = smallest
    while size < max_length:
        sizes.append(size)
        size *= 2
    return [*sizes, max_length]


def epoch_order(
    lengths: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    sort: bool = False,
    group_lengths: bool = True,
) -> list[np.ndarray]:
    """The batches (arrays of example indices) of one epoch; unshuffled, in example order
    or (`sort`) from the shortest examples to the longest. Shuffled batches are grouped
    by length (less padding), unless `group_lengths` is off: packing fills its rows best
    from batches of mixed lengths."""
    n = len(lengths)
    if not shuffle:
        order = np.argsort(lengths, kind="stable") if sort else np.arange(n)
        return [order[s : s + batch_size] for s in range(0, n, batch_size)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if not group_lengths:
        return [order[s : s + batch_size] for s in range(0, n, batch_size)]
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
    return {**out, **per_example_fields(data, index, batch_size)}


def per_example_fields(data: Examples, index: np.ndarray, batch_size: int) -> dict:
    """The fixed fields of examples `index` in `batch_size` slots, and `example_mask`."""
    out = {}
    for field, values in data.fixed().items():
        column = np.zeros((batch_size, *values.shape[1:]), values.dtype)
        column[: len(index)] = values[index]
        out[field] = column
    out["example_mask"] = (np.arange(batch_size) < len(index)).astype(np.float32)
    return out


def pack_rows(lengths: np.ndarray, pack_length: int) -> list[list[int]]:
    """First-fit decreasing: which examples (positions in `lengths`) share each row."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in np.argsort(-lengths, kind="stable"):
        n = int(lengths[i])
        if n > pack_length:
            raise ValueError(f"an example has {n} tokens, over data.pack_length={pack_length}")
        slot = next((r for r, room in enumerate(free) if room >= n), None)
        if slot is None:
            rows.append([])
            free.append(pack_length)
            slot = len(rows) - 1
        rows[slot].append(int(i))
        free[slot] -= n
    return rows


def pack_batch(
    data: Examples,
    index: np.ndarray,
    batch_size: int,
    pack_length: int,
    row_step: int,
    row_buckets: Sequence[int] = (),
) -> dict[str, np.ndarray]:
    """Rows `index` of `data` packed into rows of `pack_length` tokens (module docstring);
    the row count is the smallest of `row_buckets` that holds them (few shapes to
    compile, `choose_row_buckets`), else rounded up to a multiple of `row_step`."""
    if data.groups != ["source"] or any(s.left for s in data.layout.values()):
        raise ValueError(
            "data.pack_length: packing lays out one right-padded token group; this task's "
            f"examples have the groups {data.groups}"
        )
    lengths = data.group_lengths("source")[index]
    rows = pack_rows(lengths, pack_length)
    rounded = min(-(-len(rows) // row_step), -(-batch_size // row_step)) * row_step
    count = next((b for b in sorted(row_buckets) if b >= len(rows)), rounded)
    out = {f: np.full((count, pack_length), s.pad, np.int32) for f, s in data.layout.items()}
    segment_ids = np.zeros((count, pack_length), np.int32)
    position_ids = np.zeros((count, pack_length), np.int32)
    place = np.zeros((3, batch_size), np.int32)  # row, start, length of each example slot
    for row, members in enumerate(rows):
        start = 0
        for segment, slot in enumerate(members, 1):
            n = int(lengths[slot])
            span = slice(start, start + n)
            for field in data.layout:
                out[field][row, span] = data.arrays[field][index[slot]]
            segment_ids[row, span] = segment
            position_ids[row, span] = np.arange(n)
            place[:, slot] = row, start, n
            start += n
    out.update(
        attention_mask=(segment_ids > 0).astype(np.int32),
        segment_ids=segment_ids,
        position_ids=position_ids,
        example_row=place[0],
        example_start=place[1],
        example_length=place[2],
    )
    return {**out, **per_example_fields(data, index, batch_size)}


def packed_row_counts(
    data: Examples, batch_size: int, pack_length: int, seed: int, steps: int
) -> list[int]:
    """How many rows each of the first `steps` training batches packs into (the order is
    a pure function of seed and epoch, so these are the run's own batches)."""
    lengths = data.group_lengths("source")
    counts: list[int] = []
    epoch = 0
    while len(counts) < steps:
        for index in epoch_order(data.sort_key(), batch_size, seed, epoch, group_lengths=False):
            counts.append(len(pack_rows(lengths[index], pack_length)))
            if len(counts) == steps:
                break
        epoch += 1
    return counts


def choose_row_buckets(
    counts: Sequence[int], row_step: int, max_padding: float = 0.1
) -> tuple[int, ...]:
    """The fewest batch row counts (multiples of `row_step`) that the batches' `counts`
    round up to with padding rows at most `max_padding` of all rows computed: each size
    is one compile (a few seconds) while each padded row costs every step it appears in.
    Among as few sizes, the least padding (exact: sizes are contiguous groups of the
    sorted needs, each group's size its largest, by dynamic programming)."""
    need = np.array([-(-c // row_step) * row_step for c in counts])
    sizes, weight = np.unique(need, return_counts=True)
    n = len(sizes)

    def padding(i: int, j: int) -> int:  # sizes[i..j] all padded up to sizes[j]
        return int((weight[i : j + 1] * (sizes[j] - sizes[i : j + 1])).sum())

    rows = int((weight * sizes).sum())
    best: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {}  # (groups, last) -> cost
    for j in range(n):
        best[1, j] = (padding(0, j), (int(sizes[j]),))
    for groups in range(1, n + 1):
        if groups > 1:
            for j in range(groups - 1, n):
                best[groups, j] = min(
                    (
                        best[groups - 1, i][0] + padding(i + 1, j),
                        (*best[groups - 1, i][1], int(sizes[j])),
                    )
                    for i in range(groups - 2, j)
                )
        cost, chosen = best[groups, n - 1]
        if cost <= max_padding * (rows + cost):
            return chosen
    return tuple(int(s) for s in sizes)


def batches(
    data: Examples,
    batch_size: int,
    limits: Mapping[str, int],
    *,
    seed: int = 0,
    epoch: int = 0,
    start: int = 0,
    shuffle: bool = True,
    sort: bool = False,
    bucket_step: int = 16,
    pack_length: int = 0,
    row_step: int = 1,
    row_buckets: Sequence[int] = (),
    widths: Mapping[str, Sequence[int]] | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """(batch, example indices of its real rows) of `epoch`, from batch index `start` on.

    `limits` gives each length group's maximum (e.g. {"source": 64, "target": 16}).
    `pack_length > 0` packs each batch's examples (`pack_batch`). A group's widths are
    multiples of `bucket_step`, unless `widths` names that group's own.
    """
    sizes = {group: buckets(limits[group], bucket_step) for group in data.groups}
    sizes.update({g: list(w) for g, w in (widths or {}).items() if g in sizes})
    order = epoch_order(
        data.sort_key(), batch_size, seed, epoch, shuffle, sort, group_lengths=not pack_length
    )
    for index in order[start:]:
        if pack_length:
            yield pack_batch(data, index, batch_size, pack_length, row_step, row_buckets), index
        else:
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
