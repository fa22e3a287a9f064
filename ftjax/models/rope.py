"""Rotary position embeddings (Su et al. 2021) as Llama-family checkpoints configure them.

`Rope` reads the config.json fields transformers reads: `rope_parameters` (transformers
5) or `rope_theta` + `rope_scaling` (4.x), with the scaling types "default", "linear"
(positions divided by `factor`), "dynamic" (NTK-aware: the base grows with the longest
position once it passes `max_position_embeddings`) and "llama3" (frequency bands
rescaled by wavelength). Frequencies follow transformers' float32 arithmetic, and the
rotation is its "rotate half" layout: dimension i pairs with i + head_dim / 2.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("default", "linear", "dynamic", "llama3")


@dataclasses.dataclass(frozen=True)
class Rope:
    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    # llama3: the pretraining context and the band edges of its frequency rescaling.
    original_max_position_embeddings: int = 0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> Rope:
        params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        kind = params.get("rope_type", params.get("type", "default"))
        if kind not in KINDS:
            raise ValueError(
                f"config.json rope type {kind!r} is not supported; supported: {', '.join(KINDS)}"
            )
        partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
        if partial != 1.0:
            raise ValueError(f"config.json partial_rotary_factor={partial} is not supported (1.0)")
        return cls(
            theta=float(params.get("rope_theta", hf.get("rope_theta", 10000.0))),
            kind=kind,
            factor=float(params.get("factor", 1.0)),
            original_max_position_embeddings=int(
                params.get("original_max_position_embeddings", hf.get("max_position_embeddings", 0))
            ),
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        )

    def to_hf(self) -> dict[str, Any]:
        """Both spellings, so transformers 4.x and 5.x read the same rotation."""
        params: dict[str, Any] = {"rope_type": self.kind, "rope_theta": self.theta}
        if self.kind != "default":
            params["factor"] = self.factor
        if self.kind == "llama3":
            params.update(
                original_max_position_embeddings=self.original_max_position_embeddings,
                low_freq_factor=self.low_freq_factor,
                high_freq_factor=self.high_freq_factor,
            )
        scaling = None if self.kind == "default" else dict(params)
        return {"rope_theta": self.theta, "rope_scaling": scaling, "rope_parameters": params}


def _base_frequencies(theta, dim: int, xp: Any = np):
    """1 / theta^(2i/dim) in float32; `xp=jnp` when theta is traced (dynamic scaling)."""
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return (1.0 / (xp.asarray(theta, xp.float32) ** exponents)).astype(xp.float32)


def _llama3(inv_freq: np.ndarray, rope: Rope) -> np.ndarray:
    context = rope.original_max_position_embeddings
    low_wavelen, high_wavelen = context / rope.low_freq_factor, context / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (context / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def inverse_frequencies(
    rope: Rope, dim: int, max_position_embeddings: int, positions: jax.Array
) -> jax.Array:
    """[dim / 2] float32 frequencies for a call whose positions are `positions`."""
    if rope.kind == "dynamic":
        # transformers grows the base with the call's longest position past the limit.
        length = jnp.maximum(positions.max() + 1, max_position_embeddings).astype(jnp.float32)
        growth = rope.factor * length / max_position_embeddings - (rope.factor - 1)
        return _base_frequencies(rope.theta * growth ** (dim / (dim - 2)), dim, jnp)
    inv_freq = _base_frequencies(rope.theta, dim)
    if rope.kind == "linear":
        inv_freq = inv_freq / np.float32(rope.factor)
    elif rope.kind == "llama3":
        inv_freq = _llama3(inv_freq, rope)
    return jnp.asarray(inv_freq, jnp.float32)


def rotate(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """x [batch, length, heads, head_dim] rotated by its positions [batch, length]."""
    freqs = positions[..., None].astype(jnp.float32) * inv_freq
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated_half = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated_half * sin
