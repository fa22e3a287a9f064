"""Extractive question answering, SQuAD format: the answer is a span of the context.

Rows hold `question`, `context` and `answers: {"text": [...], "answer_start": [...]}`
(character offsets into the context). Each question + context pair is tokenized as a
pair (BERT: [CLS] question [SEP] context [SEP] with token types) and a long context is
split into windows of `data.max_length` tokens that overlap by `task.doc_stride` tokens;
every window is one training row. The head gives each token a start and an end logit;
a window that does not hold the whole (first) answer, and an unanswerable question,
point both at position 0, the "null" answer (Devlin et al. 2019).

Decoding per question, over all its windows: the `task.n_best` best starts and ends
inside the context, end >= start, at most `task.max_answer_length` tokens, scored by
start + end logit; the best span's characters are the prediction. With
`task.unanswerable` (SQuAD 2.0) the prediction is empty when the null score beats the
best span by more than `task.null_threshold`. Exact match and F1 follow the official
SQuAD evaluation (`scoring.squad_scores`), reported as fractions.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from ftjax.data.batching import Examples, Seq
from ftjax.tasks import scoring
from ftjax.tasks.base import RowChecker, TaskError, masked_mean, require_columns
from ftjax.tasks.token_head import TokenHeadTask

NULL = 0  # the position both logits point at when a window holds no answer


class ExtractiveQA(TokenHeadTask):
    name = "extractive_qa"
    metrics = ("f1", "exact_match")
    task_defaults = {
        **TokenHeadTask.task_defaults,
        "doc_stride": 0,  # tokens shared by consecutive windows; 0: a third of max_length
        "max_answer_length": 30,  # tokens
        "n_best": 20,
        "unanswerable": False,  # SQuAD 2.0: questions may have no answer
        "null_threshold": 0.0,
    }
    data_defaults = {
        "question_column": "question",
        "context_column": "context",
        "answers_column": "answers",
    }
    outputs = 2

    # ------------------------------------------------------------------ data

    @property
    def doc_stride(self) -> int:
        return self.config.task.doc_stride or self.config.data.max_length // 3

    def encode(self, rows, split: str) -> Examples:
        d, t = self.config.data, self.config.task
        require_columns(
            rows,
            split,
            {"question_column": d.question_column, "context_column": d.context_column,
             "answers_column": d.answers_column},
        )  # fmt: skip
        if not getattr(self.tokenizer, "is_fast", False):
            raise TaskError("task extractive_qa needs a fast tokenizer (character offsets)")
        if self.doc_stride >= d.max_length // 2:
            raise TaskError(
                f"config.task.doc_stride={t.doc_stride} must be under half of "
                f"config.data.max_length={d.max_length}"
            )
        checker = RowChecker(split, d.on_bad_row)
        questions, contexts = list(rows[d.question_column]), list(rows[d.context_column])
        answers = [
            self._check_row(i, questions[i], contexts[i], a, checker)
            for i, a in enumerate(rows[d.answers_column])
        ]
        keep = checker.good(len(questions))
        windows = self._windows([questions[i] for i in keep], [contexts[i] for i in keep])
        ids, types, starts, ends, offsets, window_rows = [], [], [], [], [], []
        placed = np.zeros(len(keep), bool)
        for w in range(len(windows["input_ids"])):
            j = windows["overflow_to_sample_mapping"][w]
            sequence = windows.sequence_ids(w)
            pairs = zip(windows["offset_mapping"][w], sequence, strict=True)
            window_offsets = np.array([o if s == 1 else (-1, -1) for o, s in pairs], np.int32)
            start, end = self._span_in_window(answers[keep[j]], window_offsets)
            placed[j] |= start != NULL
            ids.append(np.asarray(windows["input_ids"][w], np.int32))
            if "token_type_ids" in windows:
                types.append(np.asarray(windows["token_type_ids"][w], np.int32))
            starts.append(start)
            ends.append(end)
            offsets.append(window_offsets)
            window_rows.append(keep[j])
        answered = np.array([bool(answers[i]) for i in keep])
        report = checker.report(
            len(keep),
            int((answered & ~placed).sum()),  # answers no window holds whole
            windows=len(ids),
            split_contexts=int(len(ids) - len(keep)),
        )
        report["truncated_what"] = "answers no window holds whole (longer than a window)"
        pad = self.tokenizer.pad_token_id
        arrays: dict[str, Any] = {
            "input_ids": ids,
            "start_positions": np.asarray(starts, np.int32),
            "end_positions": np.asarray(ends, np.int32),
        }
        layout = {"input_ids": Seq("source", pad)}
        if types and self.model_takes("token_type_ids"):
            arrays["token_type_ids"] = types
            layout["token_type_ids"] = Seq("source", 0)
        host = {
            "offsets": offsets,
            "contexts": {int(i): contexts[i] for i in keep},
            "answers": {int(i): [text for text, _ in answers[i]] for i in keep},
        }
        return Examples(arrays, layout, np.asarray(window_rows, np.int64), host, report)

    def _windows(self, questions: list[str], contexts: list[str]):
        return self.tokenizer(
            questions,
            contexts,
            truncation="only_second",
            max_length=self.config.data.max_length,
            stride=self.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            verbose=False,
        )

    def _check_row(self, i, question, context, answers, checker: RowChecker) -> list:
        """[(text, start)] of a good row ([] when it has no answer); rejects a bad one."""
        d = self.config.data
        if not isinstance(question, str) or not question.strip():
            checker.reject(i, d.question_column, f"empty or missing question: {question!r}")
            return []
        if not isinstance(context, str) or not context.strip():
            checker.reject(i, d.context_column, f"empty or missing context: {context!r}")
            return []
        n_question = len(self.tokenizer(question, add_special_tokens=False)["input_ids"])
        if n_question > d.max_length // 2:
            checker.reject(
                i, d.question_column,
                f"question of {n_question} tokens leaves no room for the context in "
                f"data.max_length={d.max_length}",
            )  # fmt: skip
            return []
        if not isinstance(answers, dict) or not {"text", "answer_start"} <= set(answers):
            checker.reject(
                i, d.answers_column, f"not {{text: [...], answer_start: [...]}}: {answers!r}"[:200]
            )
            return []
        texts, starts = list(answers["text"]), list(answers["answer_start"])
        if len(texts) != len(starts):
            checker.reject(
                i, d.answers_column, f"{len(texts)} texts but {len(starts)} answer_starts"
            )
            return []
        if not texts and not self.config.task.unanswerable:
            checker.reject(
                i, d.answers_column,
                "no answer (SQuAD 2.0 data: set config.task.unanswerable=true)",
            )  # fmt: skip
            return []
        for text, start in zip(texts, starts, strict=True):
            found = context[start : start + len(text)] if isinstance(start, int) else None
            if not isinstance(text, str) or not text or found != text:
                checker.reject(
                    i, d.answers_column,
                    f"answer_start does not point at its answer text: start {start!r}, "
                    f"text {text!r}, the context has {found!r} there",
                )  # fmt: skip
                return []
        return list(zip(texts, starts, strict=True))

    @staticmethod
    def _span_in_window(answers: list, offsets: np.ndarray) -> tuple[int, int]:
        """Token positions of the first answer when this window holds all of it."""
        if not answers:
            return NULL, NULL
        text, start_char = answers[0]
        end_char = start_char + len(text)
        context = np.flatnonzero(offsets[:, 0] >= 0)
        if (
            not len(context)
            or offsets[context[0], 0] > start_char
            or offsets[context[-1], 1] < end_char
        ):
            return NULL, NULL
        first = context[offsets[context, 1] > start_char][0]
        last = context[offsets[context, 0] < end_char][-1]
        return int(first), int(last)

    # ------------------------------------------------------------------ device

    def _losses(self, params, batch, rng=None):
        logits = self.logits(params, batch, rng)
        real = batch["attention_mask"] > 0
        logits = jnp.where(real[:, :, None], logits, jnp.finfo(jnp.float32).min)
        start, end = logits[..., 0], logits[..., 1]
        losses = (
            optax.softmax_cross_entropy_with_integer_labels(start, batch["start_positions"])
            + optax.softmax_cross_entropy_with_integer_labels(end, batch["end_positions"])
        ) / 2
        return losses, start, end

    def loss(self, params, batch, rng=None):
        losses, _, _ = self._losses(params, batch, rng)
        loss, weight = masked_mean(losses, batch["example_mask"])
        return loss, {"weight": weight}

    def eval_outputs(self, params, batch):
        losses, start, end = self._losses(params, batch)
        weights = batch["example_mask"].astype(jnp.float32)
        sums = {"loss_sum": (losses * weights).sum(), "count": weights.sum()}
        return sums, {"start_logits": start, "end_logits": end}

    # ------------------------------------------------------------------ host

    def finalize(self, sums, per_row, examples: Examples) -> dict[str, Any]:
        best: dict[int, tuple[float, str]] = {}
        null: dict[int, float] = {}
        for w, row in enumerate(examples.rows):
            row = int(row)
            offsets = examples.host["offsets"][w]
            start = np.asarray(per_row["start_logits"][w])[: len(offsets)]
            end = np.asarray(per_row["end_logits"][w])[: len(offsets)]
            null[row] = min(null.get(row, np.inf), float(start[NULL] + end[NULL]))
            span = self.best_span(start, end, offsets)
            if span is not None and span[0] > best.get(row, (-np.inf, ""))[0]:
                score, (first, last) = span
                context = examples.host["contexts"][row]
                best[row] = (score, context[offsets[first, 0] : offsets[last, 1]])
        rows = list(examples.host["contexts"])
        predictions = []
        for row in rows:
            score, text = best.get(row, (-np.inf, ""))
            if (
                self.config.task.unanswerable
                and null[row] - score > self.config.task.null_threshold
            ):
                text = ""
            predictions.append(text)
        scores = scoring.squad_scores(predictions, [examples.host["answers"][r] for r in rows])
        return {**scores, "questions": len(rows)}

    def best_span(self, start, end, offsets) -> tuple[float, tuple[int, int]] | None:
        """(score, (first, last token)) of the best valid span in one window, or None."""
        t = self.config.task
        in_context = offsets[:, 0] >= 0
        starts = [i for i in np.argsort(-start)[: t.n_best] if in_context[i]]
        ends = [i for i in np.argsort(-end)[: t.n_best] if in_context[i]]
        found = None
        for i in starts:
            for j in ends:
                if i <= j < i + t.max_answer_length:
                    score = float(start[i] + end[j])
                    if found is None or score > found[0]:
                        found = (score, (int(i), int(j)))
        return found
