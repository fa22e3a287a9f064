"""What every model family provides: its output type and its checkpoint vocabulary.

A family (bert.py, gpt2.py, t5.py) is a `Family` record: a config class that reads and
writes Hugging Face `config.json` dicts, a Flax module, and a table of `TensorMap`s that
says which HF tensor fills which ftjax parameter. `hub.py` uses that one table in both
directions, so loading and saving cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class ModelOutput:
    """What a backbone returns.

    `hidden_states` (when asked for) follows Hugging Face's convention: the embedding
    output first, then one entry per layer, the last one after any final norm.
    """

    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None
    pooled: jax.Array | None = None  # BERT's tanh pooler over [CLS]
    logits: jax.Array | None = None  # LM logits, where the checkpoint has an LM head
    encoder_last_hidden_state: jax.Array | None = None  # encoder-decoders
    encoder_hidden_states: tuple[jax.Array, ...] | None = None


# Module name of a scanned layer stack (`model.scan_layers`): its params live under
# `<stack>/layers/...` with a leading layer axis instead of `<stack>/layer_i/...`.
STACKED = "layers"


@dataclasses.dataclass(frozen=True)
class PeftConfig:
    """Extra parameters that fine-tuning methods switch on; all off by default.

    Every family's config has a `peft` field of this type, and the layers read it:
    LoRA factors in the dense layers whose module path fully matches `lora_targets`
    (e.g. "encoder/layer_0/attention/query"), bottleneck adapters after the attention
    and feed-forward sublayers, trainable key/value prefixes in every attention layer
    (optionally produced by an MLP, Li & Liang's reparameterisation), and a soft prompt
    prepended to the (encoder) input embeddings.
    """

    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = ""  # regex over dense-layer module paths
    adapter_size: int = 0
    prefix_length: int = 0
    prefix_hidden: int = 0  # > 0: prefixes come from an MLP of this width (fold later)
    prompt_length: int = 0
    # Set inside a scanned stack of this many layers (`layers.run_stack`): module paths
    # there name no layer, so LoRA targets are tried against every layer's own path.
    scan_depth: int = 0

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    def has_lora(self, module_path: str) -> bool:
        """Does the dense layer at `module_path` carry LoRA factors? Inside a scanned
        stack: does it in some layer (the others hold inert zeros, `models.stacking`)."""
        if not self.lora_rank:
            return False
        paths = [module_path]
        if self.scan_depth:
            parts = module_path.split("/")
            at = parts.index(STACKED)
            paths = [
                "/".join([*parts[:at], f"layer_{i}", *parts[at + 1 :]])
                for i in range(self.scan_depth)
            ]
        return any(re.fullmatch(self.lora_targets, path) for path in paths)


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One ftjax parameter <- one Hugging Face tensor (or one slice of a fused tensor).

    `transpose` converts torch Linear's (out, in) to ftjax's (in, out); `part=(i, n)`
    takes the i-th of n equal slices along the last axis (GPT-2's fused c_attn).
    """

    path: str  # "encoder/layer_0/attention/query/kernel"
    hf_name: str  # "encoder.layer.0.attention.self.query.weight"
    transpose: bool = False
    part: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything hub.py needs to know about one model family."""

    model_types: tuple[str, ...]  # HF `model_type` values this family reads
    config_from_hf: Callable[[dict[str, Any]], Any]
    module: type[nn.Module]
    tensor_maps: Callable[[Any], list[TensorMap]]
    # Prefixes a base-model checkpoint may carry (e.g. "bert." in BertForPreTraining).
    hf_prefixes: tuple[str, ...] = ("",)
    # Prefix written on save, chosen so transformers' LM-head class loads the folder.
    save_prefix: str = ""
    # Builds dummy inputs for shape inference: (config) -> kwargs for module.__call__.
    dummy_inputs: Callable[[Any], dict[str, Any]] = lambda config: {
        "input_ids": jnp.zeros((1, 8), jnp.int32)
    }
    # Settles config fields that only the checkpoint's tensors reveal (does it carry a
    # pooler? an untied LM head?): (config, {hf_name: array}) -> config.
    fit_to_checkpoint: Callable[[Any, dict[str, Any]], Any] = lambda config, tensors: config
    # What methods need to know about the family's parameter paths:
    stacks: Callable[[Any], list[tuple[str, int]]] = lambda config: []  # (path, depth)
    word_embeddings: str = ""  # path of the token embedding table
    embeddings_pattern: str = ""  # every embedding parameter
    lora_targets: str = ""  # default LoRA targets: attention query and value
    # How many token positions the model can take ((config) -> int), or None when
    # positions are relative or rotary and no table limits them.
    max_positions: Callable[[Any], int | None] = lambda config: None
    # What tasks need to know: is it a causal decoder (GPT-style: pool the last token)?
    causal: bool = False
    # Whether transformers' sequence classifier of the family has a bias (GPT-2's and
    # Llama's `score` has none): pooled heads follow it, so a trained head exports as is.
    sequence_head_bias: bool = True
    # Parameters that encoder features (token states of the first stack) never reach,
    # e.g. T5's decoder and LM head: tasks that read only those states leave them frozen.
    unused_by_encoder_features: tuple[str, ...] = ()


def dtype_of(name: str) -> Any:
    """Config fields hold dtype names (shell-friendly); modules need dtypes."""
    try:
        return jnp.dtype(name)
    except TypeError as err:
        raise ValueError(f"config field dtype={name!r} is not a dtype (float32, bfloat16)") from err


def frozen_dtype(config: Any, dtype: Any) -> Any:
    """How a frozen param of `dtype` is stored: floating ones as the config's
    `param_dtype` (trainable ones stay float32 master weights), integer ones as they are."""
    return jnp.dtype(config.param_dtype) if jnp.issubdtype(dtype, jnp.floating) else dtype
