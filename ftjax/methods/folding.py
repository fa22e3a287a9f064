"""Trained method parameters folded into plain ones: LoRA merged into its kernels (and
back), a prefix MLP replaced by the prefixes it produces."""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from ftjax.core import partition
from ftjax.models import layers
from ftjax.models.base import PeftConfig


def merge_lora(model: nn.Module, params: dict) -> tuple[nn.Module, dict, dict]:
    """Folds `A @ B * alpha / r` into each kernel: a plain model with no LoRA overhead.

    Returns (model without LoRA, merged params, the LoRA factors) so `unmerge_lora` can
    restore the adapted model exactly (up to float rounding).
    """
    scale = model.config.peft.lora_scale
    flat = partition.flatten(params)
    factors = {p: v for p, v in flat.items() if p.endswith(("/lora_a", "/lora_b"))}
    merged = {p: v for p, v in flat.items() if p not in factors}
    for path in factors:
        if path.endswith("/lora_a"):
            base = path[: -len("lora_a")]
            delta = factors[path] @ factors[base + "lora_b"] * scale
            merged[base + "kernel"] = merged[base + "kernel"] + delta
    config = dataclasses.replace(
        model.config, peft=dataclasses.replace(model.config.peft, lora_rank=0)
    )
    return type(model)(config), partition.unflatten(merged), factors


def unmerge_lora(model: nn.Module, merged: dict, factors: dict, peft: PeftConfig):
    """Inverse of `merge_lora`: subtracts the LoRA product and restores the factors."""
    flat = partition.flatten(merged)
    for path in factors:
        if path.endswith("/lora_a"):
            base = path[: -len("lora_a")]
            flat[base + "kernel"] = (
                flat[base + "kernel"] - factors[path] @ factors[base + "lora_b"] * peft.lora_scale
            )
    flat.update(factors)
    config = dataclasses.replace(model.config, peft=peft)
    return type(model)(config), partition.unflatten(flat)


def fold_prefix(model: nn.Module, params: dict) -> tuple[nn.Module, dict]:
    """Replaces a trained prefix MLP by the plain prefixes it produces (Li & Liang 2021)."""
    peft = model.config.peft
    if not peft.prefix_hidden:
        return model, params
    flat = partition.flatten(params)
    root = next(p for p in flat if p.endswith("prefix/embedding"))[: -len("embedding")]
    sub = {p[len(root) :]: v for p, v in flat.items() if p.startswith(root)}
    cfg = model.config
    sites = sub["output/kernel"].shape[1] // (2 * cfg.num_kv_heads * cfg.head_dim)
    encoder = layers.PrefixEncoder(peft, sites, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size)
    key_value = encoder.apply({"params": partition.unflatten(sub)})
    flat = {p: v for p, v in flat.items() if not p.startswith(root)}
    flat[root + "key_value"] = key_value
    config = dataclasses.replace(cfg, peft=dataclasses.replace(peft, prefix_hidden=0))
    return type(model)(config), partition.unflatten(flat)
