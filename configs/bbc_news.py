"""Five-way topic classification of BBC News articles (the bundled `bbc_news` asset).

python -m ftjax.main --config configs/bbc_news.py:model=minilm,method=lora --workdir runs/x
"""

from ftjax.config import base_config


def get_config(arg=None):
    config = base_config(arg, data="bbc_news", num_labels=5)
    # Articles average ~500 tokens; the headline and opening lines carry the topic, and
    # 128 tokens cost half of 256 per step (experiments/RESULTS.md).
    config.data.max_length = 128
    return config
