"""What each method trains on a model, as the table `python -m ftjax.methods` prints
and every run logs."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ftjax.core import partition
from ftjax.core.partition import BIAS_PATTERN, kind_of
from ftjax.methods.applying import apply, trainable_mask
from ftjax.methods.catalog import METHODS, Method, resolve
from ftjax.models import hub


def method_row(
    method: Method, params: dict, mask: Mapping[str, bool], unreached: Collection[str] = ()
) -> str:
    """One line: what trains, its share of all params, per kind; and the share of
    params the task never reaches (frozen whatever the method says)."""
    flat = partition.flatten(params)
    sizes = {path: int(np.prod(np.shape(leaf))) for path, leaf in flat.items()}
    total = sum(sizes.values())
    by_kind: dict[str, int] = {}
    for path, size in sizes.items():
        if mask[path]:
            by_kind[kind_of(path)] = by_kind.get(kind_of(path), 0) + size
    trainable = sum(by_kind.values())
    groups = ", ".join(f"{k} {v:,}" for k, v in sorted(by_kind.items()))
    row = f"{method.name:<10} {trainable:>12,} {100 * trainable / total:>9.3f}%  {groups}"
    if unreached:
        share = sum(sizes[p] for p in unreached) / total
        row += f"; unreached by the task (frozen): {100 * share:.1f}%"
    return row


def table(
    model: nn.Module,
    params: dict,
    num_labels: int = 2,
    options: Mapping[str, Mapping] | None = None,
) -> str:
    """One row per method for this model with a classification head."""
    from ftjax.tasks.classification import Head

    options = options or {}
    lines = [f"{'method':<10} {'trainable':>12} {'% total':>10}  per group"]
    for name in METHODS:
        opts = options.get(name, {"patterns": [BIAS_PATTERN]} if name == "selective" else {})
        method = resolve(name, model, opts)
        new_model, new_params = apply(method, model, params)
        features = jnp.zeros((1, new_model.config.hidden_size))
        bias = hub.family_of(model).sequence_head_bias
        head = Head(num_labels, use_bias=bias).init(jax.random.key(0), features)["params"]
        new_params = {**new_params, "head": nn.unbox(head)}
        mask = trainable_mask(method, new_params, training=False)  # none: a row of zeros
        lines.append(method_row(method, new_params, mask))
    return "\n".join(lines)
