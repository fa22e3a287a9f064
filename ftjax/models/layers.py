"""Building blocks shared by every model family.

Every parameter is created with logical axis names (`vocab`, `embed`, `heads`, `mlp`,
`norm`, ...), so that sharding is a rules table in `ftjax.training.sharding`, never a model edit.
Kernels are stored `(in, out)`, float32; the compute dtype is a module field, and matmuls
accumulate in float32 whatever the compute dtype (bf16 inputs with f32 accumulation: on
accelerators the fast path; on this CPU bf16 activations are slower than float32,
experiments/RESULTS.md, but bf16 matmul inputs alone are faster: `matmul`).

Hooks for parameter-efficient methods live here, so each family gets them for free:
`Dense` is the single place where LoRA factors can be attached, and `Attention` is the
single place where prefix keys/values and relative-position biases enter.

Decoding: a causal `Attention` keeps a key/value cache in the "cache" collection whenever
that collection is mutable (`ftjax.models.generation` makes it so); see `Attention._cached`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models import rope
from ftjax.models.base import STACKED, PeftConfig
from ftjax.models.dropout import Dropout

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
# Axes of method parameters (small; the sharding rules replicate them).
LORA, ADAPTER, PREFIX_SITES, KV_PAIR, PREFIX = (
    "lora",
    "adapter",
    "prefix_sites",
    "kv_pair",
    "prefix",
)
NO_PEFT = PeftConfig()


def at_positions(states: Array, positions: Array | None) -> Array:
    """`states` [batch, length, ...] at `positions` [batch, k] (indices into each row),
    [batch, k, ...]; all of them when `positions` is None. What an LM head reads when its
    caller names the positions whose logits it needs (`logit_positions`): the head's
    vocabulary-wide matmul then runs on k rows, not on every position."""
    if positions is None:
        return states
    index = positions.reshape(*positions.shape, *(1,) * (states.ndim - 2))
    return jnp.take_along_axis(states, index.astype(jnp.int32), axis=1)


# Mesh axes the batch is split over (`ftjax.training.sharding` reads them from here).
BATCH_MESH_AXES = ("data", "fsdp")


def batch_sharded(x: Array) -> Array:
    """`x` constrained to be split over the batch axes of the mesh the step is traced
    under (`jax.set_mesh`; no mesh, no constraint). Without it, XLA's partitioner follows
    FSDP-sharded weights and computes every row of the global batch on every device
    (benchmarks/RESULTS.md: 35 GiB instead of 4.2 per device for a 7B step at fsdp=64).
    A batch the axes do not divide (a shared context encoded once) is left alone."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes = tuple(a for a in BATCH_MESH_AXES if a in mesh.axis_names)
    size = 1
    for axis in axes:
        size *= mesh.shape[axis]
    if size <= 1 or x.ndim == 0 or x.shape[0] % size:
        return x
    spec = jax.sharding.PartitionSpec(axes, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, spec)


