"""T5 encoder-decoder: relative position bias, RMS norms, pre-LN, no attention scaling.

Covers the original T5 (ReLU feed-forward, LM head tied to the shared embeddings with
decoder outputs scaled by d_model**-0.5) and T5 v1.1 (gated-GELU feed-forward, untied
LM head, no output scaling), with encoder and decoder depths that may differ.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ftjax.models import layers
from ftjax.models.base import Family, ModelOutput, PeftConfig, TensorMap, dtype_of


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    hidden_size: int = 512  # d_model
    head_dim: int = 64  # d_kv (need not equal hidden_size / num_heads)
    intermediate_size: int = 2048  # d_ff
    num_layers: int = 6
    num_decoder_layers: int = 6
    num_heads: int = 8
    relative_buckets: int = 32
    relative_max_distance: int = 128
    dropout: float = 0.1
    layer_norm_eps: float = 1e-6
    hidden_act: str = "relu"
    gated_mlp: bool = False  # feed_forward_proj "gated-gelu" (v1.1)
    tie_word_embeddings: bool = True  # LM head shares the embedding matrix
    scale_decoder_outputs: bool = True  # multiply by d_model**-0.5 before a tied LM head
    initializer_factor: float = 1.0
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    dtype: str = "float32"  # compute dtype; params are stored as `param_dtype`
    param_dtype: str = "float32"  # storage of frozen params (trainable ones stay float32)
    remat: str = "none"  # per-layer rematerialisation in training (layers.REMAT_POLICIES)
    scan_layers: bool = False  # one nn.scan over the layer stack (layers.run_stack)
    peft: PeftConfig = PeftConfig()

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> T5Config:
        proj = hf.get("feed_forward_proj", "relu")
        parts = proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"config.json feed_forward_proj={proj!r} is not 'ACT' or 'gated-ACT'")
        act = parts[-1]
        if proj == "gated-gelu":
            act = "gelu_new"  # what HF (and the original v1.1 checkpoints) use
        num_layers = hf["num_layers"]
        # Older configs say "no output scaling" with tie_word_embeddings=false;
        # transformers v5 writes scale_decoder_outputs explicitly.
        scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["d_model"],
            head_dim=hf["d_kv"],
            intermediate_size=hf["d_ff"],
            num_layers=num_layers,
            num_decoder_layers=hf.get("num_decoder_layers") or num_layers,
            num_heads=hf["num_heads"],
            relative_buckets=hf.get("relative_attention_num_buckets", 32),
            relative_max_distance=hf.get("relative_attention_max_distance", 128),
            dropout=hf.get("dropout_rate", 0.1),
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-6),
            hidden_act=act,
            gated_mlp=parts[0] == "gated" and len(parts) == 2,
            scale_decoder_outputs=bool(scale),
            initializer_factor=hf.get("initializer_factor", 1.0),
            pad_token_id=hf.get("pad_token_id", 0),
            eos_token_id=hf.get("eos_token_id", 1),
            decoder_start_token_id=hf.get("decoder_start_token_id", 0),
        )

    def to_hf(self) -> dict[str, Any]:
        act = "gelu" if self.gated_mlp and self.hidden_act == "gelu_new" else self.hidden_act
        return {
            "model_type": "t5",
            "architectures": ["T5ForConditionalGeneration"],
            "vocab_size": self.vocab_size,
            "d_model": self.hidden_size,
            "d_kv": self.head_dim,
            "d_ff": self.intermediate_size,
            "num_layers": self.num_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "num_heads": self.num_heads,
            "relative_attention_num_buckets": self.relative_buckets,
            "relative_attention_max_distance": self.relative_max_distance,
            "dropout_rate": self.dropout,
            "layer_norm_epsilon": self.layer_norm_eps,
            "feed_forward_proj": f"gated-{act}" if self.gated_mlp else act,
            "tie_word_embeddings": self.scale_decoder_outputs,
            "scale_decoder_outputs": self.scale_decoder_outputs,
            "initializer_factor": self.initializer_factor,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "decoder_start_token_id": self.decoder_start_token_id,
        }


def relative_position_buckets(
    query_length: int, key_length: int, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """T5's bucketing of (key - query) offsets, [q, k] int32.

    Shapes are static, so this runs in numpy at trace time, in float32 with the same
    operation order as the reference, so every bucket boundary lands where it does there.
    """
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    buckets = np.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0) * num_buckets
        relative = np.abs(relative)
    else:
        relative = -np.minimum(relative, 0)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore"):
        scaled = (
            np.log(relative.astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact))
            * np.float32(num_buckets - max_exact)
        )
    large = max_exact + np.where(relative < max_exact, 0, scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return (buckets + np.where(relative < max_exact, relative, large)).astype(np.int32)


class RelativeBias(nn.Module):
    """Learned per-head bias for each relative-position bucket: [1, heads, q, k]."""

    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(self, query_length: int, key_length: int) -> jax.Array:
        cfg = self.config
        table = layers.Embed(
            cfg.relative_buckets,
            cfg.num_heads,
            (layers.RELPOS_BUCKETS, layers.HEADS),
            jnp.float32,
            cfg.initializer_factor * cfg.hidden_size**-0.5,
            name="embed",
        )
        buckets = relative_position_buckets(
            query_length,
            key_length,
            self.bidirectional,
            cfg.relative_buckets,
            cfg.relative_max_distance,
        )
        return table(jnp.asarray(buckets)).transpose(2, 0, 1)[None]


class T5Layer(nn.Module):
    """One encoder layer, or (with `context`) one decoder layer with cross-attention;
    `cache_context`: its keys/values cached per source (`layers.Attention`)."""

    config: T5Config
    is_decoder: bool = False
    cache_context: bool = False

    @nn.compact
    def __call__(self, x, shared, prefix, deterministic: bool):
        cfg, dtype = self.config, dtype_of(self.config.dtype)
        mask, bias, context, context_mask = shared
        init = nn.initializers.normal(cfg.initializer_factor * cfg.hidden_size**-0.5)
        dropout = layers.Dropout(cfg.dropout)
        self_prefix, cross_prefix = prefix

        def attention(name: str, causal: bool = False) -> layers.Attention:
            return layers.Attention(
                cfg.num_heads,
                cfg.head_dim,
                use_bias=False,
                scale=False,
                causal=causal,
                dropout_rate=cfg.dropout,
                dtype=dtype,
                kernel_init=init,
                peft=cfg.peft,
                name=name,
            )

        def norm(name: str) -> layers.RMSNorm:
            return layers.RMSNorm(cfg.layer_norm_eps, dtype, name=name)

        def residual(x, h, adapter: str | None = None):
            h = dropout(h, deterministic=deterministic)
            return x + (layers.adapt(cfg.peft, h, adapter, dtype) if adapter else h)

        h = attention("attention", causal=self.is_decoder)(
            norm("attention_norm")(x),
            mask,
            bias=bias,
            prefix=self_prefix,
            deterministic=deterministic,
        )
        x = residual(x, h, "attention_adapter")
        if self.is_decoder:
            h = attention("cross_attention")(
                norm("cross_attention_norm")(x),
                context_mask,
                context=context,
                prefix=cross_prefix,
                deterministic=deterministic,
                cache_context=self.cache_context,
            )
            x = residual(x, h)
        h = layers.FeedForward(
            cfg.intermediate_size,
            cfg.hidden_act,
            gated=cfg.gated_mlp,
            use_bias=False,
            dropout_rate=cfg.dropout,
            dtype=dtype,
            kernel_init=init,
            peft=cfg.peft,
            name="mlp",
        )(norm("mlp_norm")(x), deterministic=deterministic)
        return residual(x, h, "mlp_adapter")


class T5Stack(nn.Module):
    """Encoder (bidirectional) or decoder (causal + cross-attention) stack.

    `prefix` holds one (self, cross) pair of prefixes per layer (entries may be None).
    A decoder with a mutable "cache" collection decodes incrementally: `attention_mask`
    then spans the whole key/value cache (see `layers.Attention`).
    """

    config: T5Config
    is_decoder: bool

    @nn.compact
    def __call__(
        self,
        x,
        attention_mask,
        context,
        context_mask,
        prefix,
        deterministic: bool,
        keep_states: bool = True,
        cache_context: bool = False,
    ):
        cfg = self.config
        mask = layers.padding_mask(None, attention_mask)  # causality is the attention's
        if self.is_decoder:
            context_mask = layers.padding_mask(None, context_mask)
        bias = self._position_bias(x.shape[1], attention_mask.shape[1])
        dropout = layers.Dropout(cfg.dropout)
        x = dropout(x, deterministic=deterministic)
        depth = cfg.num_decoder_layers if self.is_decoder else cfg.num_layers
        states = layers.run_stack(
            T5Layer, cfg, depth, x, (mask, bias, context, context_mask), prefix, deterministic,
            keep_states=keep_states, boundary=False, is_decoder=self.is_decoder,
            cache_context=cache_context,
        )  # fmt: skip
        x = layers.RMSNorm(cfg.layer_norm_eps, dtype_of(cfg.dtype), name="final_norm")(states[-1])
        states[-1] = dropout(x, deterministic=deterministic)
        return states

    def _position_bias(self, query_length: int, key_length: int) -> jax.Array:
        """[1, heads, q, k] relative-position bias; while decoding with a cache, the rows of
        this call's queries (the cache's next slots) over every cache slot."""
        relative = RelativeBias(
            self.config, bidirectional=not self.is_decoder, name="relative_bias"
        )
        if not (self.is_decoder and self.is_mutable_collection("cache")):
            return relative(query_length, key_length)
        ready = self.has_variable("cache", "cache_index")
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        bias = relative(key_length, key_length)
        if not ready:
            return bias[:, :, :query_length]
        start = index.value
        index.value = start + query_length
        return jax.lax.dynamic_slice_in_dim(bias, start, query_length, axis=2)


class T5Model(nn.Module):
    """T5 encoder-decoder with its LM head.

    Without `decoder_input_ids` only the encoder runs (features for probes and
    classifiers); `encode` / `decode` split the two halves for generation and scoring.
    `logit_positions` [batch, k] index the decoder's rows: logits only there.
    """

    config: T5Config

    def setup(self) -> None:
        cfg = self.config
        self.shared = layers.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            (layers.VOCAB, layers.EMBED),
            dtype_of(cfg.dtype),
            cfg.initializer_factor,
            name="shared",
        )
        self.encoder = T5Stack(cfg, is_decoder=False)
        self.decoder = T5Stack(cfg, is_decoder=True)
        if not cfg.tie_word_embeddings:
            self.lm_head = layers.Dense(
                cfg.vocab_size,
                (layers.EMBED, layers.VOCAB),
                use_bias=False,
                dtype=dtype_of(cfg.dtype),
                kernel_init=nn.initializers.normal(cfg.initializer_factor),
            )
        peft = cfg.peft
        if peft.prompt_length:  # encoder side only (Lester et al.)
            self.prompt = layers.SoftPrompt(peft.prompt_length)
        if peft.prefix_length:  # encoder self, decoder self and decoder cross attention
            sites = cfg.num_layers + 2 * cfg.num_decoder_layers
            self.prefix = layers.PrefixEncoder(
                peft, sites, cfg.num_heads, cfg.head_dim, cfg.hidden_size
            )

    def _prefixes(self, decoder: bool) -> tuple:
        """(self-attention, cross-attention) prefixes of every layer of one stack, each
        [layers, 2, P, heads, head_dim] (or None)."""
        cfg = self.config
        enc, dec = cfg.num_layers, cfg.num_decoder_layers
        if not cfg.peft.prefix_length:
            return (None, None)
        p = self.prefix()
        if decoder:
            return (p[enc : enc + dec], p[enc + dec :])
        return (p[:enc], None)

    def encode(
        self, input_ids, attention_mask=None, *, deterministic=True, keep_states=True
    ) -> tuple[list[jax.Array], jax.Array]:
        """Encoder states (prompt positions included) and the matching attention mask;
        with `keep_states=False` and scanned layers, the input and last states only."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        x = self.shared(input_ids)
        if self.config.peft.prompt_length:
            x, attention_mask = self.prompt(x, attention_mask)
        states = self.encoder(
            x, attention_mask, None, None, self._prefixes(decoder=False), deterministic,
            keep_states,
        )  # fmt: skip
        return states, attention_mask

    def decode(
        self,
        decoder_input_ids,
        encoder_states,
        attention_mask,
        decoder_attention_mask=None,
        *,
        deterministic=True,
        keep_states=True,
        logit_positions: jax.Array | None = None,
        cache_context: bool = False,
    ) -> tuple[list, jax.Array]:
        """Decoder states and LM logits; `attention_mask` is the one `encode` returned.
        `logit_positions` [batch, k] (indices into each decoder row): logits only there,
        [batch, k, vocab] (`layers.at_positions`, before the vocabulary matmul).
        `cache_context` with a mutable "cache": every layer's cross-attention keys/values
        of `encoder_states` go to the cache; with `encoder_states=None` they come from it
        (decoding steps: the source is projected once per decoding)."""
        if decoder_attention_mask is None:
            decoder_attention_mask = jnp.ones_like(decoder_input_ids)
        states = self.decoder(
            self.shared(decoder_input_ids),
            decoder_attention_mask,
            encoder_states,
            attention_mask,
            self._prefixes(decoder=True),
            deterministic,
            keep_states,
            cache_context,
        )
        out = layers.at_positions(states[-1], logit_positions)
        if self.config.tie_word_embeddings:
            if self.config.scale_decoder_outputs:
                out = out * self.config.hidden_size**-0.5
            return states, self.shared.attend(out)
        return states, self.lm_head(out)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        decoder_input_ids: jax.Array | None = None,
        decoder_attention_mask: jax.Array | None = None,
        *,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        logit_positions: jax.Array | None = None,
    ) -> ModelOutput:
        encoder_states, encoder_mask = self.encode(
            input_ids, attention_mask, deterministic=deterministic, keep_states=output_hidden_states
        )
        encoded = encoder_states[-1]
        # Outputs align with the inputs: the prompt's positions are dropped.
        visible = [s[:, self.config.peft.prompt_length :] for s in encoder_states]
        if decoder_input_ids is None:
            if self.is_initializing():  # create the decoder's params too
                self.decode(input_ids[:, :1], encoded, encoder_mask)
            return ModelOutput(
                last_hidden_state=visible[-1],
                hidden_states=tuple(visible) if output_hidden_states else None,
                encoder_last_hidden_state=visible[-1],
            )
        states, logits = self.decode(
            decoder_input_ids,
            encoded,
            encoder_mask,
            decoder_attention_mask,
            deterministic=deterministic,
            keep_states=output_hidden_states,
            logit_positions=logit_positions,
        )
        return ModelOutput(
            last_hidden_state=states[-1],
            hidden_states=tuple(states) if output_hidden_states else None,
            logits=logits,
            encoder_last_hidden_state=visible[-1],
            encoder_hidden_states=tuple(visible) if output_hidden_states else None,
        )


