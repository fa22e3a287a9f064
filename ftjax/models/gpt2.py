"""GPT-2: decoder-only, causal, pre-LN, LM head tied to the token embeddings."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models import layers
from ftjax.models.base import Family, ModelOutput, PeftConfig, TensorMap, dtype_of


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu_new"
    max_position_embeddings: int = 1024
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1  # resid_pdrop
    embedding_dropout: float = 0.1  # embd_pdrop
    attention_dropout: float = 0.1
    initializer_range: float = 0.02
    scale_attention: bool = True
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    dtype: str = "float32"  # compute dtype; params are stored as `param_dtype`
    param_dtype: str = "float32"  # storage of frozen params (trainable ones stay float32)
    remat: str = "none"  # per-layer rematerialisation in training (layers.REMAT_POLICIES)
    scan_layers: bool = False  # one nn.scan over the layer stack (layers.run_stack)
    peft: PeftConfig = PeftConfig()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> GPT2Config:
        if hf.get("scale_attn_by_inverse_layer_idx"):
            raise ValueError(
                "config.json scale_attn_by_inverse_layer_idx=true is not supported "
                "(no released GPT-2 checkpoint uses it)"
            )
        if hf.get("add_cross_attention"):
            raise ValueError(
                "config.json add_cross_attention=true: GPT-2 with cross-attention is not supported"
            )
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["n_embd"],
            num_layers=hf["n_layer"],
            num_heads=hf["n_head"],
            intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"],
            hidden_act=hf.get("activation_function", "gelu_new"),
            max_position_embeddings=hf["n_positions"],
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            hidden_dropout=hf.get("resid_pdrop", 0.1),
            embedding_dropout=hf.get("embd_pdrop", 0.1),
            attention_dropout=hf.get("attn_pdrop", 0.1),
            initializer_range=hf.get("initializer_range", 0.02),
            scale_attention=hf.get("scale_attn_weights", True),
            bos_token_id=hf.get("bos_token_id", 50256),
            eos_token_id=hf.get("eos_token_id", 50256),
        )

    def to_hf(self) -> dict[str, Any]:
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size,
            "n_embd": self.hidden_size,
            "n_layer": self.num_layers,
            "n_head": self.num_heads,
            "n_inner": self.intermediate_size,
            "activation_function": self.hidden_act,
            "n_positions": self.max_position_embeddings,
            "layer_norm_epsilon": self.layer_norm_eps,
            "resid_pdrop": self.hidden_dropout,
            "embd_pdrop": self.embedding_dropout,
            "attn_pdrop": self.attention_dropout,
            "initializer_range": self.initializer_range,
            "scale_attn_weights": self.scale_attention,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }


class GPT2Block(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, x, shared, prefix, deterministic: bool) -> jax.Array:
        cfg, dtype = self.config, dtype_of(self.config.dtype)
        (mask,) = shared
        init = nn.initializers.normal(cfg.initializer_range)
        dropout = layers.Dropout(cfg.hidden_dropout)
        h = layers.LayerNorm(cfg.layer_norm_eps, dtype, name="attention_norm")(x)
        h = layers.Attention(
            cfg.num_heads,
            cfg.head_dim,
            scale=cfg.scale_attention,
            causal=True,
            dropout_rate=cfg.attention_dropout,
            dtype=dtype,
            kernel_init=init,
            peft=cfg.peft,
            name="attention",
        )(h, mask, prefix=prefix, deterministic=deterministic)
        x = x + layers.adapt(
            cfg.peft, dropout(h, deterministic=deterministic), "attention_adapter", dtype
        )
        h = layers.LayerNorm(cfg.layer_norm_eps, dtype, name="mlp_norm")(x)
        h = layers.FeedForward(
            cfg.intermediate_size,
            cfg.hidden_act,
            dtype=dtype,
            kernel_init=init,
            peft=cfg.peft,
            name="mlp",
        )(h, deterministic=deterministic)
        return x + layers.adapt(
            cfg.peft, dropout(h, deterministic=deterministic), "mlp_adapter", dtype
        )


class GPT2Decoder(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, keep_states: bool = True) -> list[jax.Array]:
        cfg = self.config
        prefix = layers.prefixes(
            cfg.peft, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
        )
        states = layers.run_stack(
            GPT2Block, cfg, cfg.num_layers, x, (mask,), prefix, deterministic,
            keep_states=keep_states,
        )  # fmt: skip
        x = states[-1]
        states[-1] = layers.LayerNorm(cfg.layer_norm_eps, dtype_of(cfg.dtype), name="final_norm")(x)
        return states


class GPT2Model(nn.Module):
    """GPT-2 with its tied LM head; returns final hidden states and logits.

    Position ids default to each token's index among the real tokens of its row, so
    left padding leaves the real tokens' positions unchanged; for right-padded batches
    this is Hugging Face's default `arange`. A prefix or a soft prompt of length P takes
    positions 0..P-1 and moves the real tokens to P.. (PEFT's convention, where the
    prefix is a key/value cache and the prompt input embeddings); given position ids
    count real tokens and are moved by P the same way.

    `decode="prefill"` or `"step"` runs with a key/value cache (`ftjax.models.generation`): the
    attention mask then spans the whole cache and position ids are required; a soft
    prompt enters the cache at prefill only.

    `logit_positions` [batch, k] (indices into each row of the output): logits only
    there, [batch, k, vocab] (`layers.at_positions`); the default is every position.
    """

    config: GPT2Config

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        segment_ids: jax.Array | None = None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        decode: str = "",
        logit_positions: jax.Array | None = None,
    ) -> ModelOutput:
        cfg, dtype = self.config, dtype_of(self.config.dtype)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        position_ids = layers.real_token_positions(
            attention_mask, position_ids, decode, "GPT2Model", layers.virtual_tokens(cfg.peft)
        )
        wte = layers.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            (layers.VOCAB, layers.EMBED),
            dtype,
            cfg.initializer_range,
            name="word_embeddings",
        )
        wpe = layers.Embed(
            cfg.max_position_embeddings,
            cfg.hidden_size,
            (layers.POSITION, layers.EMBED),
            dtype,
            cfg.initializer_range,
            name="position_embeddings",
        )
        # The prompt enters as input embeddings: it gains position embeddings 0..P-1.
        x, attention_mask, prompted = layers.prepend_prompt(
            cfg.peft, wte(input_ids), attention_mask, decode
        )
        x = x + wpe(layers.with_prompt_positions(position_ids, prompted))
        x = layers.Dropout(cfg.embedding_dropout)(x, deterministic=deterministic)
        # causality is the attention's
        mask = layers.self_attention_mask(attention_mask, segment_ids, prompted)
        states = GPT2Decoder(cfg, name="decoder")(x, mask, deterministic, output_hidden_states)
        states = [s[:, prompted:] for s in states]  # outputs align with inputs
        return ModelOutput(
            last_hidden_state=states[-1],
            hidden_states=tuple(states) if output_hidden_states else None,
            logits=wte.attend(layers.at_positions(states[-1], logit_positions)),
        )


def tensor_maps(cfg: GPT2Config) -> list[TensorMap]:
    # GPT-2 uses Conv1D, whose weight is already (in, out): nothing is transposed.
    def affine(path: str, hf: str, part: tuple[int, int] | None = None) -> list[TensorMap]:
        weight = "scale" if path.endswith("norm") else "kernel"
        return [
            TensorMap(f"{path}/{weight}", f"{hf}.weight", part=part),
            TensorMap(f"{path}/bias", f"{hf}.bias", part=part),
        ]

    maps = [
        TensorMap("word_embeddings/embedding", "wte.weight"),
        TensorMap("position_embeddings/embedding", "wpe.weight"),
        *affine("decoder/final_norm", "ln_f"),
    ]
    for i in range(cfg.num_layers):
        ours, theirs = f"decoder/layer_{i}", f"h.{i}"
        maps += affine(f"{ours}/attention_norm", f"{theirs}.ln_1")
        for index, proj in enumerate(("query", "key", "value")):
            maps += affine(f"{ours}/attention/{proj}", f"{theirs}.attn.c_attn", (index, 3))
        maps += affine(f"{ours}/attention/output", f"{theirs}.attn.c_proj")
        maps += affine(f"{ours}/mlp_norm", f"{theirs}.ln_2")
        maps += affine(f"{ours}/mlp/intermediate", f"{theirs}.mlp.c_fc")
        maps += affine(f"{ours}/mlp/output", f"{theirs}.mlp.c_proj")
    return maps


FAMILY = Family(
    model_types=("gpt2",),
    config_from_hf=GPT2Config.from_hf,
    module=GPT2Model,
    tensor_maps=tensor_maps,
    hf_prefixes=("", "transformer."),
    save_prefix="transformer.",
    stacks=lambda cfg: [("decoder", cfg.num_layers)],
    word_embeddings="word_embeddings/embedding",
    embeddings_pattern="(word|position)_embeddings/.*",
    lora_targets=r"decoder/layer_\d+/attention/(query|value)",
    causal=True,
    sequence_head_bias=False,
    max_positions=lambda cfg: cfg.max_position_embeddings,
)