def _param(module: nn.Module, name: str, init: Callable, shape: tuple, axes: tuple) -> Array:
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def gelu_exact(x: Array) -> Array:
    """The exact GELU as PyTorch computes it, x/2 (1 + erf(x/sqrt 2)). `jax.nn.gelu`
    writes it with erfc, which XLA:CPU expands into an exp and selects per element, at
    several times erf's cost (benchmarks/RESULTS.md); erfc is more precise only in the
    far negative tail, where GELU is below 1e-6 in magnitude and PyTorch uses erf too."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(0.5**0.5, x.dtype)))


def activation(name: str) -> Callable[[Array], Array]:
    """Maps a Hugging Face activation name to its JAX function (exact, not approximated)."""
    table = {
        "gelu": gelu_exact,
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
    """x @ kernel in the compute dtype with float32 accumulation, cast back to dtype.

    Under `jax.default_matmul_precision("bfloat16")` (`config.model.matmul_precision`)
    a float32 model's matmuls take bfloat16 inputs in both passes, as TPUs compute
    float32 matmuls by default: XLA:CPU ignores the setting and computes in float32, but
    runs a bf16 x bf16 -> f32 dot ~1.9x faster where the CPU has AVX512-BF16."""
    if dtype == jnp.float32 and jax.config.jax_default_matmul_precision == "bfloat16":
        return _bf16_matmul(x, kernel)
    y = _dot(x.astype(dtype), kernel.astype(dtype))
    return y.astype(dtype)


def _dot(x: Array, kernel: Array) -> Array:
    return jax.lax.dot_general(
        x, kernel, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32
    )


@jax.custom_vjp
def _bf16_matmul(x: Array, kernel: Array) -> Array:
    return _bf16_matmul_forward(x, kernel)[0]


def _bf16_matmul_forward(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    x16, kernel16 = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    return _dot(x16, kernel16), (x16, kernel16)


def _bf16_matmul_backward(saved: tuple[Array, Array], grad: Array) -> tuple[Array, Array]:
    # Autodiff would dot the float32 cotangent with the bf16 operands: XLA:CPU then
    # computes in float32. Both gradients are bf16 x bf16 -> f32 dots instead.
    x16, kernel16 = saved
    grad16 = grad.astype(jnp.bfloat16)
    d_x = jnp.einsum("...o,io->...i", grad16, kernel16, preferred_element_type=jnp.float32)
    d_kernel = jnp.einsum("...i,...o->io", x16, grad16, preferred_element_type=jnp.float32)
    # A transpose after this dot (a tied head's `embedding.T`) would be folded into it as
    # a transposed operand, which XLA:CPU's bf16 dot kernels lack: the barrier keeps it out.
    return d_x, jax.lax.optimization_barrier(d_kernel)


_bf16_matmul.defvjp(_bf16_matmul_forward, _bf16_matmul_backward)


class Dense(nn.Module):
    """A linear layer `(in, out)` with logical axes; the hook for LoRA factors.

    When `peft.lora_rank > 0` and this layer's module path fully matches
    `peft.lora_targets`, it adds `x @ lora_a @ lora_b * alpha / rank` (Hu et al. 2021),
    with `lora_b` zero at initialisation so the layer starts as the pretrained one.
    """

    features: int
    axes: tuple[str, str]
    use_bias: bool = True
    dtype: DType = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)
    peft: PeftConfig = NO_PEFT

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        kernel = _param(self, "kernel", self.kernel_init, (x.shape[-1], self.features), self.axes)
        y = matmul(x, kernel, self.dtype)
        if self.use_bias:
            bias = _param(self, "bias", nn.initializers.zeros, (self.features,), self.axes[1:])
            y = y + bias.astype(self.dtype)
        if self.has_lora():
            rank = self.peft.lora_rank
            # PEFT's kaiming-uniform(a=sqrt(5)) for A: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            a_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
            lora_a = _param(self, "lora_a", a_init, (x.shape[-1], rank), (self.axes[0], LORA))
            lora_b = _param(
                self, "lora_b", nn.initializers.zeros, (rank, self.features), (LORA, self.axes[1])
            )
            h = Dropout(self.peft.lora_dropout)(x, deterministic=deterministic)
            delta = matmul(matmul(h, lora_a, self.dtype), lora_b, self.dtype)
            y = y + delta * jnp.asarray(self.peft.lora_scale, self.dtype)
        return y

    def has_lora(self) -> bool:
        return self.peft.has_lora("/".join(self.path))


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
        return batch_sharded(jnp.take(self.embedding, ids, axis=0).astype(self.dtype))

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
        return layer_norm(x.astype(jnp.float32), scale, bias, self.eps).astype(self.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
    return _layer_norm_forward(x, scale, bias, eps)[0]


def _layer_norm_forward(x, scale, bias, eps):
    mean = x.mean(-1, keepdims=True)
    centred = x - mean
    std = jnp.sqrt(jnp.square(centred).mean(-1, keepdims=True) + eps)
    normed = centred / std
    return normed * scale + bias, (normed, std, scale)


def _layer_norm_backward(eps, residuals, gradient):
    normed, std, scale = residuals
    scaled = gradient * scale
    mean_scaled = scaled.mean(-1, keepdims=True)
    mean_projected = (scaled * normed).mean(-1, keepdims=True)
    dx = (scaled - mean_scaled - normed * mean_projected) / std
    axes = tuple(range(gradient.ndim - 1))
    return dx, (gradient * normed).sum(axes), gradient.sum(axes)


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


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


def self_attention_mask(
    attention_mask: Array, segment_ids: Array | None, prompted: int = 0
) -> Array:
    """[batch, 1, 1 or q, k] boolean mask of a self-attention: the real keys, and with
    `segment_ids` (packed rows: 1, 2, ... per example, 0 for padding) only the keys of
    the query's own segment, so packed examples never see each other."""
    if segment_ids is None:
        return padding_mask(None, attention_mask)
    if prompted:
        raise ValueError(
            "segment_ids (packed rows) with a soft prompt: the prompt is one per row, and "
            "a packed row holds several examples"
        )
    same = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    return same & (segment_ids[:, None, None, :] > 0)


