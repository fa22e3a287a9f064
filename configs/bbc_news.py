"""Five-way topic classification of BBC News articles (the bundled `bbc_news` asset).

python -m ftjax.main --config configs/bbc_news.py:model=minilm,method=lora --workdir runs/x
"""

from ftjax.config import base_config


def get_config(arg=None):
    config = base_config(arg, data="bbc_news", num_labels=5)
    config.data.max_length = 256  # articles are long; the first 256 tokens carry the topic
    return config
