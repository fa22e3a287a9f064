"""Scanned layer stacks (`model.scan_layers`) and the per-layer paths everything else speaks.

A scanned stack stores each layer parameter once, stacked over layers, at
`<stack>/layers/<rest>` ([depth, ...]); everywhere outside the compiled steps (trainable
masks, checkpoints' HF tensor tables, exports, parameter tables) params are *canonical*:
`<stack>/layer_i/<rest>`, as the unscanned model holds them. `to_storage` and
`to_canonical` convert between the two, and `layer_masks` says which layers of a stacked
leaf train, so a method's regex over `decoder/layer_3/...` still selects layer 3 alone.

LoRA on some layers only: a scanned stack has one structure for all layers, so every
layer carries the factors, and the layers that the targets do not name hold zeros in
both `lora_a` and `lora_b`. Those are inert: the product is zero and so are both
factors' gradients (each is a product with the other, zero, factor), so no optimizer
step moves them. `to_canonical` drops them again.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import numpy as np

from ftjax.models.base import STACKED

Flat = Mapping[str, Any]
INERT_HOLES = ("lora_a", "lora_b")  # the only params a layer of a scanned stack may lack


def is_scanned(model: nn.Module) -> bool:
    return model.config.scan_layers


def unscanned(model: nn.Module) -> nn.Module:
    """The same model with its layers unrolled: the one whose params are canonical."""
    if not is_scanned(model):
        return model
    return type(model)(dataclasses.replace(model.config, scan_layers=False))


Stacks = Mapping[str, int]  # {stack path: depth}: "encoder": 12 (`hub.stack_depths`)


def _layer_path(path: str, stacks: Stacks) -> tuple[str, int, str] | None:
    """(stack, layer index, rest) of a canonical per-layer path, else None."""
    for stack in stacks:
        match = re.fullmatch(rf"{re.escape(stack)}/layer_(\d+)/(.+)", path)
        if match:
            return stack, int(match[1]), match[2]
    return None


def storage_path(path: str, stacks: Stacks) -> str:
    """Where a canonical path lives in a scanned model's params (unchanged if not a layer's)."""
    parts = _layer_path(path, stacks)
    return path if parts is None else f"{parts[0]}/{STACKED}/{parts[2]}"


def to_storage(
    model: nn.Module,
    stacks: Stacks,
    flat: Flat,
    stack: Callable[[str, list[Any]], Any] | None = None,
) -> dict[str, Any]:
    """Canonical flat params -> the flat params `model` applies (stacked when scanned).
    Layers lacking a LoRA factor (targets on some layers only) get inert zeros.
    `stack(path, layers)` builds a stacked leaf from its layers' values in order (default:
    `np.stack` on the host; the train state stacks global arrays on their devices)."""
    if not is_scanned(model):
        return dict(flat)
    out: dict[str, Any] = {}
    grouped: dict[str, dict[int, Any]] = {}
    for path, leaf in flat.items():
        parts = _layer_path(path, stacks)
        if parts is None:
            out[path] = leaf
        else:
            grouped.setdefault(storage_path(path, stacks), {})[parts[1]] = leaf
    for path, by_layer in grouped.items():
        depth = stacks[path.split(f"/{STACKED}/")[0]]
        missing = [i for i in range(depth) if i not in by_layer]
        if missing and path.rsplit("/", 1)[-1] not in INERT_HOLES:
            raise ValueError(f"scanned stack: param {path} is missing in layers {missing}")
        like = next(iter(by_layer.values()))
        hole = np.zeros(np.shape(like), like.dtype)  # a LoRA factor: small
        layers = [by_layer.get(i, hole) for i in range(depth)]
        if stack is None:
            out[path] = np.stack([np.asarray(x) for x in layers])
        else:
            out[path] = stack(path, layers)
    return out


def to_canonical(model: nn.Module, stacks: Stacks, flat: Flat) -> dict[str, Any]:
    """The flat params `model` applies -> canonical per-layer ones (the inert LoRA zeros
    of layers the targets do not name dropped)."""
    if not is_scanned(model):
        return dict(flat)
    peft = model.config.peft
    out: dict[str, Any] = {}
    for path, leaf in flat.items():
        stack, sep, rest = path.partition(f"/{STACKED}/")
        if not sep or stack not in stacks:
            out[path] = leaf
            continue
        for i in range(stacks[stack]):
            canonical = f"{stack}/layer_{i}/{rest}"
            module, name = canonical.rsplit("/", 1)
            if name in INERT_HOLES and not peft.has_lora(module):
                continue
            out[canonical] = leaf[i]
    return out


def layer_masks(
    model: nn.Module, stacks: Stacks, mask: Mapping[str, bool]
) -> tuple[dict[str, bool], dict[str, np.ndarray]]:
    """A canonical trainable mask as (the mask over `model`'s own flat params, and for
    each stacked leaf whose layers do not all agree, which layers train [depth] bool):
    such a leaf trains as a whole and the train step zeroes the other layers' updates."""
    if not is_scanned(model):
        return dict(mask), {}
    per_layer: dict[str, np.ndarray] = {}
    leaf_mask: dict[str, bool] = {}
    for path, trains in mask.items():
        parts = _layer_path(path, stacks)
        if parts is None:
            leaf_mask[path] = trains
            continue
        stored = storage_path(path, stacks)
        per_layer.setdefault(stored, np.zeros(stacks[parts[0]], bool))[parts[1]] = trains
    partial = {}
    for path, layers in per_layer.items():
        leaf_mask[path] = bool(layers.any())
        if layers.any() and not layers.all():
            partial[path] = layers
    return leaf_mask, partial
