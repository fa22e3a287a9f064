"""A run as a transformers checkpoint folder: LoRA merged into the kernels, the task head
under the class `ftjax.interop.hf_classes` names, config.json naming that class.

    write_hf(model, params, cls, "out/")   # AutoModelFor*.from_pretrained("out/") loads it

Method parameters no plain checkpoint holds (adapters, prefixes, soft prompts) are
refused, never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ftjax import methods
from ftjax.core import partition
from ftjax.interop.hf_classes import ExportError, HfClass, head_tensors
from ftjax.models import hub

UNMERGEABLE = {
    "adapter": "bottleneck adapters add layers no transformers class has; choose --format ftjax",
    "prefix": "prefix key/values are no weights of a transformers class; choose --format "
    "ftjax (or --format peft where PEFT's prefix computes the same)",
    "prompt": "a soft prompt is no weight of a transformers class; choose --format peft "
    "(where PEFT's prompt tuning computes the same) or ftjax",
}


def checkpoint_files(
    model, params: Mapping[str, Any], cls: HfClass
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config.json dict, tensors by name in `cls`); raises ExportError for what a
    checkpoint of that class cannot hold."""
    flat = partition.flatten(params)
    for kind in sorted({methods.kind_of(p) for p in flat} & set(UNMERGEABLE)):
        raise ExportError(f"method {kind}: {UNMERGEABLE[kind]}")
    head = head_tensors(flat, cls)
    if model.config.peft.lora_rank:
        model, params, _ = methods.merge_lora(model, params)
    base = hub.params_to_tensors(model, params, drop=("head/.*",))  # written under cls.head
    tensors = {cls.name(k): v for k, v in base.items() if cls.holds(k)}
    tensors.update(head)
    config = {**model.config.to_hf(), "architectures": [cls.architecture], **cls.config}
    return config, tensors


def write_hf(model, params: Mapping[str, Any], cls: HfClass, out: str | Path) -> Path:
    from safetensors.numpy import save_file

    config, tensors = checkpoint_files(model, params, cls)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}  # C order on disk
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
