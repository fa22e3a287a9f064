"""Token classification (NER): a tag for every word, entity-level F1.

Rows hold a list of words (`data.tokens_column`) and one BIO tag per word
(`data.tags_column`, tag names or indices into `data.label_names`). Each word's tag is
the label of its first sub-word; the other sub-words and special tokens are ignored by
the loss. Predictions are read back at each word's first sub-word (a word cut off by
`data.max_length` is predicted "O", and the cut is reported), then scored by entities
with seqeval's semantics (`ftjax.tasks.scoring.entity_scores`). The head reads every
token's state (`tasks/token_head.py`), so frozen-feature NER is `method=probe`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from ftjax.data.batching import IGNORE, Examples, Seq
from ftjax.tasks import scoring
from ftjax.tasks.base import (
    RowChecker,
    TaskError,
    labelled_token_losses,
    log,
    masked_mean,
    require_columns,
)
from ftjax.tasks.token_head import TokenHeadTask

OUTSIDE = "O"


def first_subwords(word_ids: np.ndarray) -> dict[int, int]:
    """{word index: position of its first sub-word} (-1 marks special tokens)."""
    first: dict[int, int] = {}
    for position, w in enumerate(word_ids):
        if w >= 0 and w not in first:
            first[int(w)] = position
    return first


class TokenClassification(TokenHeadTask):
    name = "token_classification"
    metrics = ("entity_f1", "entity_precision", "entity_recall", "word_accuracy")
    data_defaults = {"tokens_column": "tokens", "tags_column": "tags", "label_names": ()}

    def __init__(self, config, tokenizer, info):
        super().__init__(config, tokenizer, info)
        if not config.data.label_names and self.info.get("task") == "token_classification":
            config.data.label_names = tuple(self.info["label_names"])

    @property
    def tags(self) -> list[str]:
        return list(self.config.data.label_names)

    @property
    def outputs(self) -> int:
        return len(self.tags)

    # ------------------------------------------------------------------ data

    def encode(self, rows, split: str) -> Examples:
        d = self.config.data
        require_columns(
            rows, split, {"tokens_column": d.tokens_column, "tags_column": d.tags_column}
        )
        if not getattr(self.tokenizer, "is_fast", False):
            raise TaskError("task token_classification needs a fast tokenizer (word ids)")
        words_of, tags_of = list(rows[d.tokens_column]), list(rows[d.tags_column])
        if not self.tags:
            self._derive_tags(tags_of, split)
        checker = RowChecker(split, d.on_bad_row)
        gold = [self._check_row(i, words_of[i], tags_of[i], checker) for i in range(len(rows))]
        keep = checker.good(len(rows))
        words = [list(words_of[i]) for i in keep]
        enc = self.tokenizer(words, is_split_into_words=True, truncation=False, verbose=False)
        long = [j for j, ids in enumerate(enc["input_ids"]) if len(ids) > d.max_length]
        cut = (
            self.tokenizer(
                [words[j] for j in long],
                is_split_into_words=True,
                truncation=True,
                max_length=d.max_length,
            )
            if long
            else None
        )
        ids, labels, word_ids, lost_words = [], [], [], 0
        for j, i in enumerate(keep):
            source = cut if j in long else enc
            k = long.index(j) if j in long else j
            row_ids = np.asarray(source["input_ids"][k], np.int32)
            row_words = np.array([-1 if w is None else w for w in source.word_ids(k)], np.int32)
            first = first_subwords(row_words)
            row_labels = np.full(len(row_ids), IGNORE, np.int32)
            for w, position in first.items():
                row_labels[position] = gold[i][w]
            lost_words += len(words[j]) - len(first)
            ids.append(row_ids)
            labels.append(row_labels)
            word_ids.append(row_words)
        gold_tags = [[self.tags[t] for t in gold[i]] for i in keep]
        report = checker.report(len(keep), len(long), words_cut=lost_words)
        return Examples(
            {"input_ids": ids, "labels": labels},
            {
                "input_ids": Seq("source", self.tokenizer.pad_token_id),
                "labels": Seq("source", IGNORE),
            },
            keep,
            host={"word_ids": word_ids, "gold": gold_tags},
            report=report,
        )

    def _derive_tags(self, tags_of, split: str) -> None:
        found = sorted(
            {t for tags in tags_of if isinstance(tags, list) for t in tags if isinstance(t, str)}
        )
        if not found:
            raise TaskError(
                "config.data.label_names is empty and the tags are not names: list the tag set"
            )
        names = [OUTSIDE] + [t for t in found if t != OUTSIDE]
        log.info("token_classification: tag set from split %s: %s", split, names)
        self.config.data.label_names = tuple(names)

    def _check_row(self, i: int, words, tags, checker: RowChecker) -> list[int]:
        d = self.config.data
        if (
            not isinstance(words, list)
            or not words
            or not all(isinstance(w, str) and w for w in words)
        ):
            checker.reject(i, d.tokens_column, f"not a non-empty list of words: {words!r}"[:200])
            return []
        if not isinstance(tags, list) or len(tags) != len(words):
            n = len(tags) if isinstance(tags, list) else tags
            checker.reject(i, d.tags_column, f"{n} tags for {len(words)} words")
            return []
        ids = []
        for position, tag in enumerate(tags):
            if isinstance(tag, str) and tag in self.tags:
                ids.append(self.tags.index(tag))
            elif isinstance(tag, (int, np.integer)) and 0 <= tag < len(self.tags):
                ids.append(int(tag))
            else:
                checker.reject(
                    i,
                    d.tags_column,
                    f"tag {tag!r} (word {position}) not in the tag set {self.tags}",
                )
                return []
        return ids

    def packing_refusal(self) -> str | None:
        return None  # per-token labels pack with their tokens

    # ------------------------------------------------------------------ device

    def loss(self, params, batch, rng=None):
        losses, labelled = labelled_token_losses(self.logits(params, batch, rng), batch)
        loss, weight = masked_mean(losses, labelled)
        return loss, {"weight": weight}

    def eval_outputs(self, params, batch):
        logits = self.logits(params, batch)
        losses, labelled = labelled_token_losses(logits, batch)
        predictions = jnp.argmax(logits, -1)
        weights = labelled.astype(jnp.float32)
        sums = {
            "loss_sum": (losses * weights).sum(),
            "count": weights.sum(),
            "correct": ((predictions == batch["labels"]) * weights).sum(),
        }
        return sums, {"predictions": predictions}

    # ------------------------------------------------------------------ host

    def finalize(self, sums, per_row, examples: Examples) -> dict[str, Any]:
        predicted = []
        for row, word_ids, gold in zip(
            per_row["predictions"], examples.host["word_ids"], examples.host["gold"], strict=True
        ):
            tags = [OUTSIDE] * len(gold)
            for w, position in first_subwords(word_ids).items():
                tags[w] = self.tags[int(row[position])]
            predicted.append(tags)
        scores = scoring.entity_scores(examples.host["gold"], predicted)
        return {
            "entity_f1": scores["f1"],
            "entity_precision": scores["precision"],
            "entity_recall": scores["recall"],
            "word_accuracy": sums["correct"] / max(sums["count"], 1.0),
        }
