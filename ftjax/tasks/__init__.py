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

__all__ = ["HEAD", "TASKS", "DataRowError", "Task", "TaskError", "make", "standalone", "task_class"]


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise TaskError(f"config.task.name={name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def standalone(name: str, model, tokenizer=None, **fields) -> Task:
    """A task bound to `model` outside a run (tests, notebooks, benchmarks); `fields`
    set `config.task.X` or `config.data.X` by name, e.g. num_labels=3, pooling="cls"."""
    from ftjax.config import base_config

    config = base_config(None, task=name, data="")
    config.unlock()
    for key, value in fields.items():
        section = next((s for s in ("task", "data") if key in config[s]), None)
        if section is None:
            raise TaskError(f"task {name}: no config.task or config.data field {key!r}")
        config[section][key] = value
    task = make(config, tokenizer)
    task.attach(task.prepare_model(model))
    return task


def make(config: ml_collections.ConfigDict, tokenizer, info=None) -> Task:
    """The task `config.task.name`, for this config, tokenizer and dataset info."""
    return task_class(config.task.name)(config, tokenizer, info or {})
