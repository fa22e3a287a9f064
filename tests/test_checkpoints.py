"""Checkpoint retention (latest N plus the best) and the frozen-params hash."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from ftjax.training import checkpoints
from ftjax.training.train import create_state


def tiny_state():
    params = {
        "head": {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}},
        "encoder": {"w": jnp.ones(4)},
    }
    mask = {"head/dense/kernel": True, "head/dense/bias": True, "encoder/w": False}
    return create_state(params, mask, optax.adam(1e-3))


def test_keeps_the_latest_and_the_best(tmp_path):
    mngr = checkpoints.manager(tmp_path, keep=2, best_metric="accuracy")
    state = tiny_state()
    accuracy = {1: 0.5, 2: 0.9, 3: 0.6, 4: 0.7, 5: 0.65}
    for step, acc in accuracy.items():
        state = state.replace(
            step=jnp.asarray(step), trainable={k: v + 1 for k, v in state.trainable.items()}
        )
        checkpoints.save(
            mngr,
            state,
            {"epoch": 0, "batch": step, "frozen_hash": "x"},
            {"accuracy": acc, "loss": 1 - acc},
        )
        mngr.wait_until_finished()
    assert sorted(mngr.all_steps()) == [2, 4, 5]
    assert mngr.best_step() == 2
    mngr.close()
    reopened = checkpoints.manager(tmp_path, keep=2, best_metric="accuracy")  # after a restart
    assert reopened.best_step() == 2
    mngr = reopened
    restored, meta = checkpoints.restore(mngr, tiny_state(), 2)
    assert int(restored.step) == 2 and meta["batch"] == 2
    np.testing.assert_array_equal(restored.trainable["head/dense/kernel"], np.full((3, 2), 3.0))
    mngr.close()


def test_frozen_hash_sees_any_change():
    frozen = {"a/kernel": np.ones((2, 2), np.float32), "b/bias": np.zeros(3, np.float32)}
    reference = checkpoints.frozen_hash(frozen)
    assert checkpoints.frozen_hash(dict(reversed(frozen.items()))) == reference
    changed = dict(frozen, **{"b/bias": np.array([0, 0, 1e-7], np.float32)})
    assert checkpoints.frozen_hash(changed) != reference
