"""BERT-style bidirectional encoders (BERT, MiniLM, RoBERTa): post-LN transformer."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models import layers
from ftjax.models.base import Family, ModelOutput, PeftConfig, TensorMap, dtype_of


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02
    with_pooler: bool = True
    with_mlm_head: bool = False  # masked-LM head (BertForMaskedLM / RobertaForMaskedLM)
    model_type: str = "bert"  # "roberta": positions count from pad_token_id + 1
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
    def from_hf(cls, hf: dict[str, Any]) -> BertConfig:
        position_type = hf.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"config.json position_embedding_type={position_type!r}: only 'absolute' "
                "position embeddings are supported for BERT-style models"
            )
        if hf["hidden_size"] % hf["num_attention_heads"]:
            raise ValueError(
                f"config.json hidden_size={hf['hidden_size']} is not divisible by "
                f"num_attention_heads={hf['num_attention_heads']}"
            )
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            hidden_act=hf.get("hidden_act", "gelu"),
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            pad_token_id=default_if_none(
                hf.get("pad_token_id"), 1 if hf["model_type"] == "roberta" else 0
            ),
            hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            initializer_range=hf.get("initializer_range", 0.02),
            model_type=hf["model_type"],
        )

    def to_hf(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "architectures": ["RobertaModel" if self.model_type == "roberta" else "BertModel"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "initializer_range": self.initializer_range,
        }


class BertLayer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, shared, prefix, deterministic: bool) -> jax.Array:
        cfg, dtype = self.config, dtype_of(self.config.dtype)
        (mask,) = shared
        init = nn.initializers.normal(cfg.initializer_range)
        dropout = layers.Dropout(cfg.hidden_dropout)
        attn = layers.Attention(
            cfg.num_heads,
            cfg.head_dim,
            dropout_rate=cfg.attention_dropout,
            dtype=dtype,
            kernel_init=init,
            peft=cfg.peft,
            name="attention",
        )(x, mask, prefix=prefix, deterministic=deterministic)
        attn = layers.adapt(
            cfg.peft, dropout(attn, deterministic=deterministic), "attention_adapter", dtype
        )
        x = layers.LayerNorm(cfg.layer_norm_eps, dtype, name="attention_norm")(x + attn)
        h = layers.FeedForward(
            cfg.intermediate_size,
            cfg.hidden_act,
            dtype=dtype,
            kernel_init=init,
            peft=cfg.peft,
            name="mlp",
        )(x, deterministic=deterministic)
        h = layers.adapt(cfg.peft, dropout(h, deterministic=deterministic), "mlp_adapter", dtype)
        return layers.LayerNorm(cfg.layer_norm_eps, dtype, name="mlp_norm")(x + h)


class BertEmbeddings(nn.Module):
    """Word, position and token-type embeddings, LayerNorm, dropout. `words` and the rest
    are separate calls so that a soft prompt can go between them: PEFT feeds the prompt
    to BERT as input embeddings, which then gain positions, token type 0 and the norm."""

    config: BertConfig

    def setup(self) -> None:
        cfg, dtype = self.config, dtype_of(self.config.dtype)

        def table(num: int, axes: tuple[str, str]) -> layers.Embed:
            return layers.Embed(num, cfg.hidden_size, axes, dtype, cfg.initializer_range)

        self.word_embeddings = table(cfg.vocab_size, (layers.VOCAB, layers.EMBED))
        self.position_embeddings = table(
            cfg.max_position_embeddings, (layers.POSITION, layers.EMBED)
        )
        self.token_type_embeddings = table(cfg.type_vocab_size, (layers.TYPE, layers.EMBED))
        self.layer_norm = layers.LayerNorm(cfg.layer_norm_eps, dtype)
        self.dropout = layers.Dropout(cfg.hidden_dropout)

    def words(self, input_ids: jax.Array) -> jax.Array:
        return self.word_embeddings(input_ids)

    def __call__(self, words, token_type_ids, position_ids, deterministic: bool) -> jax.Array:
        x = (
            words
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.layer_norm(x), deterministic=deterministic)


class BertEncoder(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, keep_states: bool = True) -> list[jax.Array]:
        cfg = self.config
        prefix = layers.prefixes(
            cfg.peft, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
        )
        return layers.run_stack(
            BertLayer, cfg, cfg.num_layers, x, (mask,), prefix, deterministic,
            keep_states=keep_states,
        )  # fmt: skip


class MlmHead(nn.Module):
    """BERT's masked-LM head: dense, activation, LayerNorm, then the word embeddings
    (tied) as the output projection plus a per-token bias."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, word_embeddings: jax.Array) -> jax.Array:
        cfg, dtype = self.config, dtype_of(self.config.dtype)
        h = layers.Dense(
            cfg.hidden_size,
            (layers.EMBED, layers.EMBED),
            dtype=dtype,
            kernel_init=nn.initializers.normal(cfg.initializer_range),
            name="transform",
        )(x)
        h = layers.LayerNorm(cfg.layer_norm_eps, dtype, name="norm")(
            layers.activation(cfg.hidden_act)(h)
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, (layers.VOCAB,)),
            (cfg.vocab_size,),
            jnp.float32,
        )
        return layers.matmul(h, word_embeddings.T, dtype) + bias.astype(dtype)


