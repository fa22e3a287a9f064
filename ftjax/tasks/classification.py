"""Sequence classification: backbone -> pooled features -> linear head -> softmax.

The full params are the backbone's plus `{"head": {"kernel", "bias"}}` at the top level,
so trainable patterns read `head/.*` beside `encoder/layer_5/.*`. A batch holds
`input_ids`, `attention_mask`, `labels` and `example_mask` (0 for rows that only pad a
batch to its fixed size); a batch that already holds `features` (cached by a probe)
skips the backbone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ftjax.models import layers
from ftjax.tasks.features import FeatureSpec, features

Batch = dict[str, jax.Array]
HEAD = "head"


class Head(nn.Module):
    num_labels: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        return layers.Dense(self.num_labels, (layers.EMBED, "classes"), name="dense")(
            x.astype(jnp.float32)
        )


@dataclasses.dataclass(frozen=True)
class Classifier:
    backbone: nn.Module
    num_labels: int
    spec: FeatureSpec = FeatureSpec()
    head_dropout: float = 0.0

    @property
    def head(self) -> Head:
        return Head(self.num_labels, self.head_dropout)

    @property
    def feature_width(self) -> int:
        return self.spec.width(self.backbone.config.hidden_size)

    def init_head(self, rng: jax.Array) -> dict[str, Any]:
        x = jnp.zeros((1, self.feature_width), jnp.float32)
        return {HEAD: nn.unbox(self.head.init(rng, x)["params"])}

    def features(
        self, params: dict, batch: Batch, *, deterministic: bool = True, rng=None
    ) -> jax.Array:
        """Runs the backbone (not the head) and pools its states."""
        backbone_params = {k: v for k, v in params.items() if k != HEAD}
        output = self.backbone.apply(
            {"params": backbone_params},
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            deterministic=deterministic,
            output_hidden_states=self.spec.needs_all_layers,
            rngs={"dropout": rng} if rng is not None else None,
        )
        return features(output, batch["attention_mask"], self.spec).astype(jnp.float32)

    def logits(self, params: dict, batch: Batch, *, deterministic: bool = True, rng=None):
        backbone_rng = head_rng = None
        if rng is not None:
            backbone_rng, head_rng = jax.random.split(rng)
        if "features" in batch:
            x = batch["features"]
        else:
            x = self.features(params, batch, deterministic=deterministic, rng=backbone_rng)
        return self.head.apply(
            {"params": params[HEAD]},
            x,
            deterministic=deterministic,
            rngs={"dropout": head_rng} if head_rng is not None else None,
        )

    def loss(self, params: dict, batch: Batch, rng=None) -> tuple[jax.Array, dict]:
        """Mean cross-entropy over real rows; `rng` switches dropout on (training)."""
        logits = self.logits(params, batch, deterministic=rng is None, rng=rng)
        weights = batch["example_mask"].astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        loss = (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)
        return loss, {"logits": logits, "weight": weights.sum()}

    def predict(self, params: dict, batch: Batch) -> jax.Array:
        return jnp.argmax(self.logits(params, batch), axis=-1)


def accuracy(predictions, labels, example_mask) -> float:
    """Share of real rows predicted correctly."""
    weights = jnp.asarray(example_mask, jnp.float32)
    return float((jnp.asarray(predictions == labels, jnp.float32) * weights).sum() / weights.sum())
