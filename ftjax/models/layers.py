"""Building blocks shared by every model family.

Every parameter is created with logical axis names (`vocab`, `embed`, `heads`, `mlp`,
`norm`, ...), so that sharding is a rules table in `ftjax.sharding`, never a model edit.
Kernels are stored `(in, out)`, float32; the compute dtype is a module field, and matmuls
accumulate in float32 whatever the compute dtype (on CPU bf16 inputs with f32 accumulation
are the fast path; see DESIGN.md).

Hooks for parameter-efficient methods live here, so each family gets them for free:
`Dense` is the single place where LoRA factors can be attached, and `Attention` is the
single place where prefix keys/values and relative-position biases enter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
DType = Any

# Logical axis names used by every family (and by the sharding rules table).
VOCAB, EMBED, HEADS, KV, MLP, NORM, POSITION, TYPE = (
    "vocab",
    "embed",
    "heads",
    "kv",
    "mlp",
    "norm",
    "position",
    "token_type",
)
JOINED_HEADS = "joined_heads"  # heads * head_dim, flattened: q/k/v output, o input
RELPOS_BUCKETS = "relpos_buckets"


def _param(module: nn.Module, name: str, init: Callable, shape: tuple, axes: tuple) -> Array:
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def activation(name: str) -> Callable[[Array], Array]:
    """Maps a Hugging Face activation name to its JAX function (exact, not approximated)."""
    table = {
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
        "tanh": jnp.tanh,
    }
    if name not in table:
        raise ValueError(f"activation {name!r} is not supported; known: {sorted(table)}")
    return table[name]


def matmul(x: Array, kernel: Array, dtype: DType) -> Array:
    """x @ kernel in the compute dtype with float32 accumulation, cast back to dtype."""
    y = jax.lax.dot_general(
        x.astype(dtype),
        kernel.astype(dtype),
        (((x.ndim - 1,), (0,)), ((), ())),
        preferred_element_type=jnp.float32,
    )
    return y.astype(dtype)


class Dense(nn.Module):
    """A linear layer `(in, out)` with logical axes; the hook for LoRA factors."""

    features: int
    axes: tuple[str, str]
    use_bias: bool = True
    dtype: DType = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = _param(self, "kernel", self.kernel_init, (x.shape[-1], self.features), self.axes)
        y = matmul(x, kernel, self.dtype)
        if self.use_bias:
            bias = _param(self, "bias", nn.initializers.zeros, (self.features,), self.axes[1:])
            y = y + bias.astype(self.dtype)
        return y


class Embed(nn.Module):
    """A lookup table `(num, features)`; `attend` reuses it as a tied output projection."""

    num_embeddings: int
    features: int
    axes: tuple[str, str] = (VOCAB, EMBED)
    dtype: DType = jnp.float32
    init_std: float = 0.02

    def setup(self) -> None:
        self.embedding = _param(
            self,
            "embedding",
            nn.initializers.normal(self.init_std),
            (self.num_embeddings, self.features),
            self.axes,
        )

    def __call__(self, ids: Array) -> Array:
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: Array) -> Array:
        return matmul(x, self.embedding.T, self.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with float32 statistics (BERT, GPT-2)."""

    eps: float = 1e-12
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = x.shape[-1]
        scale = _param(self, "scale", nn.initializers.ones, (features,), (NORM,))
        bias = _param(self, "bias", nn.initializers.zeros, (features,), (NORM,))
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
        return y.astype(self.dtype)


class RMSNorm(nn.Module):
    """T5's norm: scale only, no mean subtraction, float32 statistics."""

    eps: float = 1e-6
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), (NORM,))
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        return (y * scale).astype(self.dtype)


def padding_mask(query_valid: Array | None, key_valid: Array) -> Array:
    """[batch, 1, q, k] boolean mask from per-token validity of keys (and queries)."""
    mask = key_valid[:, None, None, :].astype(bool)
    if query_valid is not None:
        mask = mask & query_valid[:, None, :, None].astype(bool)
    return mask


def causal_mask(length: int) -> Array:
    """[1, 1, length, length] lower-triangular boolean mask."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


class Attention(nn.Module):
    """Multi-head attention: self (bidirectional or causal) or cross.

    `mask` is boolean, broadcastable to [batch, heads, q, k]; `bias` is an additive
    float bias (T5's relative positions) of the same shape. `scale=False` is T5, which
    folds 1/sqrt(head_dim) into its initialisation.
    """

    num_heads: int
    head_dim: int
    use_bias: bool = True
    scale: bool = True
    dropout_rate: float = 0.0
    dtype: DType = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None,
        *,
        context: Array | None = None,
        bias: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        context = x if context is None else context
        inner = self.num_heads * self.head_dim

        def project(name: str, source: Array) -> Array:
            dense = Dense(
                inner,
                (EMBED, JOINED_HEADS),
                self.use_bias,
                self.dtype,
                self.kernel_init,
                name=name,
            )
            return dense(source).reshape(*source.shape[:-1], self.num_heads, self.head_dim)

        q, k, v = project("query", x), project("key", context), project("value", context)
        if self.scale:
            q = q * jnp.asarray(self.head_dim**-0.5, q.dtype)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        if bias is not None:
            scores = scores + bias.astype(jnp.float32)
        if mask is not None:
            scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, preferred_element_type=jnp.float32)
        out = out.astype(self.dtype).reshape(*x.shape[:-1], inner)
        return Dense(
            x.shape[-1],
            (JOINED_HEADS, EMBED),
            self.use_bias,
            self.dtype,
            self.kernel_init,
            name="output",
        )(out)


class FeedForward(nn.Module):
    """Feed-forward block: `output(act(intermediate(x)))`, or gated (T5 v1.1):
    `output(act(gate(x)) * intermediate(x))`."""

    hidden: int
    act: str
    gated: bool = False
    use_bias: bool = True
    dropout_rate: float = 0.0
    dtype: DType = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        def dense(features: int, axes: tuple[str, str], name: str) -> Dense:
            return Dense(features, axes, self.use_bias, self.dtype, self.kernel_init, name=name)

        act = activation(self.act)
        if self.gated:
            h = act(dense(self.hidden, (EMBED, MLP), "gate")(x))
            h = h * dense(self.hidden, (EMBED, MLP), "intermediate")(x)
        else:
            h = act(dense(self.hidden, (EMBED, MLP), "intermediate")(x))
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return dense(x.shape[-1], (MLP, EMBED), "output")(h)