def tensor_maps(cfg: T5Config) -> list[TensorMap]:
    def linear(path: str, hf: str) -> TensorMap:
        return TensorMap(f"{path}/kernel", f"{hf}.weight", transpose=True)

    def attention(path: str, hf: str) -> list[TensorMap]:
        return [
            linear(f"{path}/{ours}", f"{hf}.{theirs}")
            for ours, theirs in zip(("query", "key", "value", "output"), "qkvo", strict=True)
        ]

    def mlp(path: str, hf: str) -> list[TensorMap]:
        if cfg.gated_mlp:
            pairs = [("gate", "wi_0"), ("intermediate", "wi_1"), ("output", "wo")]
        else:
            pairs = [("intermediate", "wi"), ("output", "wo")]
        return [linear(f"{path}/{ours}", f"{hf}.{theirs}") for ours, theirs in pairs]

    def norm(path: str, hf: str) -> TensorMap:
        return TensorMap(f"{path}/scale", f"{hf}.weight")

    maps = [TensorMap("shared/embedding", "shared.weight")]
    for stack, depth in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        maps.append(
            TensorMap(
                f"{stack}/relative_bias/embed/embedding",
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            )
        )
        maps.append(norm(f"{stack}/final_norm", f"{stack}.final_layer_norm"))
        for i in range(depth):
            ours, theirs = f"{stack}/layer_{i}", f"{stack}.block.{i}.layer"
            maps += attention(f"{ours}/attention", f"{theirs}.0.SelfAttention")
            maps.append(norm(f"{ours}/attention_norm", f"{theirs}.0.layer_norm"))
            ff = 1
            if stack == "decoder":
                maps += attention(f"{ours}/cross_attention", f"{theirs}.1.EncDecAttention")
                maps.append(norm(f"{ours}/cross_attention_norm", f"{theirs}.1.layer_norm"))
                ff = 2
            maps += mlp(f"{ours}/mlp", f"{theirs}.{ff}.DenseReluDense")
            maps.append(norm(f"{ours}/mlp_norm", f"{theirs}.{ff}.layer_norm"))
    if not cfg.tie_word_embeddings:
        maps.append(linear("lm_head", "lm_head"))
    return maps


def fit_to_checkpoint(cfg: T5Config, tensors: dict[str, Any]) -> T5Config:
    """The LM head is untied exactly when the checkpoint holds a different lm_head."""
    head, shared = tensors.get("lm_head.weight"), tensors.get("shared.weight")
    untied = head is not None and (shared is None or not np.array_equal(head, shared))
    return dataclasses.replace(cfg, tie_word_embeddings=not untied)


def _dummy_inputs(cfg: T5Config) -> dict[str, Any]:
    ids = jnp.zeros((1, 8), jnp.int32)
    return {"input_ids": ids, "decoder_input_ids": ids}


FAMILY = Family(
    model_types=("t5",),
    config_from_hf=T5Config.from_hf,
    module=T5Model,
    tensor_maps=tensor_maps,
    dummy_inputs=_dummy_inputs,
    fit_to_checkpoint=fit_to_checkpoint,
    stacks=lambda cfg: [("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)],
    word_embeddings="shared/embedding",
    embeddings_pattern="shared/.*",
    lora_targets=r"(encoder|decoder)/layer_\d+/(attention|cross_attention)/(query|value)",
    unused_by_encoder_features=("decoder/.*", "lm_head/.*"),
)
