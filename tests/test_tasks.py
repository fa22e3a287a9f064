"""Classification, regression, NER and QA end to end on tiny models of each family
they make sense for; `ftjax.evaluate` reproduces every metric from the workdir."""

from __future__ import annotations

import pytest

from tests.helpers import synthetic
from tests.helpers.runs import (
    NER_FIELDS,
    QA_FIELDS,
    run_and_reproduce,
    tiny_run_config,
)
from tests.helpers.tiny import write_splits

E2E = [
    ("sentiment", "bert", synthetic.sentiment_rows, {}, "accuracy", 0.85),
    ("sentiment", "gpt2", synthetic.sentiment_rows, {}, "accuracy", 0.85),
    ("sentiment", "t5", synthetic.sentiment_rows, {}, "accuracy", 0.85),
    (
        "sentiment",
        "bert",
        synthetic.pair_rows,
        # Reading the pair takes longer to learn: at 6 epochs the loss is still 0.16, and
        # a run's rounding can tip a few borderline rows (seen once: 0.83).
        {
            "data__text_column": "premise",
            "data__text_pair_column": "hypothesis",
            "train__epochs": 12,
        },
        "accuracy",
        0.85,
    ),
    ("sentiment_regression", "bert", synthetic.sentiment_rows, {}, "pearson", 0.8),
    ("sentiment_regression", "gpt2", synthetic.sentiment_rows, {}, "pearson", 0.8),
    ("ner", "bert", synthetic.ner_rows, NER_FIELDS, "entity_f1", 0.7),
    ("ner", "t5", synthetic.ner_rows, NER_FIELDS, "entity_f1", 0.7),
    ("qa", "bert", synthetic.qa_rows, QA_FIELDS, "exact_match", 0.85),
    ("qa", "t5", synthetic.qa_rows, QA_FIELDS, "exact_match", 0.85),
]


@pytest.mark.parametrize(
    "config_name, family, rows, fields, metric, floor",
    E2E,
    ids=[
        f"{e[0]}-{e[1]}{'-' + e[2].__name__[:-5] if e[2] is not synthetic.sentiment_rows else ''}"
        for e in E2E
    ],
)
@pytest.mark.slow
def test_task_trains_end_to_end_well_above_chance(
    tmp_path, shallow_checkpoints, config_name, family, rows, fields, metric, floor
):
    data = write_splits(tmp_path / "data", synthetic.splits_of(rows))
    config = tiny_run_config(config_name, shallow_checkpoints[family], data, **fields)
    test = run_and_reproduce(config, tmp_path / "run")
    assert test[metric] >= floor, test
