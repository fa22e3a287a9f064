"""Autoregressive decoding with a key/value cache: greedy, beam search and sampling.

Everything here is traceable, so decoding compiles with the step that calls it (the eval
step of `tasks/seq2seq.py`) or with `jax.jit(generate, static_argnames=...)`. Each model
call after the first feeds one new token per row: causal attention layers keep their keys
and values in Flax's "cache" collection (`layers.Attention._cached`).

Two decoders hide the family: `CausalDecoder` (GPT-style; prompts padded on the LEFT,
so every row's last position is its last real token) and `EncoderDecoder` (T5: the
encoder runs once, the decoder starts from `decoder_start_token_id`).

Beam search follows transformers' `generate(num_beams=k)` (its default
`early_stopping=False`): 2k candidates per step, finished hypotheses scored by summed
log-probability / generated_length ** length_penalty, and the same stopping heuristic,
so that outputs agree token for token (tested on tiny random GPT-2 and T5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models import hub
from ftjax.models.base import STACKED

Array = jax.Array
STRATEGIES = ("greedy", "beam", "sample")
_NEG = -1.0e9  # the "impossible" score transformers' beam search adds


def init_cache(run: Callable[[], tuple[Any, dict]]) -> dict:
    """Zeroed cache variables, sized by tracing `run` (an apply with a mutable "cache"
    on full-length inputs) without computing it."""
    _, variables = jax.eval_shape(run)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables["cache"])


def prompt_cache(
    model: nn.Module,
    params,
    run: Callable[..., tuple[Any, dict]],
    context: Array | None,
    rows: int,
    length: int,
) -> tuple[dict, str]:
    """(the cache each of `rows` prompts starts from, the phase to run them in) for a
    causal decoder whose cache spans `length` positions: after a shared `context` [D]
    (k-shot demonstrations), run once at batch size 1 by `run(cache, ids, mask,
    positions, phase) -> (logits, cache)` and given to every row ("step"), or empty
    ("prefill")."""

    def empty(batch: int) -> dict:
        dummy = jnp.zeros((batch, length), jnp.int32)
        return init_cache(
            lambda: model.apply(
                {"params": params}, dummy, jnp.ones_like(dummy), dummy, decode="prefill",
                mutable=["cache"],
            )
        )  # fmt: skip

    if context is None or not context.shape[0]:
        return empty(rows), "prefill"
    single = jnp.ones((1, length), jnp.int32)
    positions = jnp.arange(context.shape[0])[None]
    _, cache = run(empty(1), context[None], single, positions, "prefill")
    return take_rows(cache, jnp.zeros((rows,), jnp.int32)), "step"


class CausalDecoder:
    """Decoder-only models: the prompt fills the cache, then one token per step."""

    def __init__(self, model: nn.Module, max_new_tokens: int, context: Array | None = None):
        """`context` [D]: tokens before every row's prompt (k-shot demonstrations), run
        once at batch size 1 into the cache, which every row's prompt then extends."""
        self.model, self.max_new_tokens, self.context = model, max_new_tokens, context

    def _apply(self, params, cache, ids, mask, positions, phase):
        """Logits of each row's last position only (left padding: the last real token)."""
        last = jnp.full((ids.shape[0], 1), ids.shape[1] - 1, jnp.int32)
        out, variables = self.model.apply(
            {"params": params, "cache": cache},
            ids,
            mask,
            positions,
            decode=phase,
            logit_positions=last,
            mutable=["cache"],
        )
        return out.logits[:, 0], variables["cache"]

    def start(self, params, ids: Array, mask: Array) -> tuple[Array, dict]:
        batch, context = ids.shape[0], self.context
        shared = 0 if context is None else context.shape[0]
        full = jnp.concatenate(
            [
                jnp.ones((batch, shared), mask.dtype),
                mask,
                jnp.ones((batch, self.max_new_tokens), mask.dtype),
            ],
            1,
        )
        run = lambda *args: self._apply(params, *args)  # noqa: E731
        cache, phase = prompt_cache(self.model, params, run, context, batch, full.shape[1])
        # Positions count real tokens only, so left padding leaves them unchanged.
        positions = shared + jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
        logits, cache = self._apply(params, cache, ids, full, positions, phase)
        next_position = shared + mask.sum(1).astype(jnp.int32)
        return logits, {"cache": cache, "mask": full, "next_position": next_position}

    def step(self, params, tokens: Array, state: dict, t: Array) -> tuple[Array, dict]:
        positions = (state["next_position"] + t)[:, None]
        logits, cache = self._apply(
            params, state["cache"], tokens[:, None], state["mask"], positions, "step"
        )
        return logits, {**state, "cache": cache}


