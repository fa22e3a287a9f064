"""Parameter paths, counts and the table every run prints.

Parameter paths ("encoder/layer_3/attention/query/kernel") are ftjax's public
vocabulary: configs, trainable masks, sharding rules and checkpoints all speak it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

Params = Mapping[str, Any]


def flatten(params: Params) -> dict[str, Any]:
    """{"encoder/layer_0/attention/query/kernel": array, ...}"""
    return traverse_util.flatten_dict(dict(params), sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def count(params: Params) -> int:
    return int(sum(np.prod(np.shape(leaf)) for leaf in flatten(params).values()))


def group_of(path: str, depth: int) -> str:
    """The first `depth` components of a path ("encoder/layer_3"), never the leaf name."""
    parts = path.split("/")
    return "/".join(parts[: max(1, min(depth, len(parts) - 1))])


def param_table(params: Params, trainable: Mapping[str, bool] | None = None, depth: int = 2) -> str:
    """A plain-text table of parameter counts per group, with the trainable share.

    `trainable` maps flat paths to booleans (all trainable when omitted).
    """
    flat = flatten(params)
    trainable = trainable or dict.fromkeys(flat, True)
    rows: dict[str, list[int]] = {}
    for path, leaf in flat.items():
        size = int(np.prod(np.shape(leaf)))
        row = rows.setdefault(group_of(path, depth), [0, 0])
        row[0] += size
        row[1] += size if trainable[path] else 0
    total = sum(r[0] for r in rows.values())
    total_trainable = sum(r[1] for r in rows.values())
    width = max(len("group"), *(len(g) for g in rows))
    lines = [f"{'group':<{width}}  {'params':>12}  {'trainable':>12}  {'% of total':>10}"]
    for group, (size, train) in rows.items():
        lines.append(f"{group:<{width}}  {size:>12,}  {train:>12,}  {100 * train / total:>9.3f}%")
    lines.append(
        f"{'total':<{width}}  {total:>12,}  {total_trainable:>12,}  "
        f"{100 * total_trainable / total:>9.3f}%"
    )
    return "\n".join(lines)


class PatternError(ValueError):
    """A trainable-parameter pattern that matches nothing (almost always a typo)."""


def trainable_mask(params: Params, patterns: Sequence[str]) -> dict[str, bool]:
    """{path: True if some pattern fully matches the path}; every pattern must match."""
    paths = list(flatten(params))
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as err:
            raise PatternError(f"trainable pattern {pattern!r} is not a regex: {err}") from err
    for pattern, regex in zip(patterns, compiled, strict=True):
        if not any(regex.fullmatch(path) for path in paths):
            raise PatternError(
                f"trainable pattern {pattern!r} matches no parameter; parameter paths look "
                f"like: {', '.join(paths[:3])}, ... ({len(paths)} in all)"
            )
    return {path: any(regex.fullmatch(path) for regex in compiled) for path in paths}


def split(params: Params, mask: Mapping[str, bool]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainable, frozen) as flat {path: leaf} dicts: pytrees that jit, grad and optax take."""
    flat = flatten(params)
    trainable = {path: leaf for path, leaf in flat.items() if mask[path]}
    frozen = {path: leaf for path, leaf in flat.items() if not mask[path]}
    return trainable, frozen


def merge(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict[str, Any]:
    """The nested params a model applies, from the two halves `split` made."""
    return unflatten({**frozen, **trainable})


def storage_line(
    trainable: Mapping[str, Any], frozen: Mapping[str, Any], opt_state: Any = None
) -> str:
    """Bytes by dtype of what a run holds: "stored: trainable float32 3.6 MiB, frozen
    bfloat16 64.0 MiB, optimizer state float32 7.2 MiB" (leaves need shape and dtype)."""

    def by_dtype(leaves: Sequence[Any]) -> str:
        sizes: dict[str, int] = {}
        for leaf in leaves:
            name = np.dtype(leaf.dtype).name
            sizes[name] = sizes.get(name, 0) + int(np.prod(np.shape(leaf))) * leaf.dtype.itemsize
        return " + ".join(f"{name} {_mib(n)}" for name, n in sorted(sizes.items())) or "0"

    parts = {
        "trainable": by_dtype(list(trainable.values())),
        "frozen": by_dtype(list(frozen.values())),
    }
    if opt_state is not None:
        parts["optimizer state"] = by_dtype(
            [x for x in jax.tree.leaves(opt_state) if np.ndim(x) or np.dtype(x.dtype).kind == "f"]
        )
    return "stored: " + ", ".join(f"{k} {v}" for k, v in parts.items())


def _mib(n: int) -> str:
    """Bytes in the largest unit that keeps a digit before the point."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} B"


# What kind of parameter a path names: the methods' patterns (`ftjax.methods`) and the
# tables and export messages that count parameters by kind.
HEAD_PATTERN = "head/.*"
NORM_PATTERN = r"(.*/)?\w*norm/(scale|bias)"
BIAS_PATTERN = r".*/bias"
LORA_PATTERN = r".*/lora_[ab]"
ADAPTER_PATTERN = r".*_adapter/.*"
PREFIX_PATTERN = r"(.*/)?prefix/.*"
PROMPT_PATTERN = r"(.*/)?prompt/.*"

KINDS = [
    ("head", HEAD_PATTERN),
    ("lora", LORA_PATTERN),
    ("adapter", ADAPTER_PATTERN),
    ("prefix", PREFIX_PATTERN),
    ("prompt", PROMPT_PATTERN),
    ("norm", NORM_PATTERN),
    ("bias", BIAS_PATTERN),
]


def kind_of(path: str) -> str:
    """The kind of parameter a path names, for the trainable table."""
    for kind, pattern in KINDS:
        if re.fullmatch(pattern, path):
            return kind
    return "weight"
