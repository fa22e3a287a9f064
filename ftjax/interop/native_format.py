"""ftjax's own export format: every parameter as ftjax runs it, for what neither PEFT nor
transformers can represent (bottleneck adapters, T5 prefixes in the encoder and cross-attention,
heads on layer mixes or mean pooling).

    write(out, model, params, why="...", run_config={...})
    model, params, run_config = load(out)

The folder holds `params.safetensors` (keys are ftjax parameter paths,
"encoder/layer_0/attention/query/lora_a"), `ftjax_model.json` (the family, its config
with the method hooks, and why this format was chosen) and the run's `run_config.json`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ftjax.core import partition
from ftjax.models import hub

PARAMS_FILE = "params.safetensors"
MODEL_FILE = "ftjax_model.json"
RUN_FILE = "run_config.json"


def write(
    out: str | Path,
    model,
    params: Mapping[str, Any],
    why: str,
    run_config: Mapping[str, Any] | None = None,
) -> Path:
    """Writes `params` (backbone, method parameters, task head) and `model`'s config."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    flat = {p: np.ascontiguousarray(v) for p, v in partition.flatten(params).items()}
    save_file(flat, out / PARAMS_FILE)
    family = hub.family_of(model)
    described = {
        "model_type": family.model_types[0],
        "config": dataclasses.asdict(model.config),
        "why": why,
    }
    (out / MODEL_FILE).write_text(json.dumps(described, indent=2) + "\n")
    if run_config is not None:
        (out / RUN_FILE).write_text(json.dumps(dict(run_config), indent=2) + "\n")
    return out


def load(folder: str | Path) -> tuple[Any, dict, dict | None]:
    """(model, params, the run's config or None) of a folder `write` made."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file():
        raise hub.CheckpointError(f"{folder} has no {MODEL_FILE}: not an ftjax export")
    described = json.loads((folder / MODEL_FILE).read_text())
    family = hub.FAMILIES[described["model_type"]]
    config_class = family.config_from_hf.__self__  # the config dataclass (a classmethod's owner)
    model = family.module(_rebuild(config_class, described["config"]))
    params = partition.unflatten(load_file(folder / PARAMS_FILE))
    run = folder / RUN_FILE
    return model, params, json.loads(run.read_text()) if run.is_file() else None


def _rebuild(cls, values: Mapping[str, Any]):
    """A (frozen) config dataclass from `dataclasses.asdict` output, nested ones included."""
    fields = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            value = _rebuild(type(default), value)
        elif isinstance(value, list):
            value = tuple(value)
        fields[f.name] = value
    return cls(**fields)
