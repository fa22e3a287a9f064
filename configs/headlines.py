"""Headline generation: a BBC News article's body in, its title out (the `title` and
`body` columns of the bundled `bbc_news` asset), scored by ROUGE-L on generated titles.

    python -m ftjax.main --config configs/headlines.py:model=smollm2,method=lora --workdir runs/x

For a decoder-only model the prompt is the instruction + body as the user's turn of the
tokenizer's chat template (`task.prompt_format=chat`); for a model without one use
`--config.task.prompt_format=plain`. The prompt is cut to 160 tokens (SmolLM2's chat
frame takes 43 of them, so the lead ~90 words of the body stay); titles are at most 18
tokens. Zero-shot, nothing trained:

    python -m ftjax.evaluate --config configs/headlines.py:model=smollm2 --workdir runs/zero
"""

from ftjax.training.config import base_config

INSTRUCTION = "Write a short headline for this news article.\n\n"


def get_config(arg=None):
    config = base_config(
        arg,
        task="seq2seq",
        data="bbc_news",
        source_column="body",
        target_column="title",
        label_column="",
        max_length=160,
        max_target_length=20,
        batch_size=8,
        eval_batch_size=16,
        eval_examples=64,  # validation during training; the test split is whole
    )
    config.task.source_prefix = INSTRUCTION
    config.task.prompt_format = "chat"
    return config
