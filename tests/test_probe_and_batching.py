"""Cached-feature probes, closed-form heads and length-bucketed batches."""

from __future__ import annotations

import jax
import numpy as np
import optax

from ftjax.data import batching
from ftjax.training import probe
from ftjax.training.config import standalone_task
from tests.test_methods import H, base, batch, classifier


def test_cached_features_equal_features_in_the_loop():
    """Batches with padding rows (example_mask 0): cached features are the real rows'."""
    model, params = base("bert")
    task = classifier(model, "mean")
    params = {**params, **task.init_head(jax.random.PRNGKey(0))}
    batches = [batch(i) for i in range(3)]
    batches[1]["example_mask"] = np.array([1, 1, 0, 0], np.float32)  # two padding rows
    index = [np.arange(0, 4), np.arange(4, 6), np.arange(6, 10)]
    # Given out of order (as length-sorted eval batches come), returned in example order.
    feats = probe.extract_features(task, params, [(batches[i], index[i]) for i in (2, 0, 1)])
    assert feats.shape == (10, H)
    in_loop = [np.asarray(jax.jit(task.features)(params, b)) for b in batches]
    in_loop = np.concatenate(
        [f[b["example_mask"] > 0] for f, b in zip(in_loop, batches, strict=True)]
    )
    np.testing.assert_allclose(feats, in_loop, atol=1e-6)
    b = batches[0]
    cached = {"features": feats[:4], "labels": b["labels"], "example_mask": b["example_mask"]}
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


def encoded(lengths, targets=None):
    """Example i's tokens are all i + 1 (unique rows), its label is i; with `targets`, a
    target group of those lengths holding -(i + 1)."""
    n = len(lengths)
    arrays = {
        "input_ids": [np.full(k, i + 1, np.int32) for i, k in enumerate(lengths)],
        "labels": np.arange(n, dtype=np.int32),
    }
    layout = {"input_ids": batching.Seq("source", 0)}
    if targets is not None:
        arrays["decoder_input_ids"] = [
            np.full(k, -(i + 1), np.int32) for i, k in enumerate(targets)
        ]
        layout["decoder_input_ids"] = batching.Seq("target", 0)
    return batching.Examples(arrays, layout, np.arange(n))


def test_batches_are_fixed_size_bucketed_and_cover_every_row_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 64, 203)
    data = encoded(lengths)
    seen = []
    for b, index in batching.batches(data, 32, {"source": 64}, seed=3, epoch=1):
        assert b["input_ids"].shape[0] == 32 and b["input_ids"].shape[1] in (16, 32, 48, 64)
        n = b["attention_mask"].sum(1)
        real = b["example_mask"] > 0
        assert real.sum() == len(index) and real[: len(index)].all()
        assert b["input_ids"].shape[1] - 16 < n[real].max() <= b["input_ids"].shape[1]
        assert (n[~real] == 0).all()
        for row in np.flatnonzero(real):
            example = b["input_ids"][row, 0] - 1
            assert example == index[row] and b["labels"][row] == example
            assert n[row] == lengths[example]
            assert (b["input_ids"][row, : n[row]] == example + 1).all()
            assert (b["input_ids"][row, n[row] :] == 0).all()
            seen.append(int(example))
    assert sorted(seen) == list(range(203))


def test_source_and_target_are_bucketed_separately_and_prompts_pad_left():
    rng = np.random.default_rng(2)
    source, target = rng.integers(20, 64, 40), rng.integers(1, 9, 40)
    data = encoded(source, target)
    limits = {"source": 64, "target": 16}
    for b, index in batching.batches(data, 8, limits, bucket_step=8, shuffle=False):
        assert b["decoder_input_ids"].shape[1] == 8  # targets never longer than 8
        assert b["input_ids"].shape[1] >= 24
        for row, example in enumerate(index):
            assert b["decoder_attention_mask"][row].sum() == target[example]
            assert (b["decoder_input_ids"][row, : target[example]] == -(example + 1)).all()
    left = batching.Examples(
        {"prompt": [np.array([5, 6, 7]), np.array([8])]},
        {"prompt": batching.Seq("prompt", pad=0, left=True)},
        np.arange(2),
    )
    ((b, _),) = batching.batches(left, 2, {"prompt": 4}, bucket_step=4, shuffle=False)
    np.testing.assert_array_equal(b["prompt"], [[0, 5, 6, 7], [0, 0, 0, 8]])
    np.testing.assert_array_equal(b["prompt_mask"], [[0, 1, 1, 1], [0, 0, 0, 1]])


def test_epoch_order_is_seeded_and_resumable():
    data = encoded(np.random.default_rng(1).integers(3, 64, 150))
    limits = {"source": 64}
    full = [b for b, _ in batching.batches(data, 16, limits, seed=5, epoch=2)]
    tail = [b for b, _ in batching.batches(data, 16, limits, seed=5, epoch=2, start=4)]
    for a, b in zip(full[4:], tail, strict=True):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    other = [b for b, _ in batching.batches(data, 16, limits, seed=5, epoch=3)]
    assert any(
        a["input_ids"].shape != b["input_ids"].shape
        or not np.array_equal(a["input_ids"], b["input_ids"])
        for a, b in zip(full, other, strict=True)
    )


def test_padding_report_on_the_real_data():
    from ftjax.data.splits import load_splits
    from ftjax.models import from_pretrained, load_tokenizer

    model, _ = from_pretrained("minilm")
    task = standalone_task("classification", model, load_tokenizer("minilm"))
    data = task.encode(load_splits("sentiment")["train"], "train")
    report = batching.padding_report(data, 32, 64)
    assert 25 < report["mean_real_length"] < 29
    assert report["mean_bucketed_length"] < 0.75 * report["mean_random_batch_length"]