class EncoderDecoder:
    """T5: encode once; the decoder's self-attention is cached, and so (`cache_context`)
    are its cross-attention keys/values, projected from the encoder states at `start`
    and read back at every step. Without `cache_context` the state keeps the encoder
    states and every step projects the whole source again in every layer."""

    def __init__(self, model: nn.Module, max_new_tokens: int, cache_context: bool = True):
        self.model, self.max_new_tokens = model, max_new_tokens
        self.cache_context = cache_context

    def _decode(self, params, cache, tokens, state, encoded=None):
        """`encoded` None: the encoder states the state keeps, or the cache's keys/values."""
        (_, logits), variables = self.model.apply(
            {"params": params, "cache": cache},
            tokens,
            state.get("encoded") if encoded is None else encoded,
            state["encoder_mask"],
            state["mask"],
            method="decode",
            cache_context=self.cache_context,
            mutable=["cache"],
        )
        return logits[:, 0], variables["cache"]

    def start(self, params, ids: Array, mask: Array) -> tuple[Array, dict]:
        states, encoder_mask = self.model.apply(
            {"params": params}, ids, mask, keep_states=False, method="encode"
        )
        encoded, batch = states[-1], ids.shape[0]
        state = {
            "encoder_mask": encoder_mask,
            "mask": jnp.ones((batch, self.max_new_tokens), jnp.int32),
        }
        if not self.cache_context:
            state["encoded"] = encoded
        dummy = jnp.zeros((batch, self.max_new_tokens), jnp.int32)
        cache = init_cache(
            lambda: self.model.apply(
                {"params": params},
                dummy,
                encoded,
                encoder_mask,
                state["mask"],
                method="decode",
                cache_context=self.cache_context,
                mutable=["cache"],
            )
        )
        first = jnp.full((batch, 1), self.model.config.decoder_start_token_id, jnp.int32)
        logits, state["cache"] = self._decode(params, cache, first, state, encoded)
        return logits, state

    def step(self, params, tokens: Array, state: dict, t: Array) -> tuple[Array, dict]:
        logits, cache = self._decode(params, state["cache"], tokens[:, None], state)
        return logits, {**state, "cache": cache}


def decoder_for(
    model: nn.Module,
    max_new_tokens: int,
    cache_context: bool = True,
    context: Array | None = None,
) -> CausalDecoder | EncoderDecoder:
    family = hub.family_of(model)
    if len(family.stacks(model.config)) == 2:
        if context is not None:  # its encoder reads the demonstrations with each source
            raise ValueError("an encoder-decoder shares no context: put it in each source")
        return EncoderDecoder(model, max_new_tokens, cache_context)
    if family.causal:
        return CausalDecoder(model, max_new_tokens, context)
    raise ValueError(f"{type(model).__name__} cannot generate: it has no decoder")


# Cache leaves that hold one source's values: equal in every beam of a row.
PER_SOURCE = ("context_key", "context_value")


def take_rows(tree, index: Array, reorder: bool = False):
    """Takes rows `index` of every batched leaf (cache indices are scalars: kept). A
    scanned stack's cache leaves (under `layers`) have the layer axis first, the rows
    second. `reorder`: `index` only permutes beams within each row, so the per-source
    leaves are left as they are (the same values, no copy)."""

    def take(path, x):
        names = [getattr(key, "key", None) for key in path]
        if reorder and names[-1] in PER_SOURCE:
            return x
        axis = 1 if STACKED in names else 0
        return jnp.take(x, index, axis=axis) if x.ndim > axis else x

    return jax.tree_util.tree_map_with_path(take, tree)


# ------------------------------------------------------------------ token choice


