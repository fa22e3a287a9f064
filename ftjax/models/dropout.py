"""Dropout whose mask is a hash of each element's index: fused, never stored.

`flax.linen.Dropout` draws its mask with threefry (`jax.random.bernoulli`): on CPU that
is a loop of passes over a uint32 array as large as the activations, which the backward
pass reads again. Here the module draws one 64-bit seed per call (from the "dropout"
rng, as flax does) and each element's keep bit is a 32-bit integer hash of its flat
index and that seed: a handful of integer ops that XLA fuses into the consumer, forward
and backward, with no random array in memory (benchmarks/RESULTS.md: the profile).

Each element is dropped with probability `rate` (to 2**-32) and kept ones are scaled by
1 / (1 - rate), as in flax and PyTorch; masks differ from flax's for the same rng, as
any two random streams do. The hash is "lowbias32" (C. Wellons, hash-prospector),
applied twice with the two seed words, so masks of different calls and neighbouring
elements are uncorrelated (tested in tests/test_dropout.py).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)


def _lowbias32(x: jax.Array) -> jax.Array:
    x = x ^ (x >> 16)
    x = x * jnp.uint32(_MULTIPLIERS[0])
    x = x ^ (x >> 15)
    x = x * jnp.uint32(_MULTIPLIERS[1])
    return x ^ (x >> 16)


def hash_bits(shape: tuple[int, ...], seed: jax.Array) -> jax.Array:
    """uint32 bits, one per element of `shape`, from the two uint32 words of `seed`."""
    index = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    return _lowbias32(_lowbias32(index ^ seed[0]) ^ seed[1])


def seed_words(key: jax.Array) -> jax.Array:
    """Two uint32 words hashed from all words of a PRNG key (typed or raw: threefry's 2,
    rbg's 4, whose halves can repeat). No threefry call: each threefry draw costs
    XLA:CPU over a second to compile, and the key is already unique to the call."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    words = key.reshape(-1).astype(jnp.uint32)
    seeds = []
    for start in (0x9E3779B9, 0x85EBCA6B):  # two chains, two different starting words
        acc = jnp.uint32(start)
        for i in range(words.shape[0]):
            acc = _lowbias32(acc ^ words[i])
        seeds.append(acc)
    return jnp.stack(seeds)


def keep_mask(shape: tuple[int, ...], rate: float, seed: jax.Array) -> jax.Array:
    """Boolean mask, each element True with probability 1 - rate."""
    threshold = min(round(rate * 2**32), 2**32 - 1)
    return hash_bits(shape, seed) >= jnp.uint32(threshold)


class Dropout(nn.Module):
    """Drop-in for `flax.linen.Dropout(rate)(x, deterministic=...)`."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        keep = keep_mask(x.shape, self.rate, seed_words(self.make_rng("dropout")))
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros_like(x))
