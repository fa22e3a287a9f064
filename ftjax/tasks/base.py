"""The task interface: what the trainer and `ftjax.evaluate` call, whatever the task.

A task turns dataset rows into arrays, owns its head (if any), its loss, what its eval
step returns and how the host turns that into metrics, and declares which backbone
parameters its loss can reach. The runner never asks which task runs:

    task = tasks.make(config, tokenizer, info)     # config.task.name picks the class
    model = task.prepare_model(model)              # e.g. switch on an MLM head
    ... the method switches on its hooks ...
    task.attach(model)                             # the final backbone
    params |= task.init_head(rng)                  # {"head": ...} or nothing
    task.prepare_data(splits)                      # e.g. draw demonstrations
    examples = task.encode(rows, split)            # -> batching.Examples
    loss, aux = task.loss(params, batch, rng)      # aux["weight"]: units averaged over
    sums, per_row = task.eval_outputs(params, batch)
    metrics = task.finalize(sums, per_row, examples)

Eval outputs come in two kinds: `sums` are added over batches (loss sums, counts) and
`per_row` arrays have one entry per batch row; the runner keeps the real rows, puts them
in example order and hands them to `finalize` as lists (one entry per example).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ftjax.core.errors import ConfigError
from ftjax.data.batching import IGNORE, Examples
from ftjax.models import hub

log = logging.getLogger("ftjax.tasks")
HEAD = "head"
Batch = Mapping[str, jax.Array]


class TaskError(ConfigError):
    """A task that cannot run with this config, model or data; the message names it."""


class DataRowError(ValueError):
    """A dataset row a task cannot use; the message names the split, row and field."""


class RowChecker:
    """Collects bad rows of one split: an error at the first (data.on_bad_row="error"),
    or dropped and counted per reason ("drop")."""

    def __init__(self, split: str, policy: str):
        if policy not in ("error", "drop"):
            raise TaskError(f"config.data.on_bad_row={policy!r}: error or drop")
        self.split, self.policy = split, policy
        self.dropped: dict[str, int] = {}
        self.bad: set[int] = set()

    def reject(self, row: int, field: str, reason: str) -> None:
        if self.policy == "error":
            raise DataRowError(
                f"split {self.split!r}, row {row}, field {field!r}: {reason} "
                "(set config.data.on_bad_row=drop to drop such rows, counted in the log)"
            )
        key = f"{field}: {reason.split(':')[0]}"
        self.dropped[key] = self.dropped.get(key, 0) + 1
        self.bad.add(row)

    def good(self, n: int) -> np.ndarray:
        return np.array([i for i in range(n) if i not in self.bad], np.int64)

    def report(self, examples: int, truncated: int = 0, **extra: Any) -> dict[str, Any]:
        out = {"examples": examples, "dropped": dict(self.dropped), **extra}
        out["truncated"] = truncated
        out["truncated_share"] = truncated / examples if examples else 0.0
        if self.dropped:
            log.warning("split %s: dropped rows %s", self.split, self.dropped)
        if truncated:
            log.info(
                "split %s: %d of %d examples truncated (%.1f%%)",
                self.split,
                truncated,
                examples,
                100 * truncated / max(examples, 1),
            )
        return out


def require_columns(rows, split: str, columns: Mapping[str, str]) -> None:
    """Every configured column is in the split; the error names the config field."""
    missing = {field: col for field, col in columns.items() if col and col not in rows.column_names}
    if missing:
        fields = ", ".join(f"config.data.{f}={c!r}" for f, c in missing.items())
        raise DataRowError(
            f"split {split!r} has no column for {fields}; it has {rows.column_names}"
        )


# What a packed batch (ftjax.data.batching.pack_batch) adds to the backbone's inputs.
PACKED_INPUTS = ("segment_ids", "position_ids")


def model_inputs(batch: Batch, names: tuple[str, ...]) -> dict[str, jax.Array]:
    """The backbone's inputs among `names`, and a packed batch's segments and positions."""
    return {k: batch[k] for k in (*names, *PACKED_INPUTS) if k in batch}


def is_packed(batch: Batch) -> bool:
    return "segment_ids" in batch


def real_rows(batch: Batch) -> jax.Array:
    """[rows, 1] bool: the batch rows that hold examples. A packed batch's example slots
    are not its rows: there every row counts, its padding masked token by token."""
    if is_packed(batch):
        return jnp.ones((batch["segment_ids"].shape[0], 1), bool)
    return batch["example_mask"][:, None] > 0


def example_tokens(states: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """Per-token `states` [rows, length, ...] as one row per example slot, and the mask
    of the slot's own tokens [slots, length]: in a packed batch each example's segment
    of its row (`example_row/start/length`), unpacked the rows and `attention_mask`."""
    if not is_packed(batch):
        return states, batch["attention_mask"] > 0
    positions = jnp.arange(states.shape[1])
    start = batch["example_start"][:, None]
    own = (positions >= start) & (positions < start + batch["example_length"][:, None])
    return states[batch["example_row"]], own


class Task:
    """Base of every task kind; subclasses fill in the data, head, loss and metrics."""

    name: ClassVar[str]
    # Metrics finalize reports (besides loss); the first one picks the best checkpoint.
    metrics: ClassVar[tuple[str, ...]]
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"loss"})
    # Config defaults this task adds: config.task fields and config.data fields.
    task_defaults: ClassVar[dict[str, Any]] = {}
    data_defaults: ClassVar[dict[str, Any]] = {}
    # Sequence-level tasks whose head reads pooled features can train on cached features.
    caches_features: ClassVar[bool] = False

    def __init__(self, config: ml_collections.ConfigDict, tokenizer, info: Mapping[str, Any]):
        self.config, self.tokenizer, self.info = config, tokenizer, dict(info or {})
        self.model: nn.Module | None = None

    # ------------------------------------------------------------------ model side

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """The backbone this task needs (before a method switches its hooks on)."""
        return model

    def attach(self, model: nn.Module) -> None:
        """Binds the final backbone (with the method's hooks) and checks it fits."""
        self.model = model
        self.check_model(hub.family_of(model))
        self.check_packing()

    def check_model(self, family) -> None:
        """Raises TaskError when this task makes no sense for the model's family."""

    def model_takes(self, name: str) -> bool:
        """Whether the backbone's __call__ has an argument `name`."""
        return name in inspect.signature(type(self.model).__call__).parameters

    def packing_refusal(self) -> str | None:
        """Why this task cannot train on packed batches (data.pack_length), or None.
        Tasks whose examples are one right-padded token sequence, with per-example
        outputs read by `example_tokens`, override it."""
        return f"the {self.name} task reads whole rows"

    def check_packing(self) -> None:
        """Refuses packing that cannot work, naming why; resolves `data.pack_length=-1`
        (auto) to max_length where nothing stands in the way, else to 0 (bucketing)."""
        d = self.config.data
        if not d.pack_length:
            return
        why = self._packing_obstacle()
        if d.pack_length < 0:
            d.pack_length = 0 if why else d.max_length
            if why:
                log.info("data.pack_length=-1 (auto): not packing (%s); bucketing by length", why)
            return
        if why is None and d.pack_length < d.max_length:
            why = f"it is shorter than data.max_length={d.max_length}"
        if why is not None:
            raise TaskError(f"config.data.pack_length={d.pack_length}: {why} (0 turns packing off)")

    def _packing_obstacle(self) -> str | None:
        why = self.packing_refusal()
        if why is None and not self.model_takes("segment_ids"):
            why = f"{type(self.model).__name__} takes no segment_ids"
        if why is None and self.model.config.peft.prompt_length:
            why = "a soft prompt is one per row, and a packed row holds several examples"
        if why is None and self.config.optimizer.grad_accum > 1:
            why = "optimizer.grad_accum > 1 splits rows into micro-batches; use 1"
        return why

    @property
    def family(self):
        return hub.family_of(self.model)

    def unreached(self) -> tuple[str, ...]:
        """Regexes over backbone parameter paths that no loss of this task reaches."""
        return ()

    def head(self) -> nn.Module | None:
        return None

    def head_input(self) -> jax.Array:
        """A dummy input for the head's init (shape inference only)."""
        raise NotImplementedError

    def init_head(self, rng: jax.Array) -> dict[str, Any]:
        head = self.head()
        if head is None:
            return {}
        return {HEAD: nn.unbox(head.init(rng, self.head_input())["params"])}

    def head_axes(self) -> dict[str, Any]:
        """{"head": PartitionSpec pytree} of the head's params (logical axis names)."""
        head = self.head()
        if head is None:
            return {}
        abstract = jax.eval_shape(head.init, jax.random.key(0), self.head_input())
        return {HEAD: nn.get_partition_spec(abstract)["params"]}

    def backbone_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in params.items() if k != HEAD}

    # ------------------------------------------------------------------ data side

    def group_limits(self) -> dict[str, int]:
        """Maximum length of each length group (see ftjax.data.batching)."""
        return {"source": self.config.data.max_length}

    def eval_widths(self) -> dict[str, list[int]]:
        """Evaluation widths of the length groups this task pads its own way (default:
        none; every group in multiples of `data.bucket_step`)."""
        return {}

    def prepare_data(self, splits: Mapping[str, Any]) -> None:
        """Sees every loaded split (name -> rows) before any is encoded: e.g. to draw
        in-context demonstrations from the training split."""

    def encode(self, rows, split: str) -> Examples:
        raise NotImplementedError

    def strata(self, rows) -> Sequence[Any] | None:
        """Each row's class, so that `data.train_examples` keeps the classes' shares;
        None (the default) samples rows uniformly."""
        return None

    # ------------------------------------------------------------------ device side

    def loss(self, params: dict, batch: Batch, rng=None) -> tuple[jax.Array, dict]:
        """(mean loss, {"weight": what it averages over}); `rng` switches dropout on."""
        raise NotImplementedError

    def eval_outputs(self, params: dict, batch: Batch) -> tuple[dict, dict]:
        """(sums over the batch's real rows, per-row arrays to gather)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ host side

    def finalize(
        self, sums: Mapping[str, float], per_row: Mapping[str, list], examples: Examples
    ) -> dict[str, Any]:
        raise NotImplementedError


def dropout_rngs(rng) -> tuple[Any, Any]:
    """(backbone rng, head rng), or (None, None) in evaluation."""
    if rng is None:
        return None, None
    return tuple(jax.random.split(rng))


def labelled_token_losses(logits: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(cross-entropy of each position against `batch["labels"]` (float32), which
    positions count: labelled ones, IGNORE excepted, of real rows)."""
    labels = batch["labels"]
    counted = (labels != IGNORE) & real_rows(batch)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), jnp.maximum(labels, 0)
    )
    return losses, counted


def masked_mean(values: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum(values * w) / max(sum(w), 1), sum(w)) in float32."""
    weights = weights.astype(jnp.float32)
    total = weights.sum()
    return (values * weights).sum() / jnp.maximum(total, 1.0), total
