"""Text-to-text: a source text in, a target text out, trained with teacher forcing and
evaluated on generated text (exact match, ROUGE-L).

T5 (encoder-decoder) reads the source with its encoder and the target with its decoder
(`decoder_input_ids` = start token + target shifted right). A decoder-only model reads
prompt + target as one sequence and the loss counts the target tokens only; for
generation the prompt alone is fed, padded on the left. The prompt is
`task.source_prefix` + source + `task.separator`, or with `task.prompt_format="chat"` the
tokenizer's chat template around it (the user's turn, then the assistant's opened);
a long source is cut inside that frame.
Targets end with the model's EOS token. Classification becomes text-to-text with
`data.label_column` set: the target is the label's word (`task.label_words`, by default
the dataset's label names), and exact match is the accuracy.

Evaluation generates with `ftjax.models.generation.generate` (a KV cache, compiled inside the
eval step): greedy, beam search or sampling, at most `data.max_target_length` tokens.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.data.batching import IGNORE, Examples, Seq, coarse_buckets
from ftjax.models import generation
from ftjax.tasks import demonstrations, scoring
from ftjax.tasks.base import (
    RowChecker,
    Task,
    TaskError,
    labelled_token_losses,
    masked_mean,
    require_columns,
)


class TextToText(Task):
    """`share_context`: a decoder generates from its prompts' common head (k-shot
    demonstrations) encoded once (`generation.generate(context=...)`); off, each row
    encodes its whole prompt (the same tokens: the reference in tests and benchmarks)."""

    name = "seq2seq"
    share_context = True
    metrics = ("rouge_l", "exact_match")
    task_defaults = {
        "source_prefix": "",  # prepended to every source (T5's "summarize: ")
        "separator": "\n",  # decoder-only: between the source and the target
        # decoder-only: "plain" (source_prefix + source + separator) or "chat" (the
        # tokenizer's chat template: source_prefix + source as the user's turn, then the
        # assistant's turn opened; the target is the reply and ends with the model's EOS)
        "prompt_format": "plain",
        "label_words": (),  # classification as text: the word of each label
        "target_delimiter": "",  # before each target (" ": a natural continuation)
        # k-shot: demonstrations from the training split shown before every prompt
        "shots": 0,
        "shot_seed": 0,
        "shot_separator": "\n",
        "stop_at": (),  # a generated text is cut at the first of these strings
        "decoding": "greedy",  # greedy | beam | sample
        "num_beams": 4,
        "length_penalty": 1.0,
        "temperature": 1.0,
        "top_p": 1.0,
    }
    data_defaults = {
        "source_column": "source",
        "target_column": "target",
        "label_column": "",  # set: targets are the label words of this column
        "max_target_length": 32,
    }

    def __init__(self, config, tokenizer, info):
        super().__init__(config, tokenizer, info)
        if config.data.label_column and not config.task.label_words:
            if "label_names" not in self.info:
                raise TaskError(
                    f"config.data.label_column={config.data.label_column!r}: set "
                    "config.task.label_words (the dataset has no label names)"
                )
            config.task.label_words = tuple(self.info["label_names"])
        self.demos: list[tuple[str, str]] = []  # (source, target) shown before each prompt

    # ------------------------------------------------------------------ model

    @property
    def encoder_decoder(self) -> bool:
        return len(self.family.stacks(self.model.config)) == 2

    def check_model(self, family) -> None:
        if not family.causal and len(family.stacks(self.model.config)) < 2:
            raise TaskError(
                f"task seq2seq needs a decoder: {type(self.model).__name__} is an encoder "
                "(use T5 or a decoder-only model)"
            )
        if self.encoder_decoder and self.config.task.prompt_format != "plain":
            raise TaskError(
                f"config.task.prompt_format={self.config.task.prompt_format!r} is for "
                f"decoder-only models; {type(self.model).__name__} reads the source with its "
                "encoder (use 'plain' and config.task.source_prefix)"
            )

    @property
    def eos_id(self) -> int:
        return int(self.model.config.eos_token_id)

    def group_limits(self) -> dict[str, int]:
        d = self.config.data
        if self.encoder_decoder:
            return {"source": d.max_length, "target": d.max_target_length}
        return {"source": d.max_length + d.max_target_length, "prompt": d.max_length}

    def eval_widths(self) -> dict[str, list[int]]:
        """Doubling widths (`batching.coarse_buckets`): every (source / prompt, target)
        width pair compiles the whole generation loop again, which costs more than the
        padding the finer buckets save."""
        return {group: coarse_buckets(limit) for group, limit in self.group_limits().items()}

    # ------------------------------------------------------------------ data

    def encode(self, rows, split: str) -> Examples:
        d, t = self.config.data, self.config.task
        checker = RowChecker(split, d.on_bad_row)
        sources, targets = self._texts(rows, split, checker)
        keep = checker.good(len(sources))
        pad = self.tokenizer.pad_token_id
        shown = self.demo_text() if self.encoder_decoder else ""
        src, truncated = self._sources([shown + t.source_prefix + sources[i] for i in keep])
        tgt = self.tokenizer(
            [t.target_delimiter + targets[i] for i in keep], add_special_tokens=False
        )["input_ids"]
        tgt = [np.asarray([*ids, self.eos_id], np.int32) for ids in tgt]
        fits = []
        for j, ids in enumerate(tgt):
            if len(ids) > d.max_target_length:
                checker.reject(
                    int(keep[j]),
                    d.label_column or d.target_column,
                    f"target has {len(ids)} tokens with EOS, over data.max_target_length="
                    f"{d.max_target_length}",
                )
            else:
                fits.append(j)
        keep, src, tgt = keep[fits], [src[j] for j in fits], [tgt[j] for j in fits]
        truncated = int(truncated[fits].sum())
        references = [targets[i] for i in keep]
        report = checker.report(len(keep), truncated)
        if self.encoder_decoder:
            start = self.model.config.decoder_start_token_id
            arrays = {
                "input_ids": src,
                "decoder_input_ids": [
                    np.concatenate([[start], y[:-1]]).astype(np.int32) for y in tgt
                ],
                "labels": tgt,
            }
            layout = {
                "input_ids": Seq("source", pad),
                "decoder_input_ids": Seq("target", pad),
                "labels": Seq("target", IGNORE),
            }
        else:
            arrays = {
                "input_ids": [np.concatenate([x, y]) for x, y in zip(src, tgt, strict=True)],
                "labels": [
                    np.concatenate([np.full(len(x) - 1, IGNORE), y, [IGNORE]]).astype(np.int32)
                    for x, y in zip(src, tgt, strict=True)
                ],
                "prompt": src,
            }
            layout = {
                "input_ids": Seq("source", pad),
                "labels": Seq("source", IGNORE),
                "prompt": Seq("prompt", pad, left=True),
            }
        return Examples(arrays, layout, keep, host={"references": references}, report=report)

    def prepare_data(self, splits) -> None:
        """Draws `task.shots` demonstrations from the training split."""
        d = self.config.data
        self.demos = []
        if not self.config.task.shots:
            return
        checker = RowChecker(d.train_split, "drop")
        rows = demonstrations.training_rows(splits, self.config)
        sources, targets = self._texts(rows, d.train_split, checker)
        usable = [-1 if i in checker.bad else 0 for i in range(len(sources))]
        chosen = demonstrations.choose(usable, self.config, balanced=False)
        self.demos = [(sources[i], targets[i]) for i in chosen]

    def demo_text(self) -> str:
        """The demonstrations as plain text (each one: prompt, target, separator)."""
        t = self.config.task
        return "".join(
            t.source_prefix + source + t.separator + t.target_delimiter + target + t.shot_separator
            for source, target in self.demos
        )

    def _texts(self, rows, split: str, checker: RowChecker) -> tuple[list, list]:
        d, t = self.config.data, self.config.task
        columns = {"source_column": d.source_column}
        columns["label_column" if d.label_column else "target_column"] = (
            d.label_column or d.target_column
        )
        require_columns(rows, split, columns)
        sources = list(rows[d.source_column])
        if d.label_column:
            words = list(t.label_words)
            raw = list(rows[d.label_column])
            targets = []
            for i, label in enumerate(raw):
                ok = isinstance(label, (int, np.integer)) and 0 <= label < len(words)
                if not ok:
                    checker.reject(i, d.label_column, f"label {label!r} has no word in {words}")
                targets.append(words[label] if ok else "")
        else:
            targets = list(rows[d.target_column])
        for i, (source, target) in enumerate(zip(sources, targets, strict=True)):
            if not isinstance(source, str) or not source.strip():
                checker.reject(i, d.source_column, f"empty or missing source: {source!r}")
            elif not isinstance(target, str) or not target.strip():
                if i not in checker.bad:
                    checker.reject(i, d.target_column, f"empty or missing target: {target!r}")
        return sources, targets

    def _sources(self, texts: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """Token ids of the sources cut to data.max_length, keeping what frames them
        (T5's EOS; a decoder prompt's separator or chat turns); and which ones were cut."""
        limit, tokenizer = self.config.data.max_length, self.tokenizer
        if self.encoder_decoder:
            ids = tokenizer(texts, verbose=False)["input_ids"]
            tails = [x[-1:] if x and x[-1] in tokenizer.all_special_ids else [] for x in ids]
            bodies = [x[: len(x) - len(t)] for x, t in zip(ids, tails, strict=True)]
            heads = [[]] * len(ids)
        else:
            head, tail = self._prompt_frame()
            bodies = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
            heads, tails = [head] * len(bodies), [tail] * len(bodies)
        out, cut = [], []
        for head, body, tail in zip(heads, bodies, tails, strict=True):
            room = limit - len(head) - len(tail)
            if room < 1:
                raise TaskError(
                    f"config.data.max_length={limit} leaves no room for the source: the "
                    f"prompt frame alone takes {len(head) + len(tail)} tokens (with "
                    f"config.task.shots={self.config.task.shots} demonstrations)"
                )
            cut.append(len(body) > room)
            out.append(np.asarray([*head, *body[:room], *tail], np.int32))
        return out, np.array(cut, bool)

    def _prompt_frame(self) -> list[list[int]]:
        """Token ids before and after a decoder prompt's source text."""
        t, tokenizer = self.config.task, self.tokenizer
        if t.prompt_format == "plain":
            head = tokenizer(self.demo_text(), add_special_tokens=False)["input_ids"]
            return [head, tokenizer(t.separator, add_special_tokens=False)["input_ids"]]
        if t.prompt_format != "chat":
            raise TaskError(f"config.task.prompt_format={t.prompt_format!r}: use plain or chat")
        if not getattr(tokenizer, "chat_template", None):
            raise TaskError(
                f"config.task.prompt_format='chat': the tokenizer of {self.config.model.name} "
                "has no chat template; use prompt_format='plain'"
            )
        # The template rendered around a marker: the text before it opens the user's turn,
        # the text after closes it and opens the assistant's (the generation prompt).
        marker = "\x00source\x00"
        turns = []  # demonstrations as earlier exchanges
        for source, target in self.demos:
            turns += [
                {"role": "user", "content": t.source_prefix + source},
                {"role": "assistant", "content": target},
            ]
        rendered = tokenizer.apply_chat_template(
            [*turns, {"role": "user", "content": marker}],
            tokenize=False,
            add_generation_prompt=True,
        )
        if rendered.count(marker) != 1:
            raise TaskError(
                f"the chat template of {self.config.model.name} does not show the user's "
                "message verbatim once; use config.task.prompt_format='plain'"
            )
        before, after = rendered.split(marker)
        return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (before, after)]

    # ------------------------------------------------------------------ device

    def logits(self, params, batch, rng=None, positions=None) -> jax.Array:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.encoder_decoder:
            inputs["decoder_input_ids"] = batch["decoder_input_ids"]
            inputs["decoder_attention_mask"] = batch["decoder_attention_mask"]
        return self.model.apply(
            {"params": params},
            **inputs,
            deterministic=rng is None,
            rngs={"dropout": rng} if rng is not None else None,
            logit_positions=positions,
        ).logits

    def token_losses(self, params, batch, rng=None) -> tuple[jax.Array, jax.Array]:
        """(per-token cross-entropy, which tokens count) of the targets. A decoder's LM
        head runs only where a target token is predicted: each row's labelled positions
        (at most `data.max_target_length`, in order), not its prompt's."""
        if self.encoder_decoder or "segment_ids" in batch:  # T5: every position a target
            return labelled_token_losses(self.logits(params, batch, rng), batch)
        labels = batch["labels"]
        width = min(labels.shape[1], self.config.data.max_target_length)
        labelled = labels != IGNORE
        positions = jnp.argsort(~labelled, axis=1, stable=True)[:, :width]  # labelled first
        picked = jnp.take_along_axis(labels, positions, axis=1)
        picked = jnp.where(jnp.take_along_axis(labelled, positions, axis=1), picked, IGNORE)
        logits = self.logits(params, batch, rng, positions)
        return labelled_token_losses(logits, {**batch, "labels": picked})

    def loss(self, params, batch, rng=None):
        losses, counted = self.token_losses(params, batch, rng)
        loss, weight = masked_mean(losses, counted)
        return loss, {"weight": weight}

    def shared_context(self) -> np.ndarray:
        """Token ids at the start of every decoder prompt: the frame's head (the
        demonstrations, a chat template's opening turns); empty for T5, whose encoder
        reads them with each source, or with `share_context` off."""
        if self.encoder_decoder or not self.share_context:
            return np.zeros(0, np.int32)
        return np.asarray(self._prompt_frame()[0], np.int32)

    def generate(self, params, batch) -> jax.Array:
        t = self.config.task
        context = None
        if self.encoder_decoder:
            ids, mask = batch["input_ids"], batch["attention_mask"]
        else:
            ids, mask, context = without_head(
                batch["prompt"], batch["prompt_mask"], self.shared_context(),
                self.tokenizer.pad_token_id,
            )  # fmt: skip
        return generation.generate(
            self.model,
            params,
            ids,
            mask,
            context=context,
            max_new_tokens=self.config.data.max_target_length,
            strategy=t.decoding,
            num_beams=t.num_beams,
            length_penalty=t.length_penalty,
            temperature=t.temperature,
            top_p=t.top_p,
            rng=jax.random.key(0),
            eos_token_id=self.eos_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def eval_outputs(self, params, batch):
        losses, counted = self.token_losses(params, batch)
        weights = counted.astype(jnp.float32)
        sums = {"loss_sum": (losses * weights).sum(), "count": weights.sum()}
        return sums, {"generated": self.generate(params, batch)}

    # ------------------------------------------------------------------ host

    def decode(self, tokens: np.ndarray) -> str:
        tokens = [int(x) for x in tokens]
        if self.eos_id in tokens:
            tokens = tokens[: tokens.index(self.eos_id)]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in self.config.task.stop_at:
            text = text.split(stop)[0] if stop else text
        return text.strip()

    def finalize(self, sums, per_row, examples: Examples) -> dict[str, Any]:
        predictions = [self.decode(row) for row in per_row["generated"]]
        references = examples.host["references"]
        return {
            "rouge_l": scoring.rouge_l(predictions, references),
            "exact_match": scoring.exact_match(predictions, references),
            "samples": [
                {"prediction": p, "reference": r}
                for p, r in zip(predictions[:3], references[:3], strict=True)
            ],
        }


def without_head(
    ids: jax.Array, mask: jax.Array, head: np.ndarray, pad: int
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Left-padded prompts that all begin with `head` [D] (`_sources` cuts only the
    source), as the prompts after it, still left padded and D columns narrower, and the
    head as a shared context (None when empty). A row's real tokens end at the last
    column, so dropping the first D columns and masking each row's D head tokens
    (now the D columns before its rest) leaves the rest in place."""
    if not len(head):
        return ids, mask, None
    rest, width = ids[:, len(head) :], ids.shape[1] - len(head)
    real = mask.sum(1, keepdims=True) - len(head)
    kept = jnp.arange(width)[None, :] >= width - real
    return jnp.where(kept, rest, pad), kept.astype(mask.dtype), jnp.asarray(head)
