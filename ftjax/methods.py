"""Fine-tuning methods as data: model hooks to switch on + patterns of what trains.

A `Method` is a `PeftConfig` (LoRA factors, adapters, prefixes or a soft prompt, all off
by default) and a tuple of regexes over parameter paths. `apply` switches the hooks on
and initialises the new parameters; `trainable_mask` turns the patterns (plus `head/.*`
when the task has a head) into the boolean mask the trainer splits params with.

    method = resolve("lora", model, {"rank": 8})
    model, params = apply(method, model, params, rng=0)
    mask = trainable_mask(method, params)

Methods and options (every method also takes `extra_trainable` (list of regexes, e.g.
LoRA + BitFit), `train_embeddings` and `train_head`):

| method | options | trains |
|---|---|---|
| none | | nothing (evaluation only: `ftjax.evaluate --config`, `ftjax.prompt`) |
| probe | cache_features=True | head only (features cached: the backbone runs once) |
| full | | everything |
| top_k | k=2 | the last k layers of each stack |
| layernorm | | every norm's scale (and bias) |
| bitfit | | every bias (Ben Zaken et al. 2022) |
| selective | patterns (required) | what the regexes name |
| lora | rank=8, alpha=16, dropout=0.0, targets=family default, init_from="" | LoRA factors |
| adapter | size=64, train_norms=True | bottleneck adapters (+ norms, as Houlsby et al.) |
| prefix | length=20, hidden=0 (>0: MLP reparameterisation), init_from="" | key/value prefixes |
| prompt | length=20, init="random" / "vocab" / "text", text="", init_from="" | the soft prompt |

`init_from` (lora, prefix, prompt): a PEFT adapter folder whose parameters (rank, alpha, targets /
prompt) start the method (`ftjax.peft_format.start_from_adapter`).

`python -m ftjax.methods --model minilm` prints what each method trains.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable, Collection, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ftjax import partition
from ftjax.models import hub, layers
from ftjax.models.base import PeftConfig

HEAD_PATTERN = "head/.*"
NORM_PATTERN = r"(.*/)?\w*norm/(scale|bias)"
BIAS_PATTERN = r".*/bias"
LORA_PATTERN = r".*/lora_[ab]"
ADAPTER_PATTERN = r".*_adapter/.*"
PREFIX_PATTERN = r"(.*/)?prefix/.*"
PROMPT_PATTERN = r"(.*/)?prompt/.*"


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


# --------------------------------------------------------------------------- registry


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


# --------------------------------------------------------------------------- applying


def apply(
    method: Method,
    model: nn.Module,
    params: dict,
    rng: int | jax.Array = 0,
    tokenizer=None,
    shardings: Callable[[nn.Module], Mapping[str, jax.sharding.Sharding]] | None = None,
) -> tuple[nn.Module, dict]:
    """Switches on the method's hooks; returns the new model and params (new parts random,
    the soft prompt initialised as the method says; `init_from`: a PEFT adapter's).
    `shardings` (model -> {flat path: sharding}, e.g. `sharding.model_shardings(mesh)`):
    the new parts are born in theirs."""
    if method.init_from:
        from ftjax import peft_format

        return peft_format.start_from_adapter(method, model, params)
    config = dataclasses.replace(model.config, peft=method.peft)
    new_model = type(model)(config)
    _check_lora_rank(new_model, method.peft)
    wanted = None if shardings is None else shardings(new_model)
    new_params = hub.complete_params(new_model, params, rng, wanted)
    if method.peft.prompt_length and method.prompt_init != "random":
        new_params = init_prompt(new_model, new_params, method, rng, tokenizer)
    return new_model, new_params


def _check_lora_rank(model: nn.Module, peft: PeftConfig) -> None:
    if not peft.lora_rank:
        return
    flat = partition.flatten(nn.unbox(hub.abstract_params(model, hub.family_of(model))))
    targeted = [p for p in flat if p.endswith("/lora_a")]
    if not targeted:
        dense = [p[: -len("/kernel")] for p in flat if p.endswith("/kernel")]
        raise MethodError(
            f"method lora: targets={peft.lora_targets!r} matches no dense layer; dense layer "
            f"paths look like: {', '.join(dense[:4])}, ..."
        )
    for path in targeted:
        kernel = flat[path[: -len("lora_a")] + "kernel"].shape
        if peft.lora_rank > min(kernel):
            raise MethodError(
                f"method lora: rank={peft.lora_rank} exceeds the width of {path[:-7]} "
                f"(kernel {kernel})"
            )


def init_prompt(model, params, method: Method, rng, tokenizer=None) -> dict:
    """Soft prompt from sampled vocabulary rows or from the embeddings of a text."""
    family = hub.family_of(model)
    flat = partition.flatten(params)
    table = flat[family.word_embeddings]  # may be sharded: only the chosen rows are read
    length = method.peft.prompt_length
    key = jax.random.PRNGKey(rng) if isinstance(rng, int) else rng
    if method.prompt_init == "vocab":
        candidates = np.arange(table.shape[0])
        if tokenizer is not None:  # skip special and unused tokens
            special = set(tokenizer.all_special_ids)
            candidates = np.array(
                [
                    i
                    for t, i in tokenizer.get_vocab().items()
                    if i not in special and i < table.shape[0] and not t.startswith("[unused")
                ]
            )
        ids = np.asarray(jax.random.choice(key, candidates, (length,), replace=False))
    else:
        if tokenizer is None:
            raise MethodError("method prompt: init='text' needs the model's tokenizer")
        ids = tokenizer(method.prompt_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise MethodError(f"method prompt: text={method.prompt_text!r} has no tokens")
        ids = np.resize(np.asarray(ids), length)  # repeat the text to fill the prompt
    prompt_paths = [p for p in flat if re.fullmatch(PROMPT_PATTERN, p)]
    for path in prompt_paths:
        flat[path] = jnp.take(jnp.asarray(table), jnp.asarray(ids), axis=0)
    return partition.unflatten(flat)


def trainable_mask(
    method: Method, params: dict, unreached: Collection[str] = (), training: bool = True
) -> dict[str, bool]:
    """The method's patterns over the backbone, minus `unreached` (paths the task's loss
    never reaches: no gradient, so nothing to train), plus the task head if it trains.
    Only an evaluation (`training=False`) may train nothing.

    Method patterns must each match a backbone parameter (BitFit's `.*/bias` on T5,
    which has no biases, is an error even though the head has one).
    """
    backbone = {k: v for k, v in params.items() if k != "head"}
    if method.trainable:
        mask = partition.trainable_mask(backbone, method.trainable)
    else:
        mask = dict.fromkeys(partition.flatten(backbone), False)
    chosen = any(mask.values())
    mask = {path: on and path not in unreached for path, on in mask.items()}
    if chosen and not any(mask.values()):
        raise MethodError(
            f"method {method.name}: every parameter it trains is one the task's loss never "
            f"reaches ({', '.join(sorted(unreached)[:3])}, ...)"
        )
    head = partition.flatten({"head": params["head"]}) if "head" in params else {}
    mask.update(dict.fromkeys(head, method.train_head))
    if method.name == "none" and training:
        raise MethodError(
            "method none trains nothing: evaluate the pretrained model with `python -m "
            "ftjax.evaluate --config ...` or `python -m ftjax.prompt --config ...`"
        )
    if not any(mask.values()) and training:
        why = "the task has no head" if not head else "no patterns, and method.train_head=False"
        raise MethodError(
            f"method {method.name} trains nothing ({why}); a task without a head (seq2seq, "
            "language_modeling) needs a method that trains backbone or method parameters"
        )
    return mask


# --------------------------------------------------------------------------- LoRA, prefix


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


# --------------------------------------------------------------------------- table

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
        head = Head(num_labels).init(jax.random.PRNGKey(0), features)["params"]
        new_params = {**new_params, "head": nn.unbox(head)}
        mask = trainable_mask(method, new_params, training=False)  # none: a row of zeros
        lines.append(method_row(method, new_params, mask))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m ftjax.methods", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", default="minilm", help="asset name, checkpoint folder or hub id")
    parser.add_argument("--num_labels", type=int, default=2)
    args = parser.parse_args(argv)
    model, params = hub.from_pretrained(args.model)
    print(
        f"{args.model}: {type(model).__name__}, {partition.count(params):,} backbone params, "
        f"classification head with {args.num_labels} labels"
    )
    print(table(model, params, args.num_labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
