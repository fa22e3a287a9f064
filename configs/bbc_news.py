"""Five-way topic classification of BBC News articles (the bundled `bbc_news` asset).

python -m ftjax.main --config configs/bbc_news.py:model=minilm,method=lora --workdir runs/x
"""

from ftjax.training.config import base_config


def get_config(arg=None):
    config = base_config(arg, data="bbc_news", num_labels=5)
    # Articles average 485 MiniLM tokens (median 420): every one is cut at 128, 88% at
    # 256. The headline and opening lines carry the topic, at half the cost of 256.
    config.data.max_length = 128
    return config
