"""Named-entity recognition on WNUT-16 tweets (the bundled `wnut16` asset): a BIO tag per
word, entity-level F1 (seqeval semantics).

    python -m ftjax.main --config configs/ner.py:model=minilm,method=lora --workdir runs/x
"""

from ftjax.training.config import base_config


def get_config(arg=None):
    config = base_config(arg, task="token_classification", data="wnut16")
    config.train.epochs = 5  # 1,916 tweets; entities are rare, so a few more passes
    return config
