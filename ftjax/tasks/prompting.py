"""Classification by prompting: each label is a word (the verbalizer), and the model's
prediction is the label whose word it finds most likely after the prompt. No head: the
pretrained LM head scores, so the model is used as it is (zero-shot, k-shot in-context
learning, with `ftjax.evaluate --config ...,method=none` or `ftjax.prompt`), or fine-tuned
through its own vocabulary (PET-style: any method trains the cross-entropy over the
labels' scores).

The prompt is `task.template` filled from the row: `{text}` is `data.text_column`, `{pair}`
`data.text_pair_column`, `{label}` where the label word goes (`task.target_delimiter` +
word; the end of the template if absent). Scoring follows the family
(`ftjax.models.likelihood`):

- causal decoders (GPT-2, Llama): summed log-probability of the word's tokens after the
  prompt; in-context demonstrations are one shared context, encoded once;
- T5: the template (demonstrations first) is the encoder's input, the word the decoder's;
- BERT-style encoders: cloze (PET, Schick & Schütze 2021): the word's log-probability at
  a [MASK] in the `{label}` slot; a word of k tokens gets k [MASK]s, filled the most
  confident first, one pass each (PET's decoding). A checkpoint without an MLM head gets
  one initialised from the tied embeddings (warned).

`task.length_normalize` divides each word's score by its number of tokens.
`task.shots` > 0 prepends that many demonstrations from the training split (the whole
filled template, word included), drawn with `task.shot_seed`, balanced over labels or
not, joined by `task.shot_separator`. A prompt that does not fit `data.max_length` has its
`{text}` cut (counted as truncated); `task.on_overflow="drop_shots"` instead drops
demonstrations, last first, until every prompt fits whole. `task.calibrate` adds
`calibrated_*` metrics: label probabilities divided by those given content-free inputs
(`task.content_free`, averaged; Zhao et al. 2021), with the same demonstrations.
"""

from __future__ import annotations

import string
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax.data.batching import Examples, Seq, pad_batch
from ftjax.models import likelihood
from ftjax.tasks import demonstrations
from ftjax.tasks.base import RowChecker, Task, TaskError, log, masked_mean, require_columns
from ftjax.tasks.classification import classification_metrics
from ftjax.tasks.lm import with_mlm_head

SLOTS = ("text", "pair", "label")
OVERFLOW = ("truncate", "drop_shots")


