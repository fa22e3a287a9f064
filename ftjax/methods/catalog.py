"""The methods by name: what each switches on and which parameter paths it trains
(`resolve`); the options of each are its builder's keyword arguments."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from ftjax.core.partition import (
    ADAPTER_PATTERN,
    BIAS_PATTERN,
    LORA_PATTERN,
    NORM_PATTERN,
    PREFIX_PATTERN,
    PROMPT_PATTERN,
)
from ftjax.models import hub
from ftjax.models.base import PeftConfig


class MethodError(ValueError):
    """A method name or option that cannot work; the message names it."""


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    peft: PeftConfig = PeftConfig()
    trainable: tuple[str, ...] = ()  # regexes over backbone parameter paths
    train_head: bool = True
    cache_features: bool = False  # probe: features computed once, head trained on them
    prompt_init: str = "random"
    prompt_text: str = ""
    init_from: str = ""  # a PEFT adapter folder whose parameters start the method


def _none(family, config):
    return Method("none", train_head=False)


def _probe(family, config, cache_features: bool = True):
    return Method("probe", cache_features=cache_features)


def _full(family, config):
    return Method("full", trainable=(".*",))


def _top_k(family, config, k: int = 2):
    stacks = family.stacks(config)
    depth = min(d for _, d in stacks)
    if not 1 <= k <= depth:
        raise MethodError(f"method top_k: k={k} must be between 1 and the depth ({depth})")
    patterns = tuple(
        f"{stack}/layer_({'|'.join(str(i) for i in range(d - k, d))})/.*" for stack, d in stacks
    )
    return Method("top_k", trainable=patterns)


def _layernorm(family, config):
    return Method("layernorm", trainable=(NORM_PATTERN,))


def _bitfit(family, config):
    return Method("bitfit", trainable=(BIAS_PATTERN,))


def _selective(family, config, patterns: tuple[str, ...] | list[str] = ()):
    if not patterns:
        raise MethodError("method selective needs option patterns=[regex, ...]")
    return Method("selective", trainable=tuple(patterns))


def _lora(
    family,
    config,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: str | None = None,
    init_from: str = "",
):
    if init_from:  # the adapter's rank, alpha and targets replace the options
        return Method("lora", trainable=(LORA_PATTERN,), init_from=init_from)
    if rank < 1:
        raise MethodError(f"method lora: rank={rank} must be >= 1")
    peft = PeftConfig(
        lora_rank=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        lora_targets=targets or family.lora_targets,
    )
    return Method("lora", peft=peft, trainable=(LORA_PATTERN,))


def _adapter(family, config, size: int = 64, train_norms: bool = True):
    if size < 1:
        raise MethodError(f"method adapter: size={size} must be >= 1")
    patterns = (ADAPTER_PATTERN, NORM_PATTERN) if train_norms else (ADAPTER_PATTERN,)
    return Method("adapter", peft=PeftConfig(adapter_size=size), trainable=patterns)


def _prefix(family, config, length: int = 20, hidden: int = 0, init_from: str = ""):
    if init_from:  # the adapter's prefix (its length; any MLP folded) replaces the options
        return Method("prefix", trainable=(PREFIX_PATTERN,), init_from=init_from)
    if length < 1:
        raise MethodError(f"method prefix: length={length} must be >= 1")
    peft = PeftConfig(prefix_length=length, prefix_hidden=hidden)
    return Method("prefix", peft=peft, trainable=(PREFIX_PATTERN,))


def _prompt(
    family, config, length: int = 20, init: str = "random", text: str = "", init_from: str = ""
):
    if init_from:  # the adapter's prompt replaces the options
        return Method("prompt", trainable=(PROMPT_PATTERN,), init_from=init_from)
    if length < 1:
        raise MethodError(f"method prompt: length={length} must be >= 1")
    if init not in ("random", "vocab", "text"):
        raise MethodError(f"method prompt: init={init!r}; choose random, vocab or text")
    if init == "text" and not text:
        raise MethodError("method prompt: init='text' needs option text='...'")
    return Method(
        "prompt",
        peft=PeftConfig(prompt_length=length),
        trainable=(PROMPT_PATTERN,),
        prompt_init=init,
        prompt_text=text,
    )


METHODS: dict[str, Callable[..., Method]] = {
    "none": _none,
    "probe": _probe,
    "full": _full,
    "top_k": _top_k,
    "layernorm": _layernorm,
    "bitfit": _bitfit,
    "selective": _selective,
    "lora": _lora,
    "adapter": _adapter,
    "prefix": _prefix,
    "prompt": _prompt,
}
COMMON_OPTIONS = ("extra_trainable", "train_embeddings", "train_head")


def resolve(name: str, model: nn.Module, options: Mapping[str, Any] | None = None) -> Method:
    """The method `name` for `model`'s family, with `options` (see the module docstring)."""
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    options = dict(options or {})
    common = {k: options.pop(k) for k in COMMON_OPTIONS if k in options}
    builder = METHODS[name]
    family = hub.family_of(model)
    try:
        method = builder(family, model.config, **options)
    except TypeError as err:
        known = builder.__code__.co_varnames[2 : builder.__code__.co_argcount]
        raise MethodError(
            f"method {name}: unknown option(s) {sorted(options)}; options: "
            f"{', '.join(known + COMMON_OPTIONS)}"
        ) from err
    extra = tuple(common.get("extra_trainable", ()))
    if common.get("train_embeddings"):
        extra += (family.embeddings_pattern,)
    return dataclasses.replace(
        method,
        trainable=method.trainable + extra,
        train_head=common.get("train_head", True) and method.train_head,  # none: never
    )
