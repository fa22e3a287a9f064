"""Binary sentiment of movie-review sentences (the bundled `sentiment` asset).

    python -m ftjax.main --config configs/sentiment.py:model=minilm,method=lora --workdir runs/x

Arguments: model= (asset, folder or hub id; default minilm), method= (see
ftjax.methods; default lora), dtype= (float32 default, or bfloat16). Every field can be
overridden from the shell, e.g. --config.method.rank=16 --config.train.epochs=3.
"""

from ftjax.training.config import base_config


def get_config(arg=None):
    return base_config(arg, data="sentiment", num_labels=2)
