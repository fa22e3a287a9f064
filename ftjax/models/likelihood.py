"""Log-likelihoods of a few candidate continuations ("choices": label words) given a
prompt, for each way a pretrained model can score text:

- `causal_choices` (GPT-2, Llama): a context shared by every row (in-context
  demonstrations) is encoded once, at batch size 1, into the key/value cache; each row's
  query then extends that cache once; every choice continues from it. So the prompt is
  never encoded once per choice.
- `encoder_decoder_choices` (T5): the encoder runs once per row; the decoder reads each
  choice after `decoder_start_token_id`.
- `masked_choices` (BERT-style encoders with an MLM head, PET-style cloze): the log-
  probability of each single-token choice at the row's [MASK] position.

Each returns [batch, choices] summed log-probabilities of the choice's tokens (float32).
Everything is traceable: it compiles inside the eval or train step that calls it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models.generation import prompt_cache, take_rows

Array = jax.Array


def _rngs(rng) -> dict | None:
    return {"dropout": rng} if rng is not None else None


def _token_logprobs(logits: Array, tokens: Array) -> Array:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def _repeat_rows(tree, rows: int, times: int):
    """A cache's `rows` rows each repeated `times` (row b -> rows b*times ...), wherever
    its leaves keep their rows (`generation.take_rows`: behind a scanned stack's layers)."""
    return take_rows(tree, jnp.repeat(jnp.arange(rows), times))


def causal_choices(
    model: nn.Module,
    params,
    context: Array,
    query: Array,
    query_mask: Array,
    choices: Array,
    choice_mask: Array,
    *,
    rng=None,
) -> Array:
    """`context` [D] token ids before every row (D may be 0); `query` [B, Q] each row's
    prompt, padded on the LEFT; `choices` [C, L] padded on the right (`choice_mask`).
    `rng` switches dropout on (training)."""
    batch, width = query.shape
    num_choices, length = choices.shape
    shared = context.shape[0]
    total = shared + width + length
    mask = jnp.concatenate(
        [
            jnp.ones((batch, shared), query_mask.dtype),
            query_mask,
            jnp.ones((batch, length), query_mask.dtype),
        ],
        axis=1,
    )
    keys = iter(jax.random.split(rng, 3)) if rng is not None else iter([None] * 3)

    def run(cache, ids, full_mask, positions, phase, read=None):
        """(logits at the positions `read` [rows, k] of this call's tokens, new cache)."""
        out, variables = model.apply(
            {"params": params, "cache": cache},
            ids,
            full_mask,
            positions,
            decode=phase,
            deterministic=rng is None,
            mutable=["cache"],
            rngs=_rngs(next(keys)),
            logit_positions=read,
        )
        return out.logits, variables["cache"]

    # The demonstrations: encoded once, then every row reads the same cache.
    cache, phase = prompt_cache(model, params, run, context, batch, total)
    # Positions count real tokens only, so left padding leaves them unchanged.
    real = jnp.cumsum(query_mask, axis=1)
    # Only the prompt's last token is read: it predicts each choice's first.
    last_position = jnp.full((batch, 1), width - 1, jnp.int32)
    logits, cache = run(cache, query, mask, shared + jnp.maximum(real - 1, 0), phase, last_position)
    last = logits[:, 0]

    tokens = jnp.tile(choices, (batch, 1))  # row b * C + c is choice c of row b
    counted = jnp.tile(choice_mask, (batch, 1)).astype(jnp.float32)
    first = jnp.repeat(last, num_choices, axis=0)[:, None]
    if length == 1:  # single-token choices: the prompt's last logits are all it takes
        predicted = first
    else:  # each choice token but the last predicts the next one; the last is not fed
        start = shared + jnp.repeat(real[:, -1], num_choices)[:, None]
        continued, _ = run(
            _repeat_rows(cache, batch, num_choices),
            tokens[:, :-1],
            jnp.repeat(mask, num_choices, axis=0),
            start + jnp.arange(length - 1)[None],
            "step",
        )
        predicted = jnp.concatenate([first, continued], axis=1)
    scores = (_token_logprobs(predicted, tokens) * counted).sum(1)
    return scores.reshape(batch, num_choices)


def encoder_decoder_choices(
    model: nn.Module,
    params,
    source: Array,
    source_mask: Array,
    choices: Array,
    choice_mask: Array,
    *,
    rng=None,
) -> Array:
    """`source` [B, S] the encoder's input; `choices` [C, L] the decoder's targets."""
    batch = source.shape[0]
    num_choices = choices.shape[0]
    encoder_rng, decoder_rng = jax.random.split(rng) if rng is not None else (None, None)
    states, encoder_mask = model.apply(
        {"params": params},
        source,
        source_mask,
        deterministic=rng is None,
        method="encode",
        rngs=_rngs(encoder_rng),
    )
    tokens = jnp.tile(choices, (batch, 1))
    counted = jnp.tile(choice_mask, (batch, 1))
    start = jnp.full((tokens.shape[0], 1), model.config.decoder_start_token_id, tokens.dtype)
    _, logits = model.apply(
        {"params": params},
        jnp.concatenate([start, tokens[:, :-1]], axis=1),
        jnp.repeat(states[-1], num_choices, axis=0),
        jnp.repeat(encoder_mask, num_choices, axis=0),
        counted,
        deterministic=rng is None,
        method="decode",
        rngs=_rngs(decoder_rng),
    )
    scores = (_token_logprobs(logits, tokens) * counted.astype(jnp.float32)).sum(1)
    return scores.reshape(batch, num_choices)


def masked_choices(
    model: nn.Module,
    params,
    inputs: dict[str, Array],
    mask_position: Array,
    choices: Array,
    *,
    rng=None,
) -> Array:
    """`inputs` the encoder's (input_ids, attention_mask, token_type_ids) with one [MASK]
    per row at `mask_position` [B]; `choices` [C] single token ids."""
    at_mask = model.apply(
        {"params": params},
        **inputs,
        deterministic=rng is None,
        rngs=_rngs(rng),
        logit_positions=mask_position[:, None],
    ).logits[:, 0]
    logp = jax.nn.log_softmax(at_mask.astype(jnp.float32), axis=-1)
    return logp[:, choices]
