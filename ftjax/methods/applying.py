"""A method on a model: its hooks switched on, new parameters born (sharded when asked),
the soft prompt initialised; and the boolean mask of what trains."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ftjax.core import partition
from ftjax.core.partition import PROMPT_PATTERN
from ftjax.methods.catalog import Method, MethodError
from ftjax.models import hub
from ftjax.models.base import PeftConfig


def apply(
    method: Method,
    model: nn.Module,
    params: dict,
    rng: int | jax.Array = 0,
    tokenizer=None,
    shardings: Callable[[nn.Module], Mapping[str, jax.sharding.Sharding]] | None = None,
) -> tuple[nn.Module, dict]:
    """Switches on the method's hooks; returns the new model and params (new parts random,
    the soft prompt initialised as the method says). A method with `init_from` starts from
    a PEFT adapter instead (`interop.peft_format.start_from_adapter`, which a run calls).
    `shardings` (model -> {flat path: sharding}, e.g. `sharding.model_shardings(mesh)`):
    the new parts are born in theirs."""
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
    key = jax.random.key(rng) if isinstance(rng, int) else rng
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
