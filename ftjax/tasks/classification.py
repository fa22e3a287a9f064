"""Sequence-level tasks: backbone -> pooled features -> linear head.

`classification` (single text or text pair; softmax over `data.num_labels` classes;
accuracy, macro-F1, Matthews correlation) and `regression` (one real value; MSE loss;
Pearson and Spearman). The params are the backbone's plus `{"head": {"dense": ...}}`,
so trainable patterns read `head/.*` beside `encoder/layer_5/.*`. BERT-style encoders
pool [CLS], the mean or the tanh pooler; causal decoders pool their last real token
(padding on either side); T5 pools its encoder states (the decoder is never run, and so
never trained). A batch that already holds `features` (cached by a probe) skips the
backbone.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax.data.batching import Examples, Seq
from ftjax.models import layers
from ftjax.tasks import scoring
from ftjax.tasks.base import (
    HEAD,
    RowChecker,
    Task,
    TaskError,
    dropout_rngs,
    masked_mean,
    model_inputs,
    require_columns,
)
from ftjax.tasks.features import FeatureSpec, features, unreached_by_features

BACKBONE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Head(nn.Module):
    """Dropout, then one dense layer (float32) from features to outputs."""

    outputs: int
    dropout: float = 0.0
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        x = layers.Dropout(self.dropout)(x, deterministic=deterministic)
        return layers.Dense(
            self.outputs, (layers.EMBED, "classes"), use_bias=self.use_bias, name="dense"
        )(x.astype(jnp.float32))


def classification_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": scoring.accuracy(predictions, labels),
        "macro_f1": scoring.macro_f1(predictions, labels),
        "mcc": scoring.matthews_corrcoef(predictions, labels),
    }


def encode_texts(task: Task, rows, split: str, checker: RowChecker, label_of) -> Examples:
    """Tokenizes `data.text_column` (and `data.text_pair_column`), truncated to
    `data.max_length`; `label_of(row, value)` checks and converts each label."""
    d = task.config.data
    require_columns(
        rows,
        split,
        {"text_column": d.text_column, "text_pair_column": d.text_pair_column,
         "label_column": d.label_column},
    )  # fmt: skip
    texts = list(rows[d.text_column])
    pairs = list(rows[d.text_pair_column]) if d.text_pair_column else None
    raw_labels = list(rows[d.label_column])
    labels = []
    for i in range(len(texts)):
        for column, values in ((d.text_column, texts), (d.text_pair_column, pairs)):
            if values is not None and (not isinstance(values[i], str) or not values[i].strip()):
                checker.reject(i, column, f"empty or missing text: {values[i]!r}")
        labels.append(label_of(i, raw_labels[i]))
    keep = checker.good(len(texts))
    labels = np.asarray([labels[i] for i in keep])
    ids, types, truncated = tokenize(
        task.tokenizer,
        [texts[i] for i in keep],
        [pairs[i] for i in keep] if pairs else None,
        d.max_length,
    )
    arrays: dict[str, Any] = {"input_ids": ids, "labels": labels}
    layout = {"input_ids": Seq("source", task.tokenizer.pad_token_id)}
    if types is not None and pairs is not None and task.model_takes("token_type_ids"):
        arrays["token_type_ids"] = types
        layout["token_type_ids"] = Seq("source", 0)
    return Examples(arrays, layout, keep, report=checker.report(len(keep), truncated))


def tokenize(tokenizer, texts, pairs, max_length: int):
    """(ids, token type ids or None, number truncated): untruncated first, so the
    truncation count is exact; over-long examples are tokenized again with truncation."""

    def run(index, **kwargs):
        args = ([texts[i] for i in index],)
        if pairs is not None:
            args += ([pairs[i] for i in index],)
        return tokenizer(*args, **kwargs)

    everything = list(range(len(texts)))
    full = run(everything, truncation=False, verbose=False)
    ids = [np.asarray(x, np.int32) for x in full["input_ids"]]
    types = full.get("token_type_ids")
    types = [np.asarray(x, np.int32) for x in types] if types is not None else None
    long = [i for i, x in enumerate(ids) if len(x) > max_length]
    if long:
        cut = run(long, truncation=True, max_length=max_length)
        for j, i in enumerate(long):
            ids[i] = np.asarray(cut["input_ids"][j], np.int32)
            if types is not None:
                types[i] = np.asarray(cut["token_type_ids"][j], np.int32)
    return ids, types, len(long)


class PooledTask(Task):
    """Shared by classification and regression: features, head, per-row outputs."""

    caches_features = True
    task_defaults = {"pooling": "auto", "layers": "last", "head_dropout": 0.1}
    data_defaults = {"text_column": "text", "text_pair_column": "", "label_column": "label"}

    @property
    def spec(self) -> FeatureSpec:
        pooling = self.config.task.pooling
        if pooling == "auto":
            pooling = "last" if self.family.causal else "mean"
        return FeatureSpec(pooling=pooling, layers=str(self.config.task.layers))

    def check_model(self, family) -> None:
        spec = self.spec
        if spec.pooling == "pooler" and not getattr(self.model.config, "with_pooler", False):
            raise TaskError(f"config.task.pooling='pooler': {self.config.model.name} has no pooler")
        if family.causal and spec.pooling in ("cls", "mean"):
            log_hint = "the last real token is the only one that has read the whole input"
            raise TaskError(
                f"config.task.pooling={spec.pooling!r} on a causal decoder: use 'last' or "
                f"'auto' ({log_hint})"
            )

    def unreached(self) -> tuple[str, ...]:
        return unreached_by_features(self.family, self.model.config, self.spec)

    def packing_refusal(self) -> str | None:
        if self.spec.pooling == "pooler":
            return "task.pooling='pooler' reads each row's first slot; pool by cls or mean"
        return None

    @property
    def feature_width(self) -> int:
        return self.spec.width(self.model.config.hidden_size)

    def head(self) -> Head:
        bias = self.family.sequence_head_bias  # as transformers' classifier of the family
        return Head(self.outputs, self.config.task.head_dropout, bias)

    def head_input(self) -> jax.Array:
        return jnp.zeros((1, self.feature_width), jnp.float32)

    def features(self, params, batch, *, deterministic: bool = True, rng=None) -> jax.Array:
        """Runs the backbone (not the head) and pools its states: [batch, width]."""
        spec = self.spec
        output = self.model.apply(
            {"params": self.backbone_params(params)},
            **model_inputs(batch, BACKBONE_INPUTS),
            deterministic=deterministic,
            output_hidden_states=spec.needs_all_layers,
            rngs={"dropout": rng} if rng is not None else None,
        )
        return features(output, batch, spec).astype(jnp.float32)

    def outputs_of(self, params, batch, *, rng=None) -> jax.Array:
        backbone_rng, head_rng = dropout_rngs(rng)
        if "features" in batch:
            x = batch["features"]
        else:
            x = self.features(params, batch, deterministic=rng is None, rng=backbone_rng)
        return self.head().apply(
            {"params": params[HEAD]},
            x,
            deterministic=rng is None,
            rngs={"dropout": head_rng} if head_rng is not None else None,
        )

    def loss(self, params, batch, rng=None):
        losses = self.row_losses(self.outputs_of(params, batch, rng=rng), batch)
        loss, weight = masked_mean(losses, batch["example_mask"])
        return loss, {"weight": weight}

    def eval_outputs(self, params, batch):
        out = self.outputs_of(params, batch)
        weights = batch["example_mask"].astype(jnp.float32)
        losses = self.row_losses(out, batch)
        sums = {"loss_sum": (losses * weights).sum(), "count": weights.sum()}
        return sums, {"predictions": self.predictions(out)}


class SequenceClassification(PooledTask):
    name = "classification"
    metrics = ("accuracy", "macro_f1", "mcc")
    data_defaults = {**PooledTask.data_defaults, "num_labels": 2, "label_names": ()}

    @property
    def outputs(self) -> int:
        return self.config.data.num_labels

    def encode(self, rows, split):
        d = self.config.data
        checker = RowChecker(split, d.on_bad_row)
        names = list(d.label_names)

        def label_of(i, value):
            if isinstance(value, str) and names:
                if value not in names:
                    checker.reject(i, d.label_column, f"label {value!r} not in {names}")
                    return -1
                return names.index(value)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                checker.reject(i, d.label_column, f"label {value!r} is not an integer class")
                return -1
            if not 0 <= value < d.num_labels:
                checker.reject(
                    i, d.label_column, f"label {value} outside the label set 0..{d.num_labels - 1}"
                )
                return -1
            return int(value)

        examples = encode_texts(self, rows, split, checker, label_of)
        examples.arrays["labels"] = examples.arrays["labels"].astype(np.int32)
        return examples

    def strata(self, rows):
        column = self.config.data.label_column
        return rows[column] if column in rows.column_names else None  # encode names it

    def row_losses(self, logits, batch):
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])

    def predictions(self, logits):
        return jnp.argmax(logits, axis=-1)

    def finalize(self, sums, per_row, examples: Examples) -> dict[str, Any]:
        return classification_metrics(np.asarray(per_row["predictions"]), examples.arrays["labels"])


class Regression(PooledTask):
    name = "regression"
    metrics = ("pearson", "spearman", "mse")
    lower_is_better = frozenset({"loss", "mse"})
    data_defaults = {**PooledTask.data_defaults, "label_column": "score"}
    outputs = 1

    def encode(self, rows, split):
        d = self.config.data
        checker = RowChecker(split, d.on_bad_row)

        def label_of(i, value):
            ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            if not ok or not np.isfinite(value):
                checker.reject(i, d.label_column, f"target {value!r} is not a finite number")
                return np.nan
            return float(value)

        examples = encode_texts(self, rows, split, checker, label_of)
        examples.arrays["labels"] = examples.arrays["labels"].astype(np.float32)
        return examples

    def row_losses(self, outputs, batch):
        return jnp.square(outputs[:, 0] - batch["labels"])

    def predictions(self, outputs):
        return outputs[:, 0]

    def finalize(self, sums, per_row, examples: Examples) -> dict[str, Any]:
        predictions = np.asarray(per_row["predictions"], np.float64)
        targets = examples.arrays["labels"].astype(np.float64)
        return {
            "pearson": scoring.pearson(predictions, targets),
            "spearman": scoring.spearman(predictions, targets),
            "mse": scoring.mse(predictions, targets),
        }
