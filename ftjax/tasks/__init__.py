"""Tasks: what rows become, the head, the loss and the metrics (see tasks/base.py).

`config.task.name` picks one of `TASKS`; each is one module behind the `Task` interface.
"""

from __future__ import annotations

import ml_collections

from ftjax.tasks.base import HEAD, DataRowError, Task, TaskError
from ftjax.tasks.classification import Regression, SequenceClassification
from ftjax.tasks.lm import LanguageModeling
from ftjax.tasks.prompting import Prompting
from ftjax.tasks.qa import ExtractiveQA
from ftjax.tasks.seq2seq import TextToText
from ftjax.tasks.tagging import TokenClassification

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        SequenceClassification,
        Regression,
        TokenClassification,
        ExtractiveQA,
        TextToText,
        LanguageModeling,
        Prompting,
    )
}

__all__ = ["HEAD", "TASKS", "DataRowError", "Task", "TaskError", "make", "task_class"]


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise TaskError(f"config.task.name={name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def make(config: ml_collections.ConfigDict, tokenizer, info=None) -> Task:
    """The task `config.task.name`, for this config, tokenizer and dataset info."""
    return task_class(config.task.name)(config, tokenizer, info or {})
