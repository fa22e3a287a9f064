"""In-context demonstrations: which training rows a k-shot prompt shows.

One set per seed for a whole evaluation (as Brown et al. 2020 and Zhao et al. 2021
evaluate): every test row sees the same demonstrations, so a model encodes them once,
and the spread over seeds measures how much the choice of demonstrations matters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ftjax.tasks.base import TaskError


def draw(labels: Sequence[int], k: int, seed: int, balanced: bool) -> list[int]:
    """Indices of `k` demonstrations among rows with these `labels` (-1: unusable), in
    the order they are shown. `balanced`: each label as often as k allows (the rest
    drawn among labels at random), the order shuffled so no label always comes last."""
    labels = np.asarray(labels)
    usable = np.flatnonzero(labels >= 0)
    if k > len(usable):
        raise ValueError(f"{k} demonstrations asked, {len(usable)} usable rows")
    rng = np.random.default_rng(seed)
    if not balanced:
        return [int(i) for i in rng.choice(usable, size=k, replace=False)]
    classes = np.unique(labels[usable])
    quota = {c: k // len(classes) for c in classes}
    for c in rng.choice(classes, size=k % len(classes), replace=False):
        quota[c] += 1
    chosen = []
    for c, n in quota.items():
        pool = usable[labels[usable] == c]
        if n > len(pool):
            raise ValueError(f"{n} demonstrations of label {c} asked, {len(pool)} rows have it")
        chosen.extend(rng.choice(pool, size=n, replace=False))
    return [int(i) for i in rng.permutation(chosen)]


def training_rows(splits, config):
    """The split demonstrations come from (`data.train_split`); a clear error without it."""
    shots, split = config.task.shots, config.data.train_split
    if split not in splits:
        raise TaskError(
            f"config.task.shots={shots} draws demonstrations from split "
            f"config.data.train_split={split!r}, which the data lacks (it has {list(splits)})"
        )
    return splits[split]


def choose(labels: Sequence[int], config, balanced: bool) -> list[int]:
    """`draw` with the config's `task.shots` and `task.shot_seed`, errors naming them."""
    t = config.task
    try:
        return draw(labels, t.shots, t.shot_seed, balanced)
    except ValueError as err:
        raise TaskError(
            f"config.task.shots={t.shots}: {err} in split {config.data.train_split!r}"
        ) from err
