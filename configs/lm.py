"""Language modelling on a text column: masked LM for encoders (MiniLM by default; the
asset has no MLM head, so one is initialised from the tied word embeddings), causal LM
for decoders; loss and perplexity. The step before fine-tuning on in-domain text.

    python -m ftjax.main --config configs/lm.py:model=minilm,method=full --workdir runs/x

Default text: the movie-review sentences of the `sentiment` asset (`data.text_column`).
"""

from ftjax.training.config import base_config


def get_config(arg=None):
    return base_config(arg, task="language_modeling", data="sentiment")
