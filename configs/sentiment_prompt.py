"""Movie-review sentiment by prompting: the model reads "Review: ...\\nSentiment:" and the
label is whichever word it finds likelier next, " negative" or " positive"
(`task=prompting`). Nothing is trained by default (method=none): zero-shot, or k-shot
in-context learning over demonstration seeds:

    python -m ftjax.prompt --config configs/sentiment_prompt.py:model=smollm2 --workdir runs/zero
    python -m ftjax.prompt --config configs/sentiment_prompt.py:model=smollm2 --workdir runs/k4 \\
        --seeds 5 --config.task.shots=4 --config.task.calibrate=True

With a trainable method it fine-tunes through the LM head (PET-style):

    python -m ftjax.main --config configs/sentiment_prompt.py:model=smollm2,method=lora \\
        --workdir runs/x

A masked LM (MiniLM) scores the words at a [MASK]:
`--config.task.template="{text} It was {label}."`.
"""

from ftjax.training.config import base_config


def get_config(arg=None):
    config = base_config(
        arg, task="prompting", data="sentiment", default_method="none", max_length=256
    )
    config.task.template = "Review: {text}\nSentiment:"
    config.task.label_words = ("negative", "positive")
    return config
