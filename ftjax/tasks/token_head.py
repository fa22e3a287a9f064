"""Tasks with a head on every token's state (NER tags, QA span starts and ends).

The head is one dense layer on the token states of the chosen layer(s) (`task.layers`:
last, an index, mean_all, mean_last4, concat_last4), so a frozen-feature variant is
`method=probe`; parameters past those layers (T5's decoder, BERT's pooler) are unreached.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ftjax.tasks.base import HEAD, Task, dropout_rngs, model_inputs
from ftjax.tasks.classification import Head
from ftjax.tasks.features import FeatureSpec, select_layers, unreached_by_features

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TokenHeadTask(Task):
    task_defaults = {"layers": "last", "head_dropout": 0.1}

    @property
    def outputs(self) -> int:
        """Head outputs per token."""
        raise NotImplementedError

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec(pooling="mean", layers=str(self.config.task.layers))

    def unreached(self) -> tuple[str, ...]:
        return unreached_by_features(self.family, self.model.config, self.spec)

    def head(self) -> Head:
        return Head(self.outputs, self.config.task.head_dropout)

    def head_input(self) -> jax.Array:
        return jnp.zeros((1, self.spec.width(self.model.config.hidden_size)), jnp.float32)

    def logits(self, params, batch, rng=None) -> jax.Array:
        """[batch, length, outputs] head outputs on every token."""
        backbone_rng, head_rng = dropout_rngs(rng)
        output = self.model.apply(
            {"params": self.backbone_params(params)},
            **model_inputs(batch, TOKEN_INPUTS),
            deterministic=rng is None,
            output_hidden_states=self.spec.needs_all_layers,
            rngs={"dropout": backbone_rng} if backbone_rng is not None else None,
        )
        states = select_layers(output, self.spec).astype(jnp.float32)
        return self.head().apply(
            {"params": params[HEAD]},
            states,
            deterministic=rng is None,
            rngs={"dropout": head_rng} if head_rng is not None else None,
        )
