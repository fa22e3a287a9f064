"""Sentence features from a backbone's hidden states: which layers, and how to pool.

Layers: "last", an index into the hidden states (0 = embeddings, -1 = last; negative
counts from the end), "mean_all" (average of every layer after the embeddings),
"mean_last4", "concat_last4". Pooling: "cls" (first token), "mean" (over real tokens),
"last" (last real token: GPT-2), "pooler" (BERT's tanh pooler over [CLS]; last layer
only). For T5 the backbone runs its encoder only, so every choice reads encoder states.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ftjax.core.errors import ConfigError
from ftjax.models.base import ModelOutput
from ftjax.tasks.base import example_tokens

LAYER_CHOICES = ("last", "mean_all", "mean_last4", "concat_last4")
POOLING_CHOICES = ("cls", "mean", "last", "pooler")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    pooling: str = "mean"
    layers: str = "last"

    def __post_init__(self) -> None:
        # The fields are config.task's: the messages name them there.
        if self.pooling not in POOLING_CHOICES:
            raise ConfigError(
                f"config.task.pooling={self.pooling!r}; choose from {POOLING_CHOICES}"
            )
        if self.layers not in LAYER_CHOICES and not _is_int(self.layers):
            raise ConfigError(
                f"config.task.layers={self.layers!r}; choose from {LAYER_CHOICES} or a layer index"
            )
        if self.pooling == "pooler" and self.layers != "last":
            raise ConfigError(
                "config.task.pooling='pooler' reads the last layer only (task.layers='last')"
            )

    @property
    def needs_all_layers(self) -> bool:
        return self.layers != "last"

    def width(self, hidden_size: int) -> int:
        return 4 * hidden_size if self.layers == "concat_last4" else hidden_size


def _is_int(text: str) -> bool:
    try:
        int(text)
    except (TypeError, ValueError):
        return False
    return True


def select_layers(output: ModelOutput, spec: FeatureSpec) -> jax.Array:
    """[batch, tokens, width] states chosen by `spec.layers`."""
    if spec.layers == "last":
        return output.last_hidden_state
    states = output.hidden_states
    if states is None:
        raise ValueError("features need all hidden states: call with output_hidden_states=True")
    if _is_int(spec.layers):
        index = int(spec.layers)
        if not -len(states) <= index < len(states):
            raise ValueError(
                f"features.layers={index} is out of range: this model has {len(states)} "
                "hidden states (0 = embeddings)"
            )
        return states[index]
    if spec.layers == "mean_all":
        return jnp.mean(jnp.stack(states[1:]), axis=0)
    if len(states) < 5:
        raise ValueError(
            f"features.layers={spec.layers!r} needs 4 layers; this model has {len(states) - 1}"
        )
    last4 = states[-4:]
    if spec.layers == "mean_last4":
        return jnp.mean(jnp.stack(last4), axis=0)
    return jnp.concatenate(last4, axis=-1)


def pool(states: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
    """[batch, tokens, width] -> [batch, width] over the real tokens given by `mask`."""
    if pooling == "cls":  # the first real token: [CLS], also when packed mid-row
        first = jnp.argmax(mask.astype(bool), axis=1)
        return jnp.take_along_axis(states, first[:, None, None], axis=1)[:, 0]
    if pooling == "mean":
        weights = mask.astype(states.dtype)[..., None]
        return (states * weights).sum(1) / jnp.maximum(weights.sum(1), 1)
    if pooling == "last":
        # Index of the last real token, whether padding is on the right or the left.
        positions = jnp.arange(mask.shape[1])
        last = jnp.max(jnp.where(mask.astype(bool), positions, -1), axis=1)
        return jnp.take_along_axis(states, jnp.maximum(last, 0)[:, None, None], axis=1)[:, 0]
    raise ValueError(f"pooling {pooling!r} is not a token pooling")


def unreached_by_features(family, config, spec: FeatureSpec) -> tuple[str, ...]:
    """Backbone parameters that features chosen by `spec` never read: parameters past
    the first stack (T5's decoder and LM head), BERT's pooler unless it is the feature,
    and, for features of an inner layer, the layers above it and the final norm."""
    patterns = [
        p
        for p in family.unused_by_encoder_features
        if not (spec.pooling == "pooler" and p.startswith("pooler"))
    ]
    if _is_int(spec.layers):
        stack, depth = family.stacks(config)[0]
        index = int(spec.layers) % (depth + 1)  # hidden state i is the output of layer i-1
        if index < depth:
            above = "|".join(str(i) for i in range(index, depth))
            patterns += [f"{stack}/layer_({above})/.*", f"{stack}/final_norm/.*"]
    return tuple(patterns)


def features(output: ModelOutput, batch: Mapping[str, jax.Array], spec: FeatureSpec) -> jax.Array:
    """[example slots, width] features of a batch's examples, packed or not."""
    if spec.pooling == "pooler":
        if output.pooled is None:
            raise ValueError("features.pooling='pooler' needs a BERT checkpoint with a pooler")
        return output.pooled
    states, mask = example_tokens(select_layers(output, spec), batch)
    return pool(states, mask, spec.pooling)
