"""Shared by the task tests: a config file with tiny-run settings, runs that
`ftjax.evaluate` must reproduce, and per-task field overrides."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from ftjax import methods
from ftjax.core import partition
from ftjax.evaluate import evaluate
from ftjax.training import loop
from ftjax.training.experiment import build
from ftjax.training.state import initial_state
from ftjax.training.steps import Steps
from tests.helpers import synthetic
from tests.helpers.modules import load_module
from tests.helpers.tiny import write_splits

ROOT = Path(__file__).resolve().parents[2]


def config_file(name: str, arg: str):
    return load_module(ROOT / "configs" / f"{name}.py").get_config(arg)


def tiny_run_config(name, model_dir, data_dir, method="full", **fields):
    """configs/NAME.py on a tiny model and data: 6 epochs, validation only at the end."""
    config = config_file(name, f"method={method}")
    config.model.name, config.data.name = str(model_dir), str(data_dir)
    config.model.dropout = 0.0
    config.data.update(batch_size=16, eval_batch_size=48, max_length=32, bucket_step=32)
    config.train.update(epochs=6, prng_impl="rbg", log_every=100, eval_every=10**6)
    config.optimizer.update(learning_rate=3e-3, warmup_ratio=0.0)
    for key, value in fields.items():
        section, field = key.split("__")
        config[section][field] = value
    return config


def run_and_reproduce(config, workdir: Path) -> dict:
    results = loop.run(config, workdir)
    again = evaluate(workdir)["test"]
    assert {k: again[k] for k in results["test"]} == results["test"]
    return results["test"]


NER_FIELDS = {"data__label_names": (), "train__epochs": 10}  # tag set from the data
# Windows of 32 tokens overlapping by 8: the longer contexts are split.
QA_FIELDS = {"data__max_length": 32, "task__doc_stride": 8, "data__test_split": "test"}
# Generation starts from a 30k-word output layer: a higher rate and more epochs.
TEXT = {"optimizer__learning_rate": 1e-2, "train__epochs": 10}
LABEL_WORDS = {**TEXT, "task__label_words": ("bad", "good")}
GPT2_LABEL_WORDS = {**LABEL_WORDS, "train__epochs": 16}
SOURCE_TARGET = {
    **TEXT,
    "data__source_column": "source",
    "data__label_column": "",
    "data__max_target_length": 8,
}


# A headless task's probe trains nothing: refused, clearly (checked below).
MATRIX_TASKS = {
    "sentiment": ("gpt2", synthetic.sentiment_rows, {}),
    "sentiment_regression": ("t5", synthetic.sentiment_rows, {}),
    "ner": ("bert", synthetic.ner_rows, {"data__label_names": ()}),
    "qa": ("bert", synthetic.qa_rows, QA_FIELDS),
    "seq2seq": ("t5", synthetic.text_to_text_rows, SOURCE_TARGET),
    "lm": ("gpt2", synthetic.sentiment_rows, {}),
}
HEADLESS = ("seq2seq", "lm")  # a probe trains only a head: refused, clearly
OPTIONS = {
    "top_k": {"k": 1},
    "selective": {"patterns": (".*/attention/query/kernel",)},
    "lora": {"rank": 2},
    "adapter": {"size": 4},
    "prefix": {"length": 2},
    "prompt": {"length": 2},
}


NO_BIASES = ("t5", "llama")  # no bias terms: BitFit refuses them


def check_every_method(tmp_path, checkpoints, config_name, family=None):
    """Each method trains (moves) exactly its trainable params on this task; the frozen
    ones stay bit-identical. The tasks' families (MATRIX_TASKS) cover BERT, GPT-2 and T5
    (`family` runs a task on another one);
    on T5, a task reading encoder states trains no decoder or LM-head parameter."""
    default_family, rows, fields = MATRIX_TASKS[config_name]
    family = family or default_family
    sizes = {"train": 16, "validation": 16, "test": 16}
    data = write_splits(tmp_path / "data", synthetic.splits_of(rows, sizes=sizes))
    for name in methods.METHODS:
        config = tiny_run_config(config_name, checkpoints[family], data, name, **fields)
        for option, value in OPTIONS.get(name, {}).items():
            config.method[option] = value
        config.data.eval_batch_size = 16
        if name == "bitfit" and family in NO_BIASES:
            with pytest.raises(partition.PatternError, match=r"\.\*/bias"):
                build(config)
            continue
        if name == "none":  # trains nothing: refused for training, by name
            with pytest.raises(methods.MethodError, match="method none trains nothing"):
                build(config)
            continue
        if name == "probe" and config_name in HEADLESS:
            with pytest.raises(methods.MethodError, match="trains nothing .the task has no head"):
                build(config)
            continue
        exp = build(config)
        state, shardings = initial_state(exp)
        before = {p: np.asarray(v) for p, v in partition.flatten(state.params).items()}
        steps = Steps(exp, shardings)
        # Two steps: an adapter's down-projection has no gradient until `up` leaves zero.
        batches = [b for epoch in (0, 1) for b in exp.loader.train_batches(epoch, 0)]
        for i, batch in enumerate(batches):
            state, metrics = steps.train(state, batch, jax.random.PRNGKey(i))
            assert np.isfinite(float(metrics["loss"])), (config_name, name)
        after = partition.flatten(state.params)
        for path, trains in exp.mask.items():
            same = np.array_equal(np.asarray(after[path]), np.asarray(before[path]))
            assert same != trains, (
                f"{config_name}/{name}: {path} {'did not train' if trains else 'frozen, changed'}"
            )
        if family == "t5" and config_name not in HEADLESS:  # reads encoder states only
            decoder = [p for p, trains in exp.mask.items() if trains and "decoder" in p]
            assert not decoder and not any(exp.mask[p] for p in exp.mask if "lm_head" in p)
