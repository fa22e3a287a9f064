"""Text-to-text: a source text in, a target text out (T5, or a decoder-only model with
the loss on the target tokens only); evaluated on generated text, exact match and ROUGE-L.

    python -m ftjax.main --config configs/seq2seq.py:model=PATH,method=lora --workdir runs/x

By default it is movie-review sentiment as text: the target is the label's word
(`negative` / `positive`, from the dataset's label names). For source/target data set
`--config.data.name=DIR --config.data.label_column= --config.data.source_column=...
--config.data.target_column=...`. `model=` must name a T5 or decoder checkpoint (MiniLM,
the default model of the other configs, is an encoder and is refused).
"""

from ftjax.training.config import base_config


def get_config(arg=None):
    return base_config(
        arg,
        task="seq2seq",
        data="sentiment",
        source_column="text",
        label_column="label",
        max_target_length=4,
    )
