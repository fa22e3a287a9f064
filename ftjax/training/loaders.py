"""What the steps eat: bucketed token batches, or a probe's cached features.

Both loaders give the same three things: `train_batches(epoch, start)` (seeded,
resumable order), `eval_batches(role)` yielding (batch, example indices of its real
rows), shortest examples first, and `examples(role)`, the encoded split the task's metrics read.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator

import numpy as np

from ftjax.data import batching
from ftjax.data.batching import Examples
from ftjax.tasks import Task
from ftjax.training import probe

log = logging.getLogger("ftjax")


@dataclasses.dataclass
class TokenLoader:
    """Encoded splits -> bucketed batches (train: shuffled per epoch; eval: in order)."""

    splits: dict[str, Examples]  # by role: train, validation, test
    batch_size: int
    eval_batch_size: int
    limits: dict[str, int]  # max length per length group
    seed: int
    bucket_step: int
    pack_length: int = 0  # > 0: training batches packed into rows of this many tokens
    row_step: int = 1  # a packed batch's row count is a multiple of this
    row_buckets: tuple[int, ...] = ()  # ... and one of these (`with_row_buckets`)
    # Evaluation widths of the groups a task pads coarsely (`Task.eval_widths`).
    eval_widths: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    @property
    def roles(self) -> set[str]:
        return set(self.splits)

    def examples(self, role: str) -> Examples:
        return self.splits[role]

    def num_batches(self, role: str = "train") -> int:
        return batching.num_batches(self.splits[role], self.batch_size)

    def with_row_buckets(self, steps: int) -> TokenLoader:
        """This loader with its packed batches' row counts bucketed over the `steps`
        batches the run trains on (`batching.choose_row_buckets`): one compile each."""
        if not self.pack_length or "train" not in self.splits or steps < 1:
            return self
        counts = batching.packed_row_counts(
            self.splits["train"], self.batch_size, self.pack_length, self.seed, steps
        )
        sizes = batching.choose_row_buckets(counts, self.row_step)
        padded = sum(min(b for b in sizes if b >= c) for c in counts)
        log.info(
            "packing: %d examples a step in %d-%d rows of %d tokens; row counts %s "
            "(padding rows %.1f%%)",
            self.batch_size, min(counts), max(counts), self.pack_length, list(sizes),
            100.0 * (1 - sum(counts) / padded),
        )  # fmt: skip
        return dataclasses.replace(self, row_buckets=sizes)

    def train_batches(self, epoch: int, start: int) -> Iterator[dict]:
        for batch, _ in batching.batches(
            self.splits["train"],
            self.batch_size,
            self.limits,
            seed=self.seed,
            epoch=epoch,
            start=start,
            bucket_step=self.bucket_step,
            pack_length=self.pack_length,
            row_step=self.row_step,
            row_buckets=self.row_buckets,
        ):
            yield batch

    def eval_batches(self, role: str) -> Iterator[tuple[dict, np.ndarray]]:
        return batching.batches(
            self.splits[role],
            self.eval_batch_size,
            self.limits,
            shuffle=False,
            sort=True,  # shortest first: less padding; callers restore example order
            bucket_step=self.bucket_step,
            widths=self.eval_widths,
        )


@dataclasses.dataclass
class FeatureLoader:
    """A probe's cached features: the backbone ran once; batches hold features and the
    task's fixed per-example fields (labels, targets)."""

    tokens: TokenLoader
    features: dict[str, np.ndarray]  # by role, [examples, width]

    @classmethod
    def cache(cls, tokens: TokenLoader, task: Task, params: dict) -> FeatureLoader:
        start = time.perf_counter()
        features = {
            role: probe.extract_features(task, params, tokens.eval_batches(role))
            for role in tokens.roles
        }
        log.info(
            "probe: cached features of %s in %.1fs (the backbone runs once)",
            {k: len(v) for k, v in features.items()},
            time.perf_counter() - start,
        )
        return cls(tokens, features)

    @property
    def roles(self) -> set[str]:
        return self.tokens.roles

    def examples(self, role: str) -> Examples:
        return self.tokens.examples(role)

    def num_batches(self, role: str = "train") -> int:
        return self.tokens.num_batches(role)

    def _batch(self, role: str, index: np.ndarray, size: int) -> dict[str, np.ndarray]:
        fields = {"features": self.features[role], **self.examples(role).fixed()}
        out = {}
        for name, values in fields.items():
            column = np.zeros((size, *values.shape[1:]), values.dtype)
            column[: len(index)] = values[index]
            out[name] = column
        out["example_mask"] = (np.arange(size) < len(index)).astype(np.float32)
        return out

    def train_batches(self, epoch: int, start: int) -> Iterator[dict]:
        n, size = len(self.features["train"]), self.tokens.batch_size
        order = np.random.default_rng([self.tokens.seed, epoch]).permutation(n)
        for begin in range(start * size, n, size):
            yield self._batch("train", order[begin : begin + size], size)

    def eval_batches(self, role: str) -> Iterator[tuple[dict, np.ndarray]]:
        n, size = len(self.features[role]), self.tokens.eval_batch_size
        for begin in range(0, n, size):
            index = np.arange(begin, min(begin + size, n))
            yield self._batch(role, index, size), index