def top_p_filter(logits: Array, top_p: float) -> Array:
    """Keeps the smallest set of most likely tokens whose probability reaches `top_p`
    (always at least one); the rest get -inf."""
    if top_p >= 1.0:
        return logits
    order = jnp.argsort(-logits, axis=-1)
    ranked = jnp.take_along_axis(logits, order, -1)
    probs = jax.nn.softmax(ranked, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    ranked = jnp.where(mass_before < top_p, ranked, -jnp.inf)
    inverse = jnp.argsort(order, axis=-1)
    return jnp.take_along_axis(ranked, inverse, -1)


def _token_picker(strategy: str, temperature: float, top_p: float) -> Callable:
    if strategy == "greedy":
        return lambda logits, key: jnp.argmax(logits, -1).astype(jnp.int32)
    if temperature <= 0:
        raise ValueError(f"sampling needs temperature > 0, got {temperature}")

    def sample(logits, key):
        filtered = top_p_filter(logits.astype(jnp.float32) / temperature, top_p)
        return jax.random.categorical(key, filtered, -1).astype(jnp.int32)

    return sample


def _one_at_a_time(decoder, params, ids, mask, *, pick, rng, eos, pad) -> Array:
    """Greedy or sampled decoding: one token per row per step, rows stop at EOS."""
    n = decoder.max_new_tokens
    logits, state = decoder.start(params, ids, mask)
    batch = ids.shape[0]
    carry = {
        "t": jnp.zeros((), jnp.int32),
        "logits": logits,
        "state": state,
        "tokens": jnp.full((batch, n), pad, jnp.int32),
        "done": jnp.zeros((batch,), bool),
        "rng": rng,
    }

    def choose(c):
        rng, key = jax.random.split(c["rng"])
        token = jnp.where(c["done"], pad, pick(c["logits"], key))
        tokens = jax.lax.dynamic_update_slice(c["tokens"], token[:, None], (0, c["t"]))
        return {**c, "tokens": tokens, "done": c["done"] | (token == eos), "rng": rng}

    def advance(c):
        c = choose(c)
        token = c["tokens"][:, c["t"]]
        logits, state = decoder.step(params, token, c["state"], c["t"])
        return {**c, "logits": logits, "state": state, "t": c["t"] + 1}

    carry = jax.lax.while_loop(lambda c: (c["t"] < n - 1) & ~jnp.all(c["done"]), advance, carry)
    return choose(carry)["tokens"]  # the last token needs no model call after it


def _beam_search(decoder, params, ids, mask, *, beams, length_penalty, eos, pad) -> Array:
    n = decoder.max_new_tokens
    batch = ids.shape[0]
    logits, state = decoder.start(params, ids, mask)
    expand = jnp.repeat(jnp.arange(batch), beams)
    logits, state = logits[expand], take_rows(state, expand)
    keep = 2 * beams  # transformers: max(2, 1 + number of EOS ids) * beams
    carry = {
        "t": jnp.zeros((), jnp.int32),
        "logits": logits,
        "state": state,
        "running": jnp.full((batch, beams, n), pad, jnp.int32),
        "running_scores": jnp.tile(
            jnp.where(jnp.arange(beams) == 0, 0.0, _NEG).astype(jnp.float32), (batch, 1)
        ),
        "finished": jnp.full((batch, beams, n), pad, jnp.int32),
        "finished_scores": jnp.full((batch, beams), _NEG, jnp.float32),
        "is_finished": jnp.zeros((batch, beams), bool),
        "improvable": jnp.ones((batch,), bool),  # the open beams may still beat a finished one
        "all_stopped": jnp.zeros((), bool),
        "origin": jnp.zeros((batch * beams,), jnp.int32),
    }

    def gather(values, index):  # values [batch, k, ...], index [batch, j]
        return jnp.take_along_axis(values, index.reshape(*index.shape, *[1] * (values.ndim - 2)), 1)

    def choose(c):
        t = c["t"]
        log_probs = jax.nn.log_softmax(c["logits"].astype(jnp.float32), -1)
        vocab = log_probs.shape[-1]
        totals = log_probs.reshape(batch, beams, vocab) + c["running_scores"][:, :, None]
        top_scores, top_index = jax.lax.top_k(totals.reshape(batch, beams * vocab), keep)
        source, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        sequences = gather(c["running"], source)
        sequences = jax.lax.dynamic_update_slice(sequences, token[:, :, None], (0, 0, t))
        stops = (token == eos) | (t + 1 >= n)
        # The best `beams` candidates that did not stop keep running.
        open_scores = top_scores + stops.astype(jnp.float32) * _NEG
        _, best_open = jax.lax.top_k(open_scores, beams)
        # Candidates among the top `beams` that stopped join the finished hypotheses.
        in_top = jnp.arange(keep) < beams
        just_finished = stops & in_top[None, :]
        scores = top_scores / ((t + 1).astype(jnp.float32) ** length_penalty)
        scores += (~c["improvable"])[:, None].astype(jnp.float32) * _NEG
        scores += (~just_finished).astype(jnp.float32) * _NEG
        merged_scores = jnp.concatenate([c["finished_scores"], scores], 1)
        _, best = jax.lax.top_k(merged_scores, beams)
        running_scores = gather(open_scores, best_open)
        origin = gather(source, best_open) + jnp.arange(batch)[:, None] * beams
        return {
            **c,
            "running": gather(sequences, best_open),
            "running_scores": running_scores,
            "finished": gather(jnp.concatenate([c["finished"], sequences], 1), best),
            "finished_scores": gather(merged_scores, best),
            "is_finished": gather(jnp.concatenate([c["is_finished"], just_finished], 1), best),
            "all_stopped": jnp.all(stops),
            "origin": origin.reshape(-1),
        }

    def still_improvable(c):
        # transformers' heuristic for early_stopping=False: the best open beam at its
        # current length against the worst finished hypothesis.
        length = (c["t"] + 1).astype(jnp.float32)
        best_open = c["running_scores"][:, 0] / length**length_penalty
        worst = jnp.where(
            c["is_finished"], jnp.min(c["finished_scores"], axis=1, keepdims=True), _NEG
        )
        return c["improvable"] & jnp.any(best_open[:, None] > worst, axis=1)

    def advance(c):
        c = choose(c)
        c = {**c, "improvable": still_improvable(c)}
        state = take_rows(c["state"], c["origin"], reorder=True)
        tokens = c["running"][:, :, c["t"]].reshape(-1)
        logits, state = decoder.step(params, tokens, state, c["t"])
        return {**c, "logits": logits, "state": state, "t": c["t"] + 1}

    carry = jax.lax.while_loop(
        lambda c: (c["t"] < n - 1) & jnp.any(c["improvable"]) & ~c["all_stopped"],
        advance,
        carry,
    )
    return choose(carry)["finished"][:, 0]


def generate(
    model: nn.Module,
    params,
    ids: Array,
    mask: Array,
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    strategy: str = "greedy",
    num_beams: int = 4,
    length_penalty: float = 1.0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    rng: Array | None = None,
    cache_context: bool = True,
    context: Array | None = None,
) -> Array:
    """[batch, max_new_tokens] generated token ids: EOS included where reached, then
    `pad_token_id`. Decoder-only prompts must be padded on the left. `cache_context`
    (T5): cross-attention keys/values projected once per source; False projects them at
    every step (the reference the cache is tested and timed against). `context` [D]
    (decoder-only): tokens before every row's prompt (k-shot demonstrations), encoded
    once into the cache that each row's prompt continues; the same tokens as prepending
    them to every prompt."""
    if strategy not in STRATEGIES:
        raise ValueError(f"decoding strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    decoder = decoder_for(model, max_new_tokens, cache_context, context)
    if strategy == "beam":
        return _beam_search(
            decoder,
            params,
            ids,
            mask,
            beams=num_beams,
            length_penalty=length_penalty,
            eos=eos_token_id,
            pad=pad_token_id,
        )
    return _one_at_a_time(
        decoder,
        params,
        ids,
        mask,
        pick=_token_picker(strategy, temperature, top_p),
        rng=jax.random.key(0) if rng is None else rng,
        eos=eos_token_id,
        pad=pad_token_id,
    )
