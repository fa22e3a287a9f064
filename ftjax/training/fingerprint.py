"""What defines a run, so that resuming refuses a different one.

A resumed run must continue the run that was started: the same model, method, task,
data, order of batches, optimizer and schedule. Everything in the config defines the
run except the fields in `MAY_CHANGE` (how often it logs, evaluates and checkpoints,
how many checkpoints it keeps, the mesh, the evaluation batch size, XLA options), which
a resume may change freely.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import ml_collections

# Fields that change how a run is observed or laid out, not what it computes.
MAY_CHANGE = (
    "model.remat",  # recomputes the same values
    "train.log_every",
    "train.eval_every",
    "train.evaluations",
    "train.checkpoint_every",
    "train.keep",
    "train.peak_flops",
    "train.xla_options",
    "data.eval_batch_size",
    "data.test_examples",
    "mesh.",
)


def plain(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """The config as its config.json holds it (tuples as lists)."""
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config))


def defining_fields(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """{"section.field": value} of every field that defines the run."""
    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            elif not any(name == f or (f.endswith(".") and name.startswith(f)) for f in MAY_CHANGE):
                flat[name] = value

    walk(plain(config), "")
    return flat


def fingerprint(config: ml_collections.ConfigDict | dict) -> str:
    """sha256 of the defining fields."""
    text = json.dumps(defining_fields(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def differences(
    started: ml_collections.ConfigDict | dict, now: ml_collections.ConfigDict | dict
) -> list[str]:
    """["field: started -> now", ...] over the defining fields that differ."""
    old, new = defining_fields(started), defining_fields(now)

    def shown(fields: dict[str, Any], name: str) -> str:
        return repr(fields[name]) if name in fields else "(absent)"

    return [
        f"{name}: {shown(old, name)} -> {shown(new, name)}"
        for name in sorted(set(old) | set(new))
        if name not in old or name not in new or old[name] != new[name]
    ]
