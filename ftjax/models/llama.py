"""The Llama family (Llama, SmolLM, and the Mistral / Qwen-style decoders that share it):
pre-norm decoder with RMSNorm, rotary positions, grouped-query attention and a SwiGLU
feed-forward; LM head tied to the token embeddings or separate."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models import layers, rope
from ftjax.models.base import Family, ModelOutput, PeftConfig, TensorMap, dtype_of


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    intermediate_size: int = 11008
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope: rope.Rope = rope.Rope()
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    dtype: str = "float32"  # compute dtype; params are stored as `param_dtype`
    param_dtype: str = "float32"  # storage of frozen params (trainable ones stay float32)
    remat: str = "none"  # per-layer rematerialisation in training (layers.REMAT_POLICIES)
    scan_layers: bool = False  # one nn.scan over the layer stack (layers.run_stack)
    peft: PeftConfig = PeftConfig()

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> LlamaConfig:
        heads = hf["num_attention_heads"]
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            intermediate_size=hf["intermediate_size"],
            hidden_act=hf.get("hidden_act", "silu"),
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope=rope.Rope.from_hf(hf),
            attention_bias=hf.get("attention_bias", False),
            mlp_bias=hf.get("mlp_bias", False),
            tie_word_embeddings=hf.get("tie_word_embeddings", False),
            attention_dropout=hf.get("attention_dropout", 0.0),
            initializer_range=hf.get("initializer_range", 0.02),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )

    def to_hf(self) -> dict[str, Any]:
        return {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            **self.rope.to_hf(),
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": self.attention_dropout,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }


class LlamaBlock(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, shared, prefix, deterministic: bool) -> jax.Array:
        cfg, dtype = self.config, dtype_of(self.config.dtype)
        mask, rotary = shared
        init = nn.initializers.normal(cfg.initializer_range)
        h = layers.RMSNorm(cfg.rms_norm_eps, dtype, name="attention_norm")(x)
        h = layers.Attention(
            cfg.num_heads,
            cfg.head_dim,
            num_kv_heads=cfg.num_kv_heads,
            use_bias=cfg.attention_bias,
            causal=True,
            dropout_rate=cfg.attention_dropout,
            dtype=dtype,
            kernel_init=init,
            peft=cfg.peft,
            name="attention",
        )(h, mask, prefix=prefix, rotary=rotary, deterministic=deterministic)
        x = x + layers.adapt(cfg.peft, h, "attention_adapter", dtype)
        h = layers.RMSNorm(cfg.rms_norm_eps, dtype, name="mlp_norm")(x)
        h = layers.FeedForward(
            cfg.intermediate_size,
            cfg.hidden_act,
            gated=True,
            use_bias=cfg.mlp_bias,
            dtype=dtype,
            kernel_init=init,
            peft=cfg.peft,
            name="mlp",
        )(h, deterministic=deterministic)
        return x + layers.adapt(cfg.peft, h, "mlp_adapter", dtype)


class LlamaDecoder(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(
        self, x, mask, rotary, deterministic: bool, keep_states: bool = True
    ) -> list[jax.Array]:
        cfg = self.config
        prefix = layers.prefixes(
            cfg.peft, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
        )
        states = layers.run_stack(
            LlamaBlock, cfg, cfg.num_layers, x, (mask, rotary), prefix, deterministic,
            keep_states=keep_states,
        )  # fmt: skip
        norm = layers.RMSNorm(cfg.rms_norm_eps, dtype_of(cfg.dtype), name="final_norm")
        states[-1] = norm(states[-1])
        return states


class LlamaModel(nn.Module):
    """A Llama-family decoder with its LM head; returns final hidden states and logits.

    Positions count real tokens (`layers.real_token_positions`), so left or right
    padding leaves every real token's rotation unchanged. A prefix or soft prompt of
    length P takes positions 0..P-1 (prompt slots rotate by them, prefix keys are stored
    unrotated, as in PEFT's key/value cache) and real tokens rotate by P + their index.
    `decode="prefill"` / `"step"` runs with a key/value cache (`ftjax.models.generation`);
    the prompt enters the cache at prefill only. `logit_positions` [batch, k]: logits
    only there ([batch, k, vocab], `layers.at_positions`).
    """

    config: LlamaConfig

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
        positions = layers.real_token_positions(
            attention_mask, position_ids, decode, "LlamaModel", layers.virtual_tokens(cfg.peft)
        )
        embed = layers.Embed(
            cfg.vocab_size, cfg.hidden_size, (layers.VOCAB, layers.EMBED), dtype,
            cfg.initializer_range, name="word_embeddings",
        )  # fmt: skip
        x, attention_mask, prompted = layers.prepend_prompt(
            cfg.peft, embed(input_ids), attention_mask, decode
        )
        positions = layers.with_prompt_positions(positions, prompted)
        inv_freq = rope.inverse_frequencies(
            cfg.rope, cfg.head_dim, cfg.max_position_embeddings, positions
        )
        # causality is the attention's
        mask = layers.self_attention_mask(attention_mask, segment_ids, prompted)
        states = LlamaDecoder(cfg, name="decoder")(
            x, mask, (positions, inv_freq), deterministic, output_hidden_states
        )
        states = [s[:, prompted:] for s in states]  # outputs align with inputs
        read = layers.at_positions(states[-1], logit_positions)
        if cfg.tie_word_embeddings:
            logits = embed.attend(read)
        else:
            head = layers.Dense(
                cfg.vocab_size, (layers.EMBED, layers.VOCAB), use_bias=False, dtype=dtype,
                name="lm_head",
            )  # fmt: skip
            logits = head(read)
        return ModelOutput(
            last_hidden_state=states[-1],
            hidden_states=tuple(states) if output_hidden_states else None,
            logits=logits,
        )


def tensor_maps(cfg: LlamaConfig) -> list[TensorMap]:
    def linear(path: str, hf: str, bias: bool) -> list[TensorMap]:
        maps = [TensorMap(f"{path}/kernel", f"{hf}.weight", transpose=True)]
        return maps + ([TensorMap(f"{path}/bias", f"{hf}.bias")] if bias else [])

    maps = [
        TensorMap("word_embeddings/embedding", "model.embed_tokens.weight"),
        TensorMap("decoder/final_norm/scale", "model.norm.weight"),
    ]
    if not cfg.tie_word_embeddings:
        maps.append(TensorMap("lm_head/kernel", "lm_head.weight", transpose=True))
    for i in range(cfg.num_layers):
        ours, theirs = f"decoder/layer_{i}", f"model.layers.{i}"
        maps.append(TensorMap(f"{ours}/attention_norm/scale", f"{theirs}.input_layernorm.weight"))
        maps.append(
            TensorMap(f"{ours}/mlp_norm/scale", f"{theirs}.post_attention_layernorm.weight")
        )
        for proj, hf in (("query", "q"), ("key", "k"), ("value", "v"), ("output", "o")):
            maps += linear(
                f"{ours}/attention/{proj}", f"{theirs}.self_attn.{hf}_proj", cfg.attention_bias
            )
        for proj, hf in (("gate", "gate"), ("intermediate", "up"), ("output", "down")):
            maps += linear(f"{ours}/mlp/{proj}", f"{theirs}.mlp.{hf}_proj", cfg.mlp_bias)
    return maps


FAMILY = Family(
    model_types=("llama",),
    config_from_hf=LlamaConfig.from_hf,
    module=LlamaModel,
    tensor_maps=tensor_maps,
    stacks=lambda cfg: [("decoder", cfg.num_layers)],
    word_embeddings="word_embeddings/embedding",
    embeddings_pattern="word_embeddings/.*",
    lora_targets=r"decoder/layer_\d+/attention/(query|value)",
    causal=True,
    sequence_head_bias=False,
)
