"""Regression on movie-review sentences: predict the mean human sentiment score (-4..4)
of the bundled `sentiment` asset (the column its binary label is derived from).

    python -m ftjax.main --config configs/sentiment_regression.py:method=lora --workdir runs/x
"""

from ftjax.training.config import base_config


def get_config(arg=None):
    return base_config(arg, task="regression", data="sentiment", label_column="score")
