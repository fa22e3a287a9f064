"""Optimizers, schedules and the weight-decay mask from config sections."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ftjax.training.config import base_config
from ftjax.training.optim import decay_mask, make_optimizer, schedule


def optimizer_config(**changes) -> ml_collections.ConfigDict:
    config = base_config(None, data="sentiment", num_labels=2).optimizer
    config.unlock()
    config.update(changes)
    return config


def test_warmup_then_linear_or_cosine_decay():
    linear = schedule(optimizer_config(learning_rate=1.0, warmup_steps=10), 110)
    assert float(linear(0)) == 0.0 and float(linear(5)) == pytest.approx(0.5)
    assert float(linear(10)) == pytest.approx(1.0)
    assert float(linear(60)) == pytest.approx(0.5) and float(linear(110)) == pytest.approx(0.0)
    cosine = schedule(optimizer_config(learning_rate=1.0, warmup_steps=10, schedule="cosine"), 110)
    assert float(cosine(60)) == pytest.approx(0.5) and float(cosine(35)) == pytest.approx(
        0.5 * (1 + np.cos(np.pi / 4)), rel=1e-5
    )
    ratio = schedule(optimizer_config(learning_rate=1.0, warmup_ratio=0.1), 200)
    assert float(ratio(10)) == pytest.approx(0.5)


def test_no_weight_decay_on_biases_and_norms():
    params = {
        "encoder/layer_0/attention/query/kernel": 0,
        "encoder/layer_0/attention/query/bias": 0,
        "encoder/layer_0/mlp_norm/scale": 0,
        "embeddings/layer_norm/bias": 0,
        "embeddings/word_embeddings/embedding": 0,
        "head/dense/kernel": 0,
    }
    assert [p for p, decays in decay_mask(params).items() if decays] == [
        "encoder/layer_0/attention/query/kernel",
        "embeddings/word_embeddings/embedding",
        "head/dense/kernel",
    ]


@pytest.mark.parametrize("name", ["adamw", "adafactor", "sgd"])
def test_each_optimizer_minimises_a_quadratic(name):
    lr = {"adamw": 0.1, "adafactor": 0.1, "sgd": 0.1}[name]
    tx, _ = make_optimizer(
        optimizer_config(
            name=name, learning_rate=lr, warmup_ratio=0.0, schedule="constant", weight_decay=0.0
        ),
        100,
    )
    params = {"a/kernel": jnp.ones((4, 3)) * 3.0, "a/bias": jnp.ones(3)}
    state = tx.init(params)
    loss = lambda p: sum(jnp.sum(v**2) for v in p.values())  # noqa: E731
    start = float(loss(params))
    for _ in range(50):
        grads = {k: 2 * v for k, v in params.items()}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert float(loss(params)) < 0.1 * start


def test_global_norm_clipping():
    tx, _ = make_optimizer(
        optimizer_config(
            name="sgd",
            learning_rate=1.0,
            momentum=0.0,
            warmup_ratio=0.0,
            schedule="constant",
            weight_decay=0.0,
            grad_clip=1.0,
        ),
        10,
    )
    params = {"w/kernel": jnp.zeros(4)}
    updates, _ = tx.update({"w/kernel": jnp.full(4, 10.0)}, tx.init(params), params)
    assert float(jnp.linalg.norm(updates["w/kernel"])) == pytest.approx(1.0, rel=1e-5)


def test_unknown_optimizer_and_schedule_are_named():
    with pytest.raises(ValueError, match="optimizer.name='adam'"):
        make_optimizer(optimizer_config(name="adam"), 10)
    with pytest.raises(ValueError, match="schedule='step'"):
        make_optimizer(optimizer_config(schedule="step"), 10)
