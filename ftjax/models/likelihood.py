"""Log-likelihoods of a few candidate continuations ("choices": label words) given a
prompt, for each way a pretrained model can score text:

- `causal_choices` (GPT-2, Llama): a context shared by every row (in-context
  demonstrations) is encoded once, at batch size 1, into the key/value cache; each row's
  query then extends that cache once; every choice continues from it. So the prompt is
  never encoded once per choice.
- `encoder_decoder_choices` (T5): the encoder runs once per row; the decoder reads each
  choice after `decoder_start_token_id`.
- `masked_choices` (BERT-style encoders with an MLM head, PET's cloze): the log-
  probability of a one-token choice at the row's [MASK]; a longer one by PET's decoding
  (as many [MASK]s as tokens, filled most-confident first, one pass each).

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
    lengths: tuple[int, ...],
    *,
    rng=None,
) -> Array:
    """`inputs` the encoder's (input_ids, attention_mask) with a slot of W [MASK]s per
    row from `mask_position` [B]; `choices` [C, W] token ids, choice c's first
    `lengths[c]` real (W = the longest).

    The slot keeps as many [MASK]s as the choice has tokens (the tail moves left). A
    one-token choice is read off one pass at its [MASK]. A choice of k > 1 tokens is
    scored as PET does (Schick & Schütze 2021, "It's not just size that matters", s. 3):
    each pass scores every still-masked slot position with the choice's own token there,
    fills the position the model is surest of, and adds that log-probability, k passes
    in all. `lengths` is static (it sets the passes)."""
    ids, attention = inputs["input_ids"], inputs["attention_mask"]
    width = choices.shape[1]
    columns = {}
    single = [c for c, k in enumerate(lengths) if k == 1]
    if single:
        one = _with_slot(ids, attention, mask_position, 1, width)
        at_mask = _slot_logprobs(model, params, *one, mask_position[:, None], rng)
        picked = at_mask[:, 0, choices[jnp.asarray(single), 0]]
        columns.update({c: picked[:, i] for i, c in enumerate(single)})
    for c, k in enumerate(lengths):
        if k > 1:
            slotted = _with_slot(ids, attention, mask_position, k, width)
            columns[c] = _pet_score(model, params, *slotted, mask_position, choices[c, :k], rng)
    return jnp.stack([columns[c] for c in range(len(lengths))], axis=1)


def _slot_logprobs(model, params, ids, attention, positions, rng) -> Array:
    """[B, k, vocab] log-probabilities at `positions` [B, k]."""
    logits = model.apply(
        {"params": params},
        input_ids=ids,
        attention_mask=attention,
        deterministic=rng is None,
        rngs=_rngs(rng),
        logit_positions=positions,
    ).logits
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _pet_score(model, params, ids, attention, mask_position, word, rng) -> Array:
    """[B] PET's score of the k-token `word` (see `masked_choices`), its k [MASK]s at
    `mask_position`."""
    k = word.shape[0]
    slot = mask_position[:, None] + jnp.arange(k)[None]  # [B, k]
    rows = jnp.arange(ids.shape[0])
    filled = jnp.zeros(slot.shape, bool)
    total = jnp.zeros(ids.shape[0], jnp.float32)
    for step in range(k):
        step_rng = None if rng is None else jax.random.fold_in(rng, step)
        logp = _slot_logprobs(model, params, ids, attention, slot, step_rng)
        own = jnp.take_along_axis(logp, jnp.broadcast_to(word, slot.shape)[..., None], -1)[..., 0]
        own = jnp.where(filled, -jnp.inf, own)
        best = jnp.argmax(own, axis=1)
        total = total + own[rows, best]
        ids = ids.at[rows, slot[rows, best]].set(word[best])
        filled = filled.at[rows, best].set(True)
    return total


def _with_slot(ids, attention, mask_position, k: int, width: int):
    """Each row's slot of `width` [MASK]s cut to k (the tail moved left by width - k,
    padding after it): the width never grows, so positions stay in the model's table."""
    if k == width:
        return ids, attention
    index = jnp.arange(ids.shape[1])[None]
    source = jnp.where(index >= mask_position[:, None] + k, index + (width - k), index)
    inside = source < ids.shape[1]
    source = jnp.minimum(source, ids.shape[1] - 1)
    ids = jnp.where(inside, jnp.take_along_axis(ids, source, axis=1), 0)
    attention = jnp.where(inside, jnp.take_along_axis(attention, source, axis=1), 0)
    return ids, attention
