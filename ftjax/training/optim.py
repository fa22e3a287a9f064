"""Optimizers and learning-rate schedules from the `optimizer` section of a config."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

# Biases and norm scales are not decayed (BERT practice, as in transformers' Trainer).
NO_DECAY = re.compile(r".*/bias|(.*/)?\w*norm/scale")


def schedule(cfg: Any, total_steps: int) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then linear or cosine decay to 0, or constant."""
    warmup = int(cfg.warmup_steps or round(cfg.warmup_ratio * total_steps))
    peak, decay_steps = cfg.learning_rate, max(total_steps - warmup, 1)
    if cfg.schedule == "linear":
        after = optax.linear_schedule(peak, 0.0, decay_steps)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps)
    elif cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise ValueError(f"config.optimizer.schedule={cfg.schedule!r}: linear, cosine or constant")
    if not warmup:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params: dict[str, Any]) -> dict[str, bool]:
    """Weight decay on weight matrices only; params are flat {path: leaf}."""
    return {path: not NO_DECAY.fullmatch(path) for path in params}


def make_optimizer(cfg: Any, total_steps: int) -> tuple[optax.GradientTransformation, Any]:
    """(optimizer, schedule) for `config.optimizer`: adamw, adafactor or sgd."""
    lr = schedule(cfg, total_steps)
    if cfg.name == "adamw":
        base = optax.adamw(
            lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask
        )
    elif cfg.name == "adafactor":
        base = optax.adafactor(
            lr, weight_decay_rate=cfg.weight_decay or None, weight_decay_mask=decay_mask
        )
    elif cfg.name == "sgd":
        base = optax.chain(
            optax.add_decayed_weights(cfg.weight_decay, decay_mask),
            optax.sgd(lr, momentum=cfg.momentum or None),
        )
    else:
        raise ValueError(f"config.optimizer.name={cfg.name!r}: adamw, adafactor or sgd")
    if cfg.grad_clip:
        base = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), base)
    return with_state_dtype(base, cfg.get("state_dtype", "float32")), lr


def with_state_dtype(tx: optax.GradientTransformation, dtype: str) -> optax.GradientTransformation:
    """`tx` keeping its floating-point state (Adam's moments, ...) as `dtype`: the update
    itself runs in float32 on the upcast state, so only storage loses precision."""
    if jnp.dtype(dtype) == jnp.float32:
        return tx

    def cast(tree: Any, to: Any) -> Any:
        return jax.tree.map(
            lambda x: x.astype(to) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
        )

    def init(params: Any) -> Any:
        return cast(tx.init(params), dtype)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        updates, state = tx.update(updates, cast(state, jnp.float32), params)
        return updates, cast(state, dtype)

    return optax.GradientTransformation(init, update)