def virtual_tokens(peft: PeftConfig) -> int:
    """How many positions a prefix or a soft prompt takes before the real tokens. PEFT
    (and Li & Liang's, P-tuning v2's code) hands a prefix to the model as a key/value
    cache of that length and a prompt as that many input embeddings, so either way the
    real tokens count their positions from here."""
    return peft.prefix_length + peft.prompt_length


def real_token_positions(
    attention_mask: Array, position_ids: Array | None, decode: str, model: str, offset: int = 0
) -> Array:
    """Each token's index among the real tokens of its row (unless given), plus `offset`
    (`virtual_tokens`): left padding leaves the real tokens' positions unchanged; for
    right-padded rows this is Hugging Face's default `arange(offset, offset + n)`.
    Decoding with a cache must give them (counted over real tokens, without the offset)."""
    if position_ids is None:
        if decode:
            raise ValueError(f"{model}: decoding with a cache needs position_ids")
        position_ids = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
    return position_ids + offset


def with_prompt_positions(positions: Array, prompted: int) -> Array:
    """The prompt's slots take positions 0..prompted-1 before the real tokens' (PEFT feeds
    the prompt as input embeddings, so the model numbers it first)."""
    if not prompted:
        return positions
    front = jnp.broadcast_to(
        jnp.arange(prompted, dtype=positions.dtype), (positions.shape[0], prompted)
    )
    return jnp.concatenate([front, positions], axis=1)