class Prompting(Task):
    name = "prompting"
    metrics = ("accuracy", "macro_f1", "mcc")
    task_defaults = {
        "template": "{text}",
        "label_words": (),  # one per label; default: the dataset's label names
        "target_delimiter": " ",  # between the prompt and a label word
        "length_normalize": False,
        "shots": 0,
        "shot_seed": 0,
        "balanced_shots": True,
        "shot_separator": "\n\n",
        "on_overflow": "truncate",  # or "drop_shots"
        "calibrate": False,
        "content_free": ("N/A", "", "[MASK]"),
    }
    data_defaults = {"text_column": "text", "text_pair_column": "", "label_column": "label"}

    def __init__(self, config, tokenizer, info):
        super().__init__(config, tokenizer, info)
        t = config.task
        if not t.label_words:
            if "label_names" not in self.info:
                raise TaskError(
                    "config.task.label_words: set one word per label (the dataset has no "
                    "label names)"
                )
            t.label_words = tuple(self.info["label_names"])
        self.head_text, self.tail_text = self._parse_template()
        if t.on_overflow not in OVERFLOW:
            raise TaskError(f"config.task.on_overflow={t.on_overflow!r}: {' or '.join(OVERFLOW)}")
        self.context = np.zeros(0, np.int32)  # shared demonstrations (causal decoders)
        self.demo_text = ""  # the same, as text (T5, cloze: part of every input)
        self.shots_used = 0

    def _parse_template(self) -> tuple[str, str]:
        """The template's text before and after the {label} slot (end if absent)."""
        t, d = self.config.task, self.config.data
        fields = [f for _, f, _, _ in string.Formatter().parse(t.template) if f is not None]
        unknown = sorted(set(fields) - set(SLOTS))
        if unknown:
            raise TaskError(
                f"config.task.template={t.template!r}: unknown slot(s) {unknown}; slots are "
                "{text}, {pair} and {label}"
            )
        if fields.count("text") != 1:
            raise TaskError(
                f"config.task.template={t.template!r} must hold the input slot {{text}} once "
                f"(where data.text_column={d.text_column!r} goes)"
            )
        if ("pair" in fields) != bool(d.text_pair_column):
            raise TaskError(
                f"config.task.template={t.template!r} and config.data.text_pair_column="
                f"{d.text_pair_column!r}: a {{pair}} slot and a pair column go together"
            )
        if fields.count("label") > 1:
            raise TaskError(f"config.task.template={t.template!r}: at most one {{label}} slot")
        head, _, tail = t.template.partition("{label}")
        if "{text}" in tail or "{pair}" in tail:
            raise TaskError(
                f"config.task.template={t.template!r}: the {{label}} slot must come after "
                "{text} and {pair}"
            )
        return head, tail

    # ------------------------------------------------------------------ model

    @property
    def scorer(self) -> str:
        family = self.family
        if len(family.stacks(self.model.config)) == 2:
            return "encoder_decoder"
        return "causal" if family.causal else "masked"

    def prepare_model(self, model):
        return with_mlm_head(model, self.name, self.config.model.name)

    def check_model(self, family) -> None:
        if self.scorer == "masked" and not getattr(self.model.config, "with_mlm_head", False):
            raise TaskError(
                f"task prompting: {type(self.model).__name__} has no LM head to score words with"
            )
        if self.scorer != "masked" and self.tail_text.strip():
            raise TaskError(
                f"config.task.template={self.config.task.template!r}: a "
                f"{type(self.model).__name__} scores the label word as the prompt's "
                "continuation, so nothing may follow {label} (text after it is only for "
                "a masked LM's cloze)"
            )
        self.choices, self.choice_mask = self._encode_words()

    def _encode_words(self) -> tuple[np.ndarray, np.ndarray]:
        t = self.config.task
        masked = self.scorer == "masked"
        ids = []
        for label, word in enumerate(t.label_words):
            text = word if masked else t.target_delimiter + word
            tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not tokens:
                raise TaskError(f"config.task.label_words[{label}]={word!r} tokenizes to nothing")
            ids.append(tokens)
        width = max(len(x) for x in ids)
        choices = np.zeros((len(ids), width), np.int32)
        mask = np.zeros((len(ids), width), np.int32)
        for i, x in enumerate(ids):
            choices[i, : len(x)], mask[i, : len(x)] = x, 1
        return choices, mask

    def group_limits(self) -> dict[str, int]:
        if self.scorer == "causal":
            return {"prompt": self.query_room}
        return {"source": self.config.data.max_length}

    @property
    def query_room(self) -> int:
        """Tokens a causal decoder's query may take beside the context and a label word."""
        return self.config.data.max_length - len(self.context) - self.choices.shape[1]

    # ------------------------------------------------------------------ text

    def fill(self, text: str, pair: str | None) -> tuple[str, tuple[int, int]]:
        """The template before {label}, filled, and where `text` sits in it."""
        marker = "\x00text\x00"
        filled = self.head_text.format(text=marker, pair=pair if pair is not None else "")
        start = filled.index(marker)
        return filled.replace(marker, text), (start, start + len(text))

    def demonstration(self, text: str, pair: str | None, label: int) -> str:
        t = self.config.task
        prompt, _ = self.fill(text, pair)
        tail = self.tail_text.format(text=text, pair=pair or "")
        return prompt + t.target_delimiter + t.label_words[label] + tail

    def unit(self, text: str, pair: str | None) -> tuple[str, tuple[int, int]]:
        """The text the model reads for one row (causal: the query after the shared
        context; T5 and cloze: demonstrations, prompt and, for cloze, the slot and tail)."""
        prompt, span = self.fill(text, pair)
        if self.scorer == "causal":
            return prompt, span
        body = prompt
        if self.scorer == "masked":
            tail = self.tail_text.format(text=text, pair=pair or "")
            # as many [MASK]s as the longest word has tokens (PET's decoding)
            masks = self.tokenizer.mask_token * self.choices.shape[1]
            body += self.config.task.target_delimiter + masks + tail
        offset = len(self.demo_text)
        return self.demo_text + body, (span[0] + offset, span[1] + offset)

    def tokenize_fit(self, text: str, span: tuple[int, int], limit: int):
        """(ids, cut?) of `text` within `limit` tokens, cutting the end of `span` only;
        None when even an empty span does not fit."""
        special = self.scorer != "causal"
        encoded = self.tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        excess = len(ids) - limit
        if excess <= 0:
            return np.asarray(ids, np.int32), False
        inside = [
            i for i, (s, e) in enumerate(encoded["offset_mapping"])
            if e > s and s >= span[0] and e <= span[1]
        ]  # fmt: skip
        if len(inside) < excess:
            return None
        drop = set(inside[len(inside) - excess :])
        return np.asarray([x for i, x in enumerate(ids) if i not in drop], np.int32), True

    @property
    def unit_limit(self) -> int:
        return self.query_room if self.scorer == "causal" else self.config.data.max_length

    # ------------------------------------------------------------------ data

    def prepare_data(self, splits) -> None:
        """Draws the demonstrations from the training split (`task.shots` > 0)."""
        t, d = self.config.task, self.config.data
        self._set_demonstrations([])
        if not t.shots:
            return
        rows = demonstrations.training_rows(splits, self.config)
        texts, pairs, labels = self._columns(rows, d.train_split, RowChecker(d.train_split, "drop"))
        chosen = demonstrations.choose(labels, self.config, t.balanced_shots)
        shown = [(i, self.demonstration(texts[i], pairs[i] if pairs else None, labels[i]))
                 for i in chosen]  # fmt: skip
        self._set_demonstrations([text for _, text in shown[:1]])
        if self.unit_limit - self._frame_length() < 1:
            i, _ = shown[0]
            raise TaskError(
                f"demonstration row {i} of split {d.train_split!r} does not fit: with it "
                f"alone a prompt needs more than data.max_length={d.max_length} tokens "
                f"before any input text; raise data.max_length or shorten the template"
            )
        self._set_demonstrations([text for _, text in shown])
        if t.on_overflow == "drop_shots":
            longest = self._longest_unit(splits)
            while self.shots_used and self._frame_length() + longest > self.unit_limit:
                self._set_demonstrations([text for _, text in shown[: self.shots_used - 1]])
            if self.shots_used < t.shots:
                log.warning(
                    "task prompting: %d of %d demonstrations kept so that every prompt fits "
                    "data.max_length=%d whole",
                    self.shots_used, t.shots, d.max_length,
                )  # fmt: skip
        if self.unit_limit - self._frame_length() < 1:
            raise TaskError(
                f"config.task.shots={t.shots}: the demonstrations leave no room for the "
                f"input within data.max_length={d.max_length}; lower task.shots, raise "
                "data.max_length, or set task.on_overflow='drop_shots'"
            )

    def _set_demonstrations(self, texts: list[str]) -> None:
        sep = self.config.task.shot_separator
        self.shots_used = len(texts)
        self.demo_text = "".join(text + sep for text in texts)
        bos = self.tokenizer.bos_token_id
        adds_bos = getattr(self.tokenizer, "add_bos_token", False) and bos is not None
        ids = [bos] if adds_bos else []
        if self.demo_text:
            ids += self.tokenizer(self.demo_text, add_special_tokens=False)["input_ids"]
        self.context = np.asarray(ids, np.int32)

    def _frame_length(self) -> int:
        """Tokens a unit takes with an empty input text (template, demonstrations)."""
        text, _ = self.unit("", "" if self.config.data.text_pair_column else None)
        return len(self.tokenizer(text, add_special_tokens=self.scorer != "causal")["input_ids"])

    def _longest_unit(self, splits) -> int:
        """Tokens of the longest input text (and pair) among the evaluated splits."""
        d = self.config.data
        longest = 0
        for name in {d.train_split, d.eval_split, d.test_split} & set(splits):
            for column in filter(None, (d.text_column, d.text_pair_column)):
                if column in splits[name].column_names:
                    values = [v for v in splits[name][column] if isinstance(v, str)]
                    lengths = self.tokenizer(values, add_special_tokens=False)["input_ids"]
                    longest = max([longest, *map(len, lengths)])
        return longest

    def _columns(self, rows, split: str, checker: RowChecker):
        d = self.config.data
        require_columns(
            rows, split,
            {"text_column": d.text_column, "text_pair_column": d.text_pair_column,
             "label_column": d.label_column},
        )  # fmt: skip
        texts = list(rows[d.text_column])
        pairs = list(rows[d.text_pair_column]) if d.text_pair_column else None
        words = self.config.task.label_words
        labels = []
        for i, label in enumerate(rows[d.label_column]):
            for column, values in ((d.text_column, texts), (d.text_pair_column, pairs)):
                if values is not None and (not isinstance(values[i], str) or not values[i].strip()):
                    checker.reject(i, column, f"empty or missing text: {values[i]!r}")
            ok = isinstance(label, (int, np.integer)) and not isinstance(label, bool)
            if not ok or not 0 <= label < len(words):
                checker.reject(i, d.label_column, f"label {label!r} has no word in {list(words)}")
            labels.append(int(label) if ok and 0 <= label < len(words) else -1)
        labels = [-1 if i in checker.bad else x for i, x in enumerate(labels)]
        return texts, pairs, labels

    def encode(self, rows, split: str) -> Examples:
        d = self.config.data
        checker = RowChecker(split, d.on_bad_row)
        texts, pairs, labels = self._columns(rows, split, checker)
        keep = checker.good(len(texts))
        units, cut = self.encode_units([texts[i] for i in keep],
                                       [pairs[i] for i in keep] if pairs else None)  # fmt: skip
        examples = self._examples(units, keep)
        examples.arrays["labels"] = np.asarray([labels[i] for i in keep], np.int32)
        examples.report = checker.report(len(keep), int(cut.sum()), shots=self.shots_used)
        return examples

    def encode_units(self, texts, pairs) -> tuple[list[np.ndarray], np.ndarray]:
        units, cut = [], []
        for j, text in enumerate(texts):
            unit, span = self.unit(text, pairs[j] if pairs else None)
            fitted = self.tokenize_fit(unit, span, self.unit_limit)
            if fitted is None:
                raise TaskError(
                    f"config.data.max_length={self.config.data.max_length}: the template "
                    f"and {self.shots_used} demonstrations leave no room for input {text!r}"
                )
            units.append(fitted[0])
            cut.append(fitted[1])
        return units, np.asarray(cut, bool)

    def _examples(self, units: list[np.ndarray], rows: np.ndarray) -> Examples:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if self.scorer == "causal":
            return Examples({"query": units}, {"query": Seq("prompt", pad, left=True)}, rows)
        arrays: dict[str, Any] = {"input_ids": units}
        if self.scorer == "masked":
            mask_id = self.tokenizer.mask_token_id
            slot = self.choices.shape[1]  # the slot's masks are the last ones
            masks = [np.flatnonzero(u == mask_id) for u in units]
            if any(len(m) < slot for m in masks):
                raise TaskError(
                    f"the tokenizer of {self.config.model.name} does not keep {slot} "
                    f"consecutive {self.tokenizer.mask_token} tokens apart in the label slot"
                )
            arrays["mask_position"] = np.asarray([int(m[-slot]) for m in masks], np.int32)
        return Examples(arrays, {"input_ids": Seq("source", pad)}, rows)

    def content_free_batch(self) -> dict[str, np.ndarray]:
        """The content-free inputs (`task.content_free`) as one padded batch."""
        words = list(self.config.task.content_free)
        units, _ = self.encode_units(words, words if self.config.data.text_pair_column else None)
        examples = self._examples(units, np.arange(len(units)))
        widths = {g: [int(examples.group_lengths(g).max())] for g in examples.groups}
        return pad_batch(examples, np.arange(len(units)), len(units), widths)

    # ------------------------------------------------------------------ device

    def scores(self, params, batch, rng=None) -> jax.Array:
        """[batch, labels] log-likelihood of each label's word (per token when
        `task.length_normalize`)."""
        choices, choice_mask = jnp.asarray(self.choices), jnp.asarray(self.choice_mask)
        if self.scorer == "causal":
            out = likelihood.causal_choices(
                self.model, params, jnp.asarray(self.context), batch["query"],
                batch["prompt_mask"], choices, choice_mask, rng=rng,
            )  # fmt: skip
        elif self.scorer == "encoder_decoder":
            out = likelihood.encoder_decoder_choices(
                self.model, params, batch["input_ids"], batch["attention_mask"], choices,
                choice_mask, rng=rng,
            )  # fmt: skip
        else:
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            lengths = tuple(int(n) for n in self.choice_mask.sum(1))
            out = likelihood.masked_choices(
                self.model, params, inputs, batch["mask_position"], choices, lengths, rng=rng
            )
        if self.config.task.length_normalize:
            out = out / choice_mask.sum(1)
        return out

    def loss(self, params, batch, rng=None):
        losses = optax.softmax_cross_entropy_with_integer_labels(
            self.scores(params, batch, rng), batch["labels"]
        )
        loss, weight = masked_mean(losses, batch["example_mask"])
        return loss, {"weight": weight}

    def eval_outputs(self, params, batch):
        scores = self.scores(params, batch)
        weights = batch["example_mask"].astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(scores, batch["labels"])
        sums = {"loss_sum": (losses * weights).sum(), "count": weights.sum()}
        per_row = {"scores": scores}
        if self.config.task.calibrate:
            free = {k: jnp.asarray(v) for k, v in self.content_free_batch().items()}
            probs = jax.nn.softmax(self.scores(params, free), axis=-1).mean(0)
            # One vector for the whole evaluation, carried per row because per-row outputs
            # are what the runner gathers; finalize reads the first.
            per_row["content_free"] = jnp.broadcast_to(probs, scores.shape)
        return sums, per_row

    # ------------------------------------------------------------------ host

    def finalize(self, sums, per_row, examples: Examples) -> dict[str, Any]:
        scores = np.asarray(per_row["scores"], np.float64)
        labels = examples.arrays["labels"]
        metrics = classification_metrics(scores.argmax(1), labels)
        if self.config.task.calibrate:
            free = np.asarray(per_row["content_free"][0], np.float64)
            probs = np.exp(scores - scores.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            calibrated = (probs / free).argmax(1)
            for key, value in classification_metrics(calibrated, labels).items():
                metrics[f"calibrated_{key}"] = value
            metrics["content_free_probs"] = [float(p) for p in free]
        metrics["shots"] = self.shots_used
        return metrics
