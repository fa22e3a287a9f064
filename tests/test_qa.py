"""Extractive QA: windows and their labels, bad rows, n-best decoding, SQuAD 2.0 nulls.
(Training end to end is in tests/test_tasks.py.)"""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from ftjax.data.sources import SourceError
from ftjax.data.splits import load_splits
from ftjax.models import from_pretrained, load_tokenizer
from ftjax.tasks import DataRowError
from ftjax.training.config import standalone_task
from tests.helpers import synthetic
from tests.helpers.tiny import make_checkpoint

CONTEXT = "the film was shot in paris by john smith over one long summer night"


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    path = make_checkpoint(tmp_path_factory.mktemp("bert"), "bert")
    model, _ = from_pretrained(path)
    return model, load_tokenizer(path)


def qa(bert, **fields):
    model, tokenizer = bert
    return standalone_task("extractive_qa", model, tokenizer, **fields)


def row(question, context, texts, starts):
    return {"question": question, "context": context,
            "answers": {"text": list(texts), "answer_start": list(starts)}}  # fmt: skip


def test_windows_overlap_and_every_label_points_at_the_answer(bert):
    task = qa(bert, max_length=24, doc_stride=6)
    rows = synthetic.qa_rows(40, seed=3)
    examples = task.encode(datasets.Dataset.from_list(rows), "train")
    assert examples.report["windows"] > len(rows)  # long contexts were split
    assert examples.report["split_contexts"] == examples.report["windows"] - len(rows)
    labelled = 0
    for w, r in enumerate(examples.rows):
        assert len(examples.arrays["input_ids"][w]) <= 24
        start, end = examples.arrays["start_positions"][w], examples.arrays["end_positions"][w]
        if start == 0:
            assert end == 0
            continue
        offsets = examples.host["offsets"][w]
        context = rows[r]["context"]
        assert context[offsets[start, 0] : offsets[end, 1]] == rows[r]["answers"]["text"][0]
        labelled += 1
    # Every question has at least one window holding its (one-word) answer.
    assert labelled >= len(rows) and examples.report["truncated"] == 0
    assert {int(r) for r in examples.rows} == set(range(len(rows)))


def test_answers_longer_than_a_window_are_reported(bert):
    task = qa(bert, max_length=16, doc_stride=4)
    long_answer = "over one long summer night"
    rows = [
        row("who ?", CONTEXT, ["john smith"], [CONTEXT.index("john smith")]),
        row("when ?", CONTEXT * 1, [CONTEXT], [0]),  # the whole context: no window holds it
    ]
    examples = task.encode(datasets.Dataset.from_list(rows), "train")
    assert examples.report["truncated"] == 1 and examples.report["truncated_share"] == 0.5
    assert long_answer in CONTEXT


def test_bad_rows_are_named_or_dropped(bert):
    good = row("who ?", CONTEXT, ["john smith"], [CONTEXT.index("john smith")])
    shifted = row("who ?", CONTEXT, ["john smith"], [CONTEXT.index("john smith") + 1])
    empty = row("who ?", CONTEXT, [], [])
    bad = datasets.Dataset.from_list([good, shifted, empty, {**good, "question": " "}])
    with pytest.raises(
        DataRowError,
        match=r"split 'train', row 1, field 'answers': answer_start does not point at its "
        r"answer text: start 31, text 'john smith', the context has 'ohn smith ' there",
    ):
        qa(bert).encode(bad, "train")
    examples = qa(bert, on_bad_row="drop").encode(bad, "train")
    assert sorted({int(r) for r in examples.rows}) == [0]
    assert examples.report["dropped"] == {
        "answers: answer_start does not point at its answer text": 1,
        "answers: no answer (SQuAD 2.0 data": 1,
        "question: empty or missing question": 1,
    }
    # SQuAD 2.0: a question without an answer is data, labelled at the null position.
    examples = qa(bert, unanswerable=True, on_bad_row="drop").encode(bad, "train")
    assert sorted({int(r) for r in examples.rows}) == [0, 2]
    with pytest.raises(DataRowError, match="no column for config.data.answers_column='answers'"):
        qa(bert).encode(datasets.Dataset.from_list([{"question": "q", "context": "c"}]), "train")


def decode(task, examples, logits_by_window):
    per_row = {"start_logits": [], "end_logits": []}
    for w in range(len(examples.rows)):
        start, end = logits_by_window(w, examples.host["offsets"][w])
        per_row["start_logits"].append(start)
        per_row["end_logits"].append(end)
    return task.finalize({}, per_row, examples)


def test_decoding_takes_the_best_valid_span_across_windows(bert):
    task = qa(bert, max_length=16, doc_stride=4, max_answer_length=3)
    truth = "john smith"
    rows = [row("who ?", CONTEXT, [truth], [CONTEXT.index(truth)])]
    examples = task.encode(datasets.Dataset.from_list(rows), "validation")
    assert len(examples.rows) > 1
    holding = [
        w for w, offsets in enumerate(examples.host["offsets"])
        if {"john", "smith"} <= {CONTEXT[a:b] for a, b in offsets}
    ]  # fmt: skip

    def logits(w, offsets):
        # Every window likes its first context token a little; the answer's tokens a lot
        # in one window only; and an over-long span scores higher but is not allowed.
        start, end = np.full(len(offsets), -5.0), np.full(len(offsets), -5.0)
        context = np.flatnonzero(offsets[:, 0] >= 0)
        start[context[0]] = end[context[0]] = 1.0
        texts = [CONTEXT[a:b] for a, b in offsets]
        if w == holding[-1]:
            start[texts.index("john")], end[texts.index("smith")] = 6.0, 6.0
            if "the" in texts[: texts.index("john")]:
                start[texts.index("the")] = 9.0  # "the ... smith" is longer than 3 tokens
        start[0] = end[0] = 20.0  # the null position never wins without unanswerable
        return start, end

    assert decode(task, examples, logits) == {"f1": 1.0, "exact_match": 1.0, "questions": 1}


def test_unanswerable_questions_use_the_null_threshold(bert):
    rows = [
        row("who ?", CONTEXT, [], []),
        row("who ?", CONTEXT, ["paris"], [CONTEXT.index("paris")]),
    ]
    task = qa(bert, unanswerable=True, null_threshold=0.0)
    examples = task.encode(datasets.Dataset.from_list(rows), "validation")

    def logits(w, offsets, null_score):
        texts = [CONTEXT[a:b] for a, b in offsets]
        start, end = np.zeros(len(offsets)), np.zeros(len(offsets))
        start[texts.index("paris")] = end[texts.index("paris")] = 2.0  # span score 4
        start[0] = end[0] = null_score / 2
        return start, end

    # Null (6) beats the span (4) by more than 0: both predict "", right for row 0 only.
    high = decode(task, examples, lambda w, o: logits(w, o, 6.0))
    assert high == {"f1": 0.5, "exact_match": 0.5, "questions": 2}
    low = decode(task, examples, lambda w, o: logits(w, o, 2.0))
    assert low == {"f1": 0.5, "exact_match": 0.5, "questions": 2}  # both "paris"
    task.config.task.null_threshold = 3.0  # now 6 - 4 = 2 is not enough: "paris" again
    assert decode(task, examples, lambda w, o: logits(w, o, 6.0))["exact_match"] == 0.5


def test_hub_squad_fails_at_once_offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SourceError, match="'squad' looks like a Hugging Face hub id"):
        load_splits("squad")
