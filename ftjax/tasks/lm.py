"""Language modelling on a text column: loss and perplexity, causal or masked.

`task.objective` "causal" (decoders: every real token predicts the next) or "masked"
(BERT-style encoders: `task.mask_probability` of the real, non-special tokens are picked;
80% of them become [MASK], 10% a random token, 10% stay, and only they are predicted —
Devlin et al. 2019; `task.whole_word_mask` picks whole words, each word's tokens
together). `task.pack` puts the texts back to back in full rows of `data.max_length`.
"auto" picks by family. Masking is drawn on device from the step's random key, so every
epoch masks afresh and a resumed run masks as the original did;
evaluation masks with a fixed key, so its perplexity is comparable across checkpoints.

A masked LM needs an MLM head: checkpoints that have one (BertForMaskedLM) load it;
for one that has none (the MiniLM asset) it is initialised, its output projection tied
to the word embeddings, and a warning says so. T5 ("span_corruption", its "auto") is
trained by T5's span corruption (`span_corruption.py`): drawn once per example from
`task.noise_seed`, with the sentinels `task.sentinel_format` names.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax.data.batching import IGNORE, Examples, Seq
from ftjax.models import hub
from ftjax.tasks import scoring, span_corruption
from ftjax.tasks.base import (
    RowChecker,
    Task,
    TaskError,
    is_packed,
    labelled_token_losses,
    log,
    masked_mean,
    model_inputs,
    real_rows,
    require_columns,
)
from ftjax.tasks.classification import tokenize

OBJECTIVES = ("auto", "causal", "masked", "span_corruption")
EVAL_MASK_SEED = 0
# A masked LM predicts at most mean + this many standard deviations of a row's
# Binomial(length, mask_probability) picks (`prediction_capacity`).
CAPACITY_DEVIATIONS = 8.0


def prediction_capacity(length: int, probability: float) -> int:
    """How many positions of a row of `length` a masked LM predicts at most, so that its
    LM head (a vocabulary-wide matmul) runs on that many positions, not on all of them:
    the mean count plus `CAPACITY_DEVIATIONS` standard deviations, which a row exceeds
    with probability far below 1e-9 (whole-word masking, whose pieces share a draw, stays
    far inside it too). Picks past it are not made: those tokens stay as they are, as
    BERT's own pipeline caps them (`max_predictions_per_seq`)."""
    mean = length * probability
    spread = CAPACITY_DEVIATIONS * np.sqrt(length * probability * (1.0 - probability))
    return int(min(length, np.ceil(mean + spread) + 1))


def with_mlm_head(model, task: str, model_name: str):
    """`model` with its masked-LM head switched on (families that have one); a checkpoint
    without one gets it initialised, its output tied to the word embeddings, and a warning."""
    config = model.config
    if hasattr(config, "with_mlm_head") and not config.with_mlm_head:
        log.warning(
            "%s: %s has no masked-LM head; initialising one (dense + LayerNorm new, output "
            "tied to the word embeddings)",
            task,
            model_name,
        )
        model = type(model)(dataclasses.replace(config, with_mlm_head=True))
    return model


