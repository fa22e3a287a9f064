"""Few-shot recall by free generation: "the capital of California is Sacramento; the
capital of Massachusetts is Boston; the capital of Texas is" -> " Austin", scored by exact
match on the text up to the first ";" (the model goes on to the next state). The two
demonstrations are the training split of `experiments/data/capitals` (12 test states).

    python -m ftjax.evaluate --config configs/capitals.py:model=smollm2 --workdir runs/capitals
"""

from pathlib import Path

from ftjax.training.config import base_config

DATA = Path(__file__).resolve().parents[1] / "experiments" / "data" / "capitals"


def get_config(arg=None):
    config = base_config(
        arg,
        task="seq2seq",
        data=str(DATA),
        default_method="none",
        source_column="state",
        target_column="capital",
        label_column="",
        max_length=64,
        max_target_length=6,
        batch_size=4,
        eval_batch_size=4,
    )
    config.task.update(
        source_prefix="the capital of ",
        separator=" is",
        target_delimiter=" ",
        shots=2,
        shot_separator="; ",
        stop_at=(";", "\n"),
    )
    return config
