"""Headline generation: a BBC News article's body in, its title out (the `title` and
`body` columns of the bundled `bbc_news` asset), scored by ROUGE-L on generated titles.

    python -m ftjax.main --config configs/headlines.py:model=smollm2,method=lora --workdir runs/x

For a decoder-only model the prompt is the instruction + body as the user's turn of the
tokenizer's chat template (`task.prompt_format=chat`); for a model without one use
`--config.task.prompt_format=plain`. Zero-shot: `--config.train.max_steps=0`... see
README ("Evaluating without training").
"""

from ftjax.config import base_config

INSTRUCTION = "Write a short headline for this news article.\n\n"


def get_config(arg=None):
    config = base_config(
        arg,
        task="seq2seq",
        data="bbc_news",
        source_column="body",
        target_column="title",
        label_column="",
        max_length=256,
        max_target_length=24,
        batch_size=8,
        eval_batch_size=16,
    )
    config.task.source_prefix = INSTRUCTION
    config.task.prompt_format = "chat"
    return config
