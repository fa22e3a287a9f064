"""Extractive question answering in SQuAD format (question, context, answers with
character offsets): start/end heads, long contexts in overlapping windows, SQuAD exact
match and F1.

    python -m ftjax.main --config configs/qa.py:model=minilm,method=full \
        --config.data.name=DIR_WITH_train.jsonl_validation.jsonl_test.jsonl --workdir runs/x

Windows overlap by a third (`task.doc_stride`, 128 of 384 as in the BERT paper).
The default data is the hub's `squad` (SQuAD v1.1); offline it fails at once with a clear
message, so point `data.name` at local SQuAD-format files. For SQuAD 2.0 data set
`--config.task.unanswerable=true` (and `data.name=squad_v2` online).
"""

from ftjax.training.config import base_config


def get_config(arg=None):
    config = base_config(arg, task="extractive_qa", data="squad")
    config.data.max_length = 384  # the usual SQuAD window (BERT paper)
    config.data.batch_size = 16
    config.data.eval_split = "validation"
    config.data.test_split = "validation"  # SQuAD has no public test split
    return config
