"""Cached-feature probes, closed-form heads and length-bucketed batches."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from ftjax import batching, probe
from ftjax.tasks.classification import Classifier
from ftjax.tasks.features import FeatureSpec
from tests.test_methods import base, batch


def test_cached_features_equal_features_in_the_loop():
    model, params = base("bert")
    task = Classifier(model, 3, FeatureSpec(pooling="mean"))
    params = {**params, **task.init_head(jax.random.PRNGKey(0))}
    batches = [batch(i) for i in range(3)]
    feats, labels = probe.extract_features(task, params, batches)
    in_loop = np.concatenate([np.asarray(jax.jit(task.features)(params, b)) for b in batches])
    np.testing.assert_allclose(feats, in_loop, atol=1e-6)
    b = batches[0]
    cached = {"features": feats[:4], "labels": labels[:4], "example_mask": b["example_mask"]}
    loss_cached = jax.jit(task.loss)(params, cached)[0]
    loss_loop = jax.jit(task.loss)(params, b)[0]
    np.testing.assert_allclose(float(loss_cached), float(loss_loop), rtol=1e-6)


def separable(n=400, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, d)) * 3
    labels = rng.integers(0, classes, n)
    return centers[labels] + rng.normal(size=(n, d)), labels


def head_predict(head, x):
    dense = head["head"]["dense"]
    return np.argmax(x @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"]), 1)


def test_ridge_head_is_the_least_squares_solution():
    x, y = separable()
    head = probe.ridge_head(x, y, 3, l2=0.0)
    targets = np.eye(3)[y]
    design = np.hstack([x, np.ones((len(x), 1))])
    solution, *_ = np.linalg.lstsq(design, targets, rcond=None)
    np.testing.assert_allclose(head["head"]["dense"]["kernel"], solution[:-1], atol=1e-4)
    np.testing.assert_allclose(head["head"]["dense"]["bias"], solution[-1], atol=1e-4)
    assert (head_predict(head, x) == y).mean() > 0.95


def test_logistic_head_reaches_the_optimum():
    x, y = separable()
    l2 = 1e-2
    head = probe.logistic_head(x, y, 3, l2=l2, iterations=300)
    dense = head["head"]["dense"]

    def objective(kernel, bias):
        logits = x @ kernel + bias
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss + 0.5 * l2 * (kernel**2).sum()

    grads = jax.grad(objective, argnums=(0, 1))(dense["kernel"], dense["bias"])
    assert max(float(np.abs(g).max()) for g in grads) < 1e-4  # stationary point
    assert (head_predict(head, x) == y).mean() > 0.95


def encoded(lengths):
    return batching.Encoded(
        [np.arange(1, n + 1, dtype=np.int32) for n in lengths], np.arange(len(lengths)) % 2
    )


def test_batches_are_fixed_size_bucketed_and_cover_every_row_once():
    rng = np.random.default_rng(0)
    data = encoded(rng.integers(3, 64, 203))
    seen = []
    for b in batching.batches(data, 32, 64, pad_id=0, seed=3, epoch=1):
        assert b["input_ids"].shape[0] == 32 and b["input_ids"].shape[1] in (16, 32, 48, 64)
        lengths = b["attention_mask"].sum(1)
        real = b["example_mask"] > 0
        assert b["input_ids"].shape[1] - 16 < lengths[real].max() <= b["input_ids"].shape[1]
        assert (lengths[~real] == 0).all()
        seen += [tuple(row[:n]) for row, n in zip(b["input_ids"][real], lengths[real], strict=True)]
    assert len(seen) == 203
    assert sorted(len(s) for s in seen) == sorted(len(x) for x in data.ids)


def test_epoch_order_is_seeded_and_resumable():
    data = encoded(np.random.default_rng(1).integers(3, 64, 150))
    full = list(batching.batches(data, 16, 64, 0, seed=5, epoch=2))
    tail = list(batching.batches(data, 16, 64, 0, seed=5, epoch=2, start=4))
    for a, b in zip(full[4:], tail, strict=True):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    other = list(batching.batches(data, 16, 64, 0, seed=5, epoch=3))
    assert any(
        a["input_ids"].shape != b["input_ids"].shape
        or not np.array_equal(a["input_ids"], b["input_ids"])
        for a, b in zip(full, other, strict=True)
    )


def test_padding_report_on_the_real_data():
    from ftjax.data import load_splits
    from ftjax.models import load_tokenizer

    rows = load_splits("sentiment")["train"]
    data = batching.encode(rows, load_tokenizer("minilm"), 64, num_labels=2)
    report = batching.padding_report(data, 32, 64)
    assert 25 < report["mean_real_length"] < 29
    assert report["mean_bucketed_length"] < 0.75 * report["mean_random_batch_length"]


def test_label_outside_the_label_set_names_the_row():
    import datasets

    rows = datasets.Dataset.from_dict({"text": ["good", "bad", "odd"], "label": [1, 0, 2]})
    with pytest.raises(batching.LabelError, match="row 2: label=2 is outside the label set 0..1"):
        batching.encode(
            rows, lambda texts, **kw: {"input_ids": [[1]] * len(texts)}, 8, num_labels=2
        )
