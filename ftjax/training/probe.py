"""Linear probing on cached features.

A probe's backbone is frozen, so its features are a fixed function of the input: compute
them once (`extract_features`) and train the head on them, instead of rerunning the
backbone every step of every epoch. Two closed-form baselines fit a head directly:
L2-regularised least squares on one-hot targets (`ridge_head`) and L2-regularised
multinomial logistic regression solved by L-BFGS (`logistic_head`). Both return params in
the layout of `ftjax.tasks.classification.Head`, so they evaluate like any trained head.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax.tasks.base import HEAD
from ftjax.tasks.classification import PooledTask


def extract_features(
    task: PooledTask, params: dict, batches: Iterable[tuple[dict, np.ndarray]]
) -> np.ndarray:
    """Pooled features [n, width] of the real rows of `batches` ((batch, example indices)
    pairs, in any order), in example order; the backbone runs once."""
    run = jax.jit(lambda p, b: task.features(p, b))
    feats, order = [], []
    for batch, index in batches:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "example_mask")}
        feats.append(np.asarray(run(params, inputs))[: len(index)])
        order.append(index)
    out = np.concatenate(feats)
    return out[np.argsort(np.concatenate(order), kind="stable")]


def feature_batches(features: np.ndarray, labels: np.ndarray, batch_size: int, seed: int):
    """Shuffled fixed-size batches of cached features (the last one padded, masked out)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        pad = batch_size - len(index)
        yield {
            "features": np.pad(features[index], ((0, pad), (0, 0))),
            "labels": np.pad(labels[index], (0, pad)),
            "example_mask": np.pad(np.ones(len(index), np.float32), (0, pad)),
        }


def _as_head(kernel, bias) -> dict:
    return {
        HEAD: {
            "dense": {
                "kernel": jnp.asarray(kernel, jnp.float32),
                "bias": jnp.asarray(bias, jnp.float32),
            }
        }
    }


def ridge_head(features: np.ndarray, labels: np.ndarray, num_labels: int, l2: float = 1.0):
    """Least squares onto one-hot targets with an L2 penalty on the weights (not the bias)."""
    x = features.astype(np.float64)
    mean = x.mean(0)
    centered = x - mean
    targets = np.eye(num_labels)[labels]
    target_mean = targets.mean(0)
    gram = centered.T @ centered + l2 * np.eye(x.shape[1])
    kernel = np.linalg.solve(gram, centered.T @ (targets - target_mean))
    return _as_head(kernel, target_mean - mean @ kernel)


def logistic_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_labels: int,
    l2: float = 1e-3,
    iterations: int = 200,
):
    """Multinomial logistic regression, mean loss + l2/2 |W|^2, fitted with L-BFGS."""
    x, y = jnp.asarray(features, jnp.float32), jnp.asarray(labels)

    def objective(params):
        logits = x @ params["kernel"] + params["bias"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss + 0.5 * l2 * jnp.sum(params["kernel"] ** 2)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    @jax.jit
    def fit(params):
        def step(carry, _):
            params, state = carry
            value, grad = value_and_grad(params, state=state)
            updates, state = solver.update(
                grad, state, params, value=value, grad=grad, value_fn=objective
            )
            return (optax.apply_updates(params, updates), state), value

        init = (params, solver.init(params))
        (params, _), values = jax.lax.scan(step, init, None, length=iterations)
        return params, values

    start = {"kernel": jnp.zeros((x.shape[1], num_labels)), "bias": jnp.zeros(num_labels)}
    params, _ = fit(start)
    return _as_head(params["kernel"], params["bias"])