class LanguageModeling(Task):
    name = "language_modeling"
    metrics = ("perplexity",)
    lower_is_better = frozenset({"loss", "perplexity"})
    task_defaults = {
        "objective": "auto",
        "mask_probability": 0.15,
        "whole_word_mask": False,
        "pack": False,  # texts back to back, cut into full rows of data.max_length
        # span_corruption (T5): share of tokens dropped, mean span length, sentinel tokens
        "noise_density": 0.15,
        "mean_span": 3.0,
        "sentinel_format": "<extra_id_{}>",
        "noise_seed": 0,  # the corruption is drawn once per example, from this seed
    }
    data_defaults = {"text_column": "text"}

    def objective(self, model=None) -> str:
        """The objective for `model` (default: the attached one)."""
        chosen = self.config.task.objective
        if chosen not in OBJECTIVES:
            raise TaskError(f"config.task.objective={chosen!r}; known: {', '.join(OBJECTIVES)}")
        if chosen == "auto":
            model = model or self.model
            family = hub.family_of(model)
            if len(family.stacks(model.config)) == 2:
                return "span_corruption"
            return "causal" if family.causal else "masked"
        return chosen

    def prepare_model(self, model):
        if self.objective(model) == "masked":
            return with_mlm_head(model, self.name, self.config.model.name)
        return model

    def check_model(self, family) -> None:
        objective = self.objective()
        encoder_decoder = len(family.stacks(self.model.config)) == 2
        if encoder_decoder != (objective == "span_corruption"):
            raise TaskError(
                f"config.task.objective={objective!r} on {type(self.model).__name__}: span "
                "corruption is for encoder-decoders (T5), and T5 pre-trains by it alone"
            )
        if objective == "causal" and not family.causal:
            raise TaskError(
                "config.task.objective='causal' needs a causal decoder; "
                f"{type(self.model).__name__} is bidirectional (use 'masked')"
            )
        if objective == "masked" and not getattr(self.model.config, "with_mlm_head", False):
            raise TaskError(
                f"config.task.objective='masked': {type(self.model).__name__} has no "
                "masked-LM head (a causal decoder uses 'causal')"
            )

    def unreached(self) -> tuple[str, ...]:
        return ("pooler/.*",) if self.objective() == "masked" else ()

    def packing_refusal(self) -> str | None:
        if self.objective() == "span_corruption":
            return "span corruption has source and target sequences"
        if self.config.task.pack:
            return "task.pack already fills rows with texts back to back; use one of the two"
        if self.config.task.whole_word_mask and self.objective() == "masked":
            return "whole-word masking indexes words within each example"
        return None

    # ------------------------------------------------------------------ data

    def encode(self, rows, split: str) -> Examples:
        d = self.config.data
        require_columns(rows, split, {"text_column": d.text_column})
        checker = RowChecker(split, d.on_bad_row)
        texts = list(rows[d.text_column])
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                checker.reject(i, d.text_column, f"empty or missing text: {text!r}")
        keep = checker.good(len(texts))
        kept = [texts[i] for i in keep]
        whole_words = self.config.task.whole_word_mask and self.objective() == "masked"
        if self.objective() == "span_corruption":
            return self.span_corrupted(kept, keep, split, checker)
        if self.config.task.pack:
            ids, heads, rows = self.packed(kept)
            report = checker.report(len(ids), 0, packed_texts=len(kept))
            keep = keep[rows]
        else:
            ids, _, truncated = tokenize(self.tokenizer, kept, None, d.max_length)
            heads = self.word_heads(kept, ids, d.max_length) if whole_words else None
            report = checker.report(len(keep), truncated)
        arrays = {"input_ids": ids}
        layout = {"input_ids": Seq("source", self.tokenizer.pad_token_id)}
        if whole_words:
            arrays["word_head"], layout["word_head"] = heads, Seq("source")
        return Examples(arrays, layout, keep, report=report)

    def span_corrupted(self, texts, keep, split: str, checker) -> Examples:
        """T5 inputs with noise spans replaced by sentinels, and the spans as targets
        (`span_corruption.py`); each text cut so that its input fits data.max_length."""
        t, limit = self.config.task, self.config.data.max_length
        eos = int(self.model.config.eos_token_id)
        longest = max(n for n in range(2, 4 * limit) if self._lengths(n)[0] <= limit)
        sentinels = self.sentinel_ids(span_corruption.span_counts(longest, *self._noise())[1])
        pad = self.tokenizer.pad_token_id
        start = self.model.config.decoder_start_token_id
        arrays: dict[str, list] = {"input_ids": [], "decoder_input_ids": [], "labels": []}
        tokens_of = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        truncated = 0
        for row, tokens in zip(keep, tokens_of, strict=True):
            truncated += len(tokens) > longest
            tokens = np.asarray(tokens[:longest], np.int32)
            if len(tokens) < 2:
                tokens = np.concatenate([tokens, [eos]])[:2]  # nothing to corrupt otherwise
            rng = np.random.default_rng([t.noise_seed, zlib.crc32(split.encode()), int(row)])
            mask = span_corruption.noise_mask(len(tokens), *self._noise(), rng)
            inputs, targets = span_corruption.corrupt(tokens, mask, sentinels, eos)
            arrays["input_ids"].append(inputs)
            arrays["labels"].append(targets)
            arrays["decoder_input_ids"].append(
                np.concatenate([[start], targets[:-1]]).astype(np.int32)
            )
        layout = {
            "input_ids": Seq("source", pad),
            "decoder_input_ids": Seq("target", pad),
            "labels": Seq("target", IGNORE),
        }
        return Examples(arrays, layout, keep, report=checker.report(len(keep), truncated))

    def _noise(self) -> tuple[float, float]:
        return self.config.task.noise_density, self.config.task.mean_span

    def _lengths(self, n: int) -> tuple[int, int]:
        return span_corruption.corrupted_lengths(n, *self._noise())

    def sentinel_ids(self, count: int) -> np.ndarray:
        """Token ids of the first `count` sentinels (`task.sentinel_format`)."""
        fmt = self.config.task.sentinel_format
        names = [fmt.format(i) for i in range(count)]
        ids = self.tokenizer.convert_tokens_to_ids(names)
        unknown = [n for n, i in zip(names, ids, strict=True)
                   if i is None or i == self.tokenizer.unk_token_id]  # fmt: skip
        if unknown:
            raise TaskError(
                f"config.task.sentinel_format={fmt!r}: the tokenizer has no token "
                f"{unknown[0]!r} (span corruption needs {count} sentinels)"
            )
        return np.asarray(ids, np.int32)

    def group_limits(self) -> dict[str, int]:
        limit = self.config.data.max_length
        if self.objective() == "span_corruption":
            return {"source": limit, "target": limit}
        return {"source": limit}

    def word_heads(self, texts: list[str], ids: list[np.ndarray], limit: int | None):
        """Per token, the position of its word's first token (special tokens: their own),
        so whole-word masking decides once per word."""
        cut = {"truncation": True, "max_length": limit} if limit else {}
        encoded = self.tokenizer(texts, **cut)
        heads = []
        for i, row in enumerate(ids):
            words = encoded.word_ids(i)
            if len(words) != len(row):
                raise TaskError(f"task.whole_word_mask: row {i} tokenizes differently twice")
            first: dict[int, int] = {}
            heads.append(
                np.asarray(
                    [j if w is None else first.setdefault(w, j) for j, w in enumerate(words)],
                    np.int32,
                )
            )
        return heads

    def packed(self, texts: list[str]) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """(rows, word heads, first text of each row): every text's tokens back to back
        (a causal LM's each followed by EOS; a masked LM's with its [CLS] ... [SEP]), cut
        into rows of data.max_length; only the last row is shorter. Attention crosses
        text boundaries, as in GPT-style packing."""
        limit, causal = self.config.data.max_length, self.objective() == "causal"
        if causal:
            eos = getattr(self.model.config, "eos_token_id", None)
            if eos is None:
                raise TaskError("task.pack: the model has no EOS token to separate texts")
            pieces = [
                [*x, eos] for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            ]
        else:
            pieces = self.tokenizer(texts)["input_ids"]
        lengths = np.array([len(x) for x in pieces])
        stream = np.concatenate([np.asarray(x, np.int32) for x in pieces])
        heads = np.arange(len(stream), dtype=np.int32)
        if self.config.task.whole_word_mask and not causal:
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            local = self.word_heads(texts, pieces, None)
            heads = np.concatenate([h + start for h, start in zip(local, starts, strict=True)])
        cuts = range(0, len(stream), limit)
        # A word cut by a row boundary starts afresh in the next row.
        rows = [stream[c : c + limit] for c in cuts]
        row_heads = [np.maximum(heads[c : c + limit], c) - c for c in cuts]
        owner = np.searchsorted(np.cumsum(lengths), np.array(cuts), side="right")
        return rows, row_heads, owner

    # ------------------------------------------------------------------ device

    def token_losses(self, params, batch, rng=None) -> tuple[jax.Array, jax.Array]:
        """(per-token losses, which tokens count) of this batch."""
        ids, real = batch["input_ids"], (batch["attention_mask"] > 0) & real_rows(batch)
        mask_key, dropout_key = (
            jax.random.split(rng) if rng is not None else (jax.random.key(EVAL_MASK_SEED), None)
        )
        if self.objective() == "span_corruption":
            return self.target_losses(params, batch, dropout_key)
        read = None  # the positions whose logits are needed: all (causal)
        if self.objective() == "masked":
            capacity = prediction_capacity(ids.shape[1], self.config.task.mask_probability)
            inputs, picked = self.mask_tokens(ids, real, mask_key, batch.get("word_head"), capacity)
            # The picked positions first, in order, then unpicked ones to fill the rows.
            read = jnp.argsort((~picked).astype(jnp.int32), axis=1, stable=True)[:, :capacity]
            counted = jnp.take_along_axis(picked, read, axis=1)
            targets = jnp.take_along_axis(ids, read, axis=1)
        else:
            inputs, counted, targets = ids, real[:, 1:] & real[:, :-1], ids[:, 1:]
            if is_packed(batch):  # the next token must be of the same text
                segments = batch["segment_ids"]
                counted = counted & (segments[:, 1:] == segments[:, :-1])
        logits = self.model.apply(
            {"params": params},
            inputs,
            batch["attention_mask"],
            **model_inputs(batch, ()),
            deterministic=rng is None,
            rngs={"dropout": dropout_key} if dropout_key is not None else None,
            logit_positions=read,
        ).logits.astype(jnp.float32)
        if self.objective() == "causal":
            logits = logits[:, :-1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets), counted

    def target_losses(self, params, batch, rng) -> tuple[jax.Array, jax.Array]:
        """Span corruption: the decoder's losses on the target spans (teacher forcing)."""
        logits = self.model.apply(
            {"params": params},
            batch["input_ids"],
            batch["attention_mask"],
            batch["decoder_input_ids"],
            batch["decoder_attention_mask"],
            deterministic=rng is None,
            rngs={"dropout": rng} if rng is not None else None,
        ).logits
        return labelled_token_losses(logits, batch)

    def mask_tokens(
        self, ids, real, key, word_head=None, capacity: int | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """BERT's corruption: (inputs, which positions are predicted). With `word_head`
        (whole-word masking) every token of a word follows its first token's draw; with
        `capacity`, a row's picks after its first `capacity` are not made."""
        special = jnp.isin(ids, jnp.asarray(self.tokenizer.all_special_ids, ids.dtype))
        pick_key, kind_key, token_key = jax.random.split(key, 3)
        draws = jax.random.uniform(pick_key, ids.shape)
        if word_head is not None:
            draws = jnp.take_along_axis(draws, word_head, axis=1)
        picked = real & ~special & (draws < self.config.task.mask_probability)
        if capacity is not None:
            picked = picked & (jnp.cumsum(picked, axis=1) <= capacity)
        kind = jax.random.uniform(kind_key, ids.shape)
        noise = jax.random.randint(token_key, ids.shape, 0, self.model.config.vocab_size, ids.dtype)
        inputs = jnp.where(picked & (kind < 0.8), self.tokenizer.mask_token_id, ids)
        inputs = jnp.where(picked & (kind >= 0.8) & (kind < 0.9), noise, inputs)
        return inputs, picked

    def loss(self, params, batch, rng=None):
        losses, counted = self.token_losses(params, batch, rng)
        loss, weight = masked_mean(losses, counted)
        return loss, {"weight": weight}

    def eval_outputs(self, params, batch):
        losses, counted = self.token_losses(params, batch)
        weights = counted.astype(jnp.float32)
        return {"loss_sum": (losses * weights).sum(), "count": weights.sum()}, {}

    # ------------------------------------------------------------------ host

    def finalize(self, sums, per_row, examples: Examples) -> dict[str, Any]:
        return {
            "perplexity": scoring.perplexity(sums["loss_sum"], sums["count"]),
            "tokens": int(np.round(sums["count"])),
        }