class BertModel(nn.Module):
    """BERT-style encoder; returns final hidden states, (optionally) the tanh pooler over
    the first slot ([CLS], or with a soft prompt the prompt's first slot, which is what
    PEFT's BertForSequenceClassification classifies) and (optionally) masked-LM logits.
    A prefix or prompt of length P moves the real tokens' positions by P
    (`default_position_ids`). `logit_positions` [batch, k]: MLM logits only there
    ([batch, k, vocab], `layers.at_positions`)."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        segment_ids: jax.Array | None = None,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        logit_positions: jax.Array | None = None,
    ) -> ModelOutput:
        cfg = self.config
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        embeddings = BertEmbeddings(cfg, name="embeddings")
        words, attention_mask, prompted = layers.prepend_prompt(
            cfg.peft, embeddings.words(input_ids), attention_mask
        )
        if position_ids is None:
            position_ids = self.default_position_ids(input_ids, prompted)
        else:  # given ones count real tokens: moved past a prefix or prompt, as by default
            position_ids = layers.with_prompt_positions(
                position_ids + layers.virtual_tokens(cfg.peft), prompted
            )
        token_type_ids = jnp.pad(token_type_ids, ((0, 0), (prompted, 0)))
        x = embeddings(words, token_type_ids, position_ids, deterministic)
        mask = layers.self_attention_mask(attention_mask, segment_ids, prompted)
        states = BertEncoder(cfg, name="encoder")(x, mask, deterministic, output_hidden_states)
        first = states[-1][:, 0]  # the pooler's slot: a prompt's first, as in PEFT
        states = [s[:, prompted:] for s in states]  # outputs align with inputs
        pooled = None
        if cfg.with_pooler:
            dense = layers.Dense(
                cfg.hidden_size,
                (layers.EMBED, layers.EMBED),
                dtype=dtype_of(cfg.dtype),
                kernel_init=nn.initializers.normal(cfg.initializer_range),
                name="pooler",
            )
            pooled = jnp.tanh(dense(first))
        logits = None
        if cfg.with_mlm_head:
            table = nn.unbox(embeddings.variables["params"]["word_embeddings"]["embedding"])
            read = layers.at_positions(states[-1], logit_positions)
            logits = MlmHead(cfg, name="mlm_head")(read, table)
        return ModelOutput(
            last_hidden_state=states[-1],
            hidden_states=tuple(states) if output_hidden_states else None,
            pooled=pooled,
            logits=logits,
        )

    def default_position_ids(self, input_ids: jax.Array, prompted: int) -> jax.Array:
        """Hugging Face's positions, past a prefix of P key/value slots or a prompt of P
        input embeddings: BERT numbers every slot (`arange`, from P after a prefix);
        RoBERTa from pad_token_id + 1, skipping pads when it sees token ids (a prefix)
        and numbering every slot when it sees embeddings (a prompt)."""
        cfg = self.config
        if cfg.model_type == "roberta" and not prompted:
            real = (input_ids != cfg.pad_token_id).astype(jnp.int32)
            return (jnp.cumsum(real, axis=1) + cfg.peft.prefix_length) * real + cfg.pad_token_id
        batch, length = input_ids.shape
        first = roberta_offset(cfg) + cfg.peft.prefix_length
        return jnp.broadcast_to(
            jnp.arange(first, first + prompted + length), (batch, prompted + length)
        )


def tensor_maps(cfg: BertConfig) -> list[TensorMap]:
    def linear(path: str, hf: str) -> list[TensorMap]:
        return [
            TensorMap(f"{path}/kernel", f"{hf}.weight", True),
            TensorMap(f"{path}/bias", f"{hf}.bias"),
        ]

    def norm(path: str, hf: str) -> list[TensorMap]:
        return [TensorMap(f"{path}/scale", f"{hf}.weight"), TensorMap(f"{path}/bias", f"{hf}.bias")]

    maps = [
        TensorMap("embeddings/word_embeddings/embedding", "embeddings.word_embeddings.weight"),
        TensorMap(
            "embeddings/position_embeddings/embedding", "embeddings.position_embeddings.weight"
        ),
        TensorMap(
            "embeddings/token_type_embeddings/embedding", "embeddings.token_type_embeddings.weight"
        ),
        *norm("embeddings/layer_norm", "embeddings.LayerNorm"),
    ]
    for i in range(cfg.num_layers):
        ours, theirs = f"encoder/layer_{i}", f"encoder.layer.{i}"
        for proj in ("query", "key", "value"):
            maps += linear(f"{ours}/attention/{proj}", f"{theirs}.attention.self.{proj}")
        maps += linear(f"{ours}/attention/output", f"{theirs}.attention.output.dense")
        maps += norm(f"{ours}/attention_norm", f"{theirs}.attention.output.LayerNorm")
        maps += linear(f"{ours}/mlp/intermediate", f"{theirs}.intermediate.dense")
        maps += linear(f"{ours}/mlp/output", f"{theirs}.output.dense")
        maps += norm(f"{ours}/mlp_norm", f"{theirs}.output.LayerNorm")
    if cfg.with_pooler:
        maps += linear("pooler", "pooler.dense")
    if cfg.with_mlm_head:
        head = MLM_HEAD_NAMES[cfg.model_type]
        maps += linear("mlm_head/transform", head["transform"])
        maps += norm("mlm_head/norm", head["norm"])
        maps.append(TensorMap("mlm_head/bias", head["bias"]))
    return maps


# Where BertForMaskedLM / RobertaForMaskedLM keep their LM head (outside the base prefix).
MLM_HEAD_NAMES = {
    "bert": {
        "transform": "cls.predictions.transform.dense",
        "norm": "cls.predictions.transform.LayerNorm",
        "bias": "cls.predictions.bias",
    },
    "roberta": {"transform": "lm_head.dense", "norm": "lm_head.layer_norm", "bias": "lm_head.bias"},
}


def default_if_none(value: Any, default: Any) -> Any:
    """A config.json field that may be absent or null (but 0 is a value: pad id 0)."""
    return default if value is None else value


def roberta_offset(cfg: BertConfig) -> int:
    """RoBERTa's position table starts its real tokens at pad_token_id + 1."""
    return cfg.pad_token_id + 1 if cfg.model_type == "roberta" else 0


def fit_to_checkpoint(cfg: BertConfig, tensors: dict[str, Any]) -> BertConfig:
    has_pooler = any(name.endswith("pooler.dense.weight") for name in tensors)
    head = MLM_HEAD_NAMES[cfg.model_type]["transform"] + ".weight"
    return dataclasses.replace(cfg, with_pooler=has_pooler, with_mlm_head=head in tensors)


FAMILY = Family(
    model_types=("bert", "roberta"),
    config_from_hf=BertConfig.from_hf,
    module=BertModel,
    tensor_maps=tensor_maps,
    hf_prefixes=("", "bert.", "roberta."),
    fit_to_checkpoint=fit_to_checkpoint,
    stacks=lambda cfg: [("encoder", cfg.num_layers)],
    word_embeddings="embeddings/word_embeddings/embedding",
    embeddings_pattern="embeddings/.*",
    lora_targets=r"encoder/layer_\d+/attention/(query|value)",
    unused_by_encoder_features=("pooler/.*", "mlm_head/.*"),
    max_positions=lambda cfg: cfg.max_position_embeddings - roberta_offset(cfg),
)