def causal_mask(length: int) -> Array:
    """[1, 1, length, length] lower-triangular boolean mask."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


class Attention(nn.Module):
    """Multi-head attention: self (bidirectional or causal) or cross.

    `mask` is boolean, broadcastable to [batch, heads, q, k]; `bias` is an additive
    float bias (T5's relative positions) of the same shape. `scale=False` is T5, which
    folds 1/sqrt(head_dim) into its initialisation. `causal=True` adds the causal mask
    itself, and with a mutable "cache" collection reads and extends a key/value cache:
    then `mask` and `bias` span the whole cache ([.., q, cache_length]).
    `num_kv_heads < num_heads` is grouped-query attention (Ainslie et al. 2023): each key
    and value head serves `num_heads / num_kv_heads` consecutive query heads; the cache
    and prefixes hold the key/value heads only.
    """

    num_heads: int
    head_dim: int
    num_kv_heads: int = 0  # 0: as many as query heads
    use_bias: bool = True
    scale: bool = True
    causal: bool = False
    dropout_rate: float = 0.0
    dtype: DType = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.02)
    peft: PeftConfig = NO_PEFT

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None,
        *,
        context: Array | None = None,
        bias: Array | None = None,
        prefix: Array | None = None,
        rotary: tuple[Array, Array] | None = None,
        deterministic: bool = True,
        cache_context: bool = False,
    ) -> Array:
        """`prefix` [2, P, kv_heads, head_dim]: keys and values every query may attend to,
        placed before the real keys (prefix tuning); they carry no position (bias or
        rotation). `rotary` (positions [batch, q], inverse frequencies): rotary position
        embeddings applied to this call's queries and keys (`ftjax.models.rope`).
        `cache_context` (cross-attention): keys and values of `context` computed once per
        source, see `_context_cached`."""
        inner = self.num_heads * self.head_dim
        kv_heads = self.num_kv_heads or self.num_heads

        def dense(features: int, axes: tuple[str, str], name: str) -> Dense:
            return Dense(
                features, axes, self.use_bias, self.dtype, self.kernel_init, self.peft, name=name
            )

        def project(name: str, source: Array, heads: int) -> Array:
            out = dense(heads * self.head_dim, (EMBED, JOINED_HEADS), name)(source, deterministic)
            return out.reshape(*source.shape[:-1], heads, self.head_dim)

        q = project("query", x, self.num_heads)
        if cache_context:
            k, v = self._context_cached(context, lambda name: project(name, context, kv_heads))
        else:
            context = x if context is None else context
            k, v = project("key", context, kv_heads), project("value", context, kv_heads)
        if rotary is not None:
            q, k = rope.rotate(q, *rotary), rope.rotate(k, *rotary)
        if self.causal:
            if self.is_mutable_collection("cache"):
                k, v, visible = self._cached(k, v)
            else:
                visible = causal_mask(x.shape[1])
            mask = visible if mask is None else mask & visible
        if prefix is not None:
            k, v, mask, bias = _prepend_prefix(prefix.astype(self.dtype), k, v, mask, bias)
        if kv_heads != self.num_heads:
            k, v = (jnp.repeat(t, self.num_heads // kv_heads, axis=2) for t in (k, v))
        if self.scale:
            q = q * jnp.asarray(self.head_dim**-0.5, q.dtype)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        if bias is not None:
            scores = scores + bias.astype(jnp.float32)
        if mask is not None:
            scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        weights = Dropout(self.dropout_rate)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, preferred_element_type=jnp.float32)
        out = out.astype(self.dtype).reshape(*x.shape[:-1], inner)
        return dense(x.shape[-1], (JOINED_HEADS, EMBED), "output")(out, deterministic)

    def _context_cached(
        self, context: Array | None, project: Callable[[str], Array]
    ) -> tuple[Array, Array]:
        """Cross-attention keys/values of a source that stays the same over a decoding:
        with a mutable "cache", a call given `context` writes them there, and a call
        without (`context=None`, the decoding steps) reads them back, so the source is
        projected once, not at every step."""
        if context is not None:
            k, v = project("key"), project("value")
            if self.is_mutable_collection("cache"):
                self.put_variable("cache", "context_key", k)
                self.put_variable("cache", "context_value", v)
            return k, v
        if not self.has_variable("cache", "context_key"):
            raise ValueError(
                f"{'/'.join(self.path)}: cross-attention without a context reads its keys and "
                "values from the cache, which holds none (decode once with the context first)"
            )
        return tuple(self.get_variable("cache", f"context_{kind}") for kind in ("key", "value"))

    def _cached(self, k: Array, v: Array) -> tuple[Array, Array, Array]:
        """Writes this call's keys/values at the cache's next slots and returns the whole
        cache with the causal mask of these queries over it. The call that creates the
        cache (on a full-length input, see `ftjax.models.generation.init_cache`) only sizes it."""
        ready = self.has_variable("cache", "cached_key")
        key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
        if not ready:
            return k, v, causal_mask(k.shape[1])
        start = index.value
        for cached, new in ((key, k), (value, v)):
            cached.value = jax.lax.dynamic_update_slice(
                cached.value, new.astype(cached.value.dtype), (0, start, 0, 0)
            )
        index.value = start + k.shape[1]
        slots = start + jnp.arange(k.shape[1])
        visible = jnp.arange(key.value.shape[1])[None, :] <= slots[:, None]
        return key.value, value.value, visible[None, None]


def _prepend_prefix(prefix, k, v, mask, bias):
    batch, length = k.shape[0], prefix.shape[1]
    k = jnp.concatenate([jnp.broadcast_to(prefix[0], (batch, *prefix.shape[1:])), k], axis=1)
    v = jnp.concatenate([jnp.broadcast_to(prefix[1], (batch, *prefix.shape[1:])), v], axis=1)
    if mask is not None:
        mask = jnp.concatenate([jnp.ones((*mask.shape[:-1], length), bool), mask], axis=-1)
    if bias is not None:
        bias = jnp.pad(bias, [(0, 0)] * (bias.ndim - 1) + [(length, 0)])
    return k, v, mask, bias


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
    peft: PeftConfig = NO_PEFT

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        def dense(features: int, axes: tuple[str, str], name: str, h: Array) -> Array:
            layer = Dense(
                features, axes, self.use_bias, self.dtype, self.kernel_init, self.peft, name=name
            )
            return layer(h, deterministic)

        act = activation(self.act)
        if self.gated:
            h = act(dense(self.hidden, (EMBED, MLP), "gate", x))
            h = h * dense(self.hidden, (EMBED, MLP), "intermediate", x)
        else:
            h = act(dense(self.hidden, (EMBED, MLP), "intermediate", x))
        h = Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return dense(x.shape[-1], (MLP, EMBED), "output", h)


class Adapter(nn.Module):
    """Houlsby et al. (2019) bottleneck: `x + up(gelu(down(x)))`.

    `up` starts at zero, so an adapter-equipped model starts as the pretrained one.
    """

    size: int
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = Dense(
            self.size,
            (EMBED, ADAPTER),
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(1e-3),
            name="down",
        )(x)
        h = activation("gelu")(h)
        return x + Dense(
            x.shape[-1],
            (ADAPTER, EMBED),
            dtype=self.dtype,
            kernel_init=nn.initializers.zeros,
            name="up",
        )(h)


def adapt(peft: PeftConfig, h: Array, name: str, dtype: DType) -> Array:
    """Applies a bottleneck adapter named `name` to a sublayer's output, if enabled."""
    return Adapter(peft.adapter_size, dtype, name=name)(h) if peft.adapter_size else h


class PrefixEncoder(nn.Module):
    """Per-attention-site key/value prefixes, [sites, 2, P, heads, head_dim] (Li & Liang 2021).

    With `peft.prefix_hidden > 0` they come from an MLP over a [P, embed_dim] table (the
    paper's reparameterisation for stable training); `ftjax.methods.fold_prefix` turns a
    trained MLP into the plain `key_value` parameter.
    """

    peft: PeftConfig
    sites: int
    num_heads: int
    head_dim: int
    embed_dim: int

    @nn.compact
    def __call__(self) -> Array:
        length = self.peft.prefix_length
        shape = (self.sites, 2, length, self.num_heads, self.head_dim)
        if not self.peft.prefix_hidden:
            return _param(
                self,
                "key_value",
                nn.initializers.normal(1.0),
                shape,
                (PREFIX_SITES, KV_PAIR, PREFIX, HEADS, KV),
            )
        table = _param(
            self,
            "embedding",
            nn.initializers.normal(1.0),
            (length, self.embed_dim),
            (PREFIX, EMBED),
        )
        h = jnp.tanh(Dense(self.peft.prefix_hidden, (EMBED, MLP), name="hidden")(table))
        out = Dense(
            self.sites * 2 * self.num_heads * self.head_dim, (MLP, JOINED_HEADS), name="output"
        )(h)
        return out.reshape(length, self.sites, 2, self.num_heads, self.head_dim).transpose(
            1, 2, 0, 3, 4
        )


def prefixes(peft: PeftConfig, sites: int, num_heads: int, head_dim: int, embed_dim: int):
    """All sites' prefixes [sites, 2, P, heads, head_dim] from a submodule named "prefix",
    or None when prefix tuning is off."""
    if not peft.prefix_length:
        return None
    return PrefixEncoder(peft, sites, num_heads, head_dim, embed_dim, name="prefix")()


@jax.custom_vjp
def layer_boundary(x: Array) -> Array:
    """The identity, whose gradient XLA must materialise. Left alone, XLA:CPU fuses the
    backward pass's elementwise chain across layers: every layer's gradient fusion
    recomputed the residual-stream gradients of all the layers above it (quadratic in
    depth). A product with the identity matrix is exact (each output is one input times
    1 plus zeros) and is never fused into an elementwise loop, so the chain stops here;
    `optimization_barrier` does not survive XLA:CPU's pipeline. benchmarks/RESULTS.md."""
    return x


def _boundary_forward(x: Array) -> tuple[Array, None]:
    return x, None


def _boundary_backward(_, gradient: Array) -> tuple[Array]:
    eye = jnp.eye(gradient.shape[-1], dtype=gradient.dtype)
    return (jnp.einsum("...d,de->...e", gradient, eye),)


layer_boundary.defvjp(_boundary_forward, _boundary_backward)

# `model.remat`: what a layer keeps for the backward pass; the rest is recomputed.
REMAT_POLICIES: dict[str, Callable | None] = {
    "none": None,  # keep everything (no rematerialisation)
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only each layer's input
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep every matmul output
    # keep the projections' outputs, recompute attention scores and elementwise ops
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
LAYERS_AXIS = "layers"  # logical axis of that leading axis (replicated by the rules)


def remat_policy(name: str) -> Callable | None:
    if name not in REMAT_POLICIES:
        raise ValueError(f"model.remat={name!r}: one of {sorted(REMAT_POLICIES)}")
    return REMAT_POLICIES[name]


@functools.cache
def _step_of(block: type[nn.Module], boundary: bool, keep: bool) -> type[nn.Module]:
    """`block` as one step of a stack: (x, ...) -> (x', x' or None) (scan's carry and
    output), ending in `layer_boundary` when asked."""

    class Step(block):
        def __call__(self, x, shared, per_layer, deterministic):
            x = super().__call__(x, shared, per_layer, deterministic)
            x = batch_sharded(layer_boundary(x) if boundary else x)
            return x, (x if keep else None)

    Step.__name__ = Step.__qualname__ = block.__name__
    return Step


def run_stack(
    block: type[nn.Module],
    config: Any,
    depth: int,
    x: Array,
    shared: tuple,
    per_layer: Any,
    deterministic: bool,
    *,
    keep_states: bool = True,
    boundary: bool = True,
    **block_fields: Any,
) -> list[Array]:
    """Runs `depth` layers `block(config, **block_fields)(x, shared, per_layer[i],
    deterministic)` inside the calling module; returns the input and every layer's
    output (with `keep_states=False` under `config.scan_layers`, the input and the last
    output only: a scan would otherwise stack every layer's output in memory).

    `per_layer` is a pytree whose leaves have a leading `depth` axis (prefixes), or None.
    `config.remat` rematerialises each layer in training (`REMAT_POLICIES`);
    `config.scan_layers` runs the layers as one `nn.scan` over params stacked under
    `<stack>/layers/...` (compile time flat in depth; `ftjax.models.stacking` maps them to
    and from the per-layer paths `<stack>/layer_i/...` everything else speaks)."""
    step = _step_of(block, boundary, keep_states or not config.scan_layers)
    policy = remat_policy(config.remat)
    if policy is not None and not deterministic:  # evaluation keeps nothing for a backward
        # static: `deterministic` (self is argument 0) picks dropout on or off
        step = nn.remat(
            step, policy=policy, prevent_cse=not config.scan_layers, static_argnums=(4,)
        )
    if not config.scan_layers:
        states = [x]
        for i in range(depth):
            layer_inputs = jax.tree.map(lambda leaf, i=i: leaf[i], per_layer)
            x, _ = step(config, name=f"layer_{i}", **block_fields)(
                x, shared, layer_inputs, deterministic
            )
            states.append(x)
        return states
    config = dataclasses.replace(config, peft=dataclasses.replace(config.peft, scan_depth=depth))
    scanned = nn.scan(
        step,
        variable_axes={"params": 0, "cache": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, 0, nn.broadcast),
        length=depth,
        metadata_params={nn.PARTITION_NAME: LAYERS_AXIS},
    )
    last, outputs = scanned(config, name=STACKED, **block_fields)(
        x, shared, per_layer, deterministic
    )
    if not keep_states:
        return [x, last]
    return [x, *(outputs[i] for i in range(depth))]


class SoftPrompt(nn.Module):
    """Lester et al. (2021): P trainable vectors placed before the input embeddings.

    As in PEFT, the prompt takes positions 0..P-1 and the real tokens follow from P
    (`virtual_tokens`); the prompt positions are always attended to.
    Initialised U(-0.5, 0.5); `ftjax.methods` re-initialises from vocabulary or text.
    """

    length: int

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> tuple[Array, Array]:
        init = nn.initializers.uniform(1.0)
        table = _param(
            self,
            "embedding",
            lambda k, s, d: init(k, s, d) - 0.5,
            (self.length, x.shape[-1]),
            (PREFIX, EMBED),
        )
        prompt = jnp.broadcast_to(table.astype(x.dtype), (x.shape[0], *table.shape))
        ones = jnp.ones((mask.shape[0], self.length), mask.dtype)
        return jnp.concatenate([prompt, x], 1), jnp.concatenate([ones, mask], 1)


def prepend_prompt(
    peft: PeftConfig, x: Array, mask: Array, decode: str = ""
) -> tuple[Array, Array, int]:
    """Prepends the soft prompt (submodule "prompt") when prompt tuning is on; returns
    the inputs, their mask and how many prompt positions `x` gained. In a decoding step
    (`decode="step"`) the prompt is already in the cache: only the mask gains its slots."""
    length = peft.prompt_length
    if not length:
        return x, mask, 0
    if decode == "step":
        return x, jnp.pad(mask, ((0, 0), (length, 0)), constant_values=1), 0
    x, mask = SoftPrompt(length, name="prompt")(x, mask)
    return x, mask, length
