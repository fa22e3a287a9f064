"""The hash-based dropout: the drop rate, the scaling, independence across elements and
calls, and its gradient; and the erf-based exact GELU against PyTorch's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax.models import layers
from ftjax.models.dropout import Dropout, keep_mask, seed_words


def apply(rate: float, x: jax.Array, rng: int = 0, deterministic: bool = False) -> jax.Array:
    return Dropout(rate).apply({}, x, deterministic, rngs={"dropout": jax.random.PRNGKey(rng)})


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_drop_rate_and_scaling(rate):
    x = jnp.ones((256, 1024))
    y = np.asarray(apply(rate, x))
    dropped = (y == 0).mean()
    sigma = np.sqrt(rate * (1 - rate) / y.size)
    assert abs(dropped - rate) < 5 * sigma, (dropped, rate)
    np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-6)


def test_identity_when_deterministic_or_rate_zero():
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8))
    np.testing.assert_array_equal(apply(0.3, x, deterministic=True), x)
    np.testing.assert_array_equal(apply(0.0, x), x)
    np.testing.assert_array_equal(apply(1.0, x), np.zeros((4, 8)))


def test_masks_are_reproducible_and_differ_between_rngs():
    x = jnp.ones((64, 64))
    np.testing.assert_array_equal(apply(0.5, x, rng=3), apply(0.5, x, rng=3))
    differ = (np.asarray(apply(0.5, x, rng=3)) != np.asarray(apply(0.5, x, rng=4))).mean()
    assert 0.4 < differ < 0.6  # two independent masks at rate 0.5 differ in half the places


def test_no_correlation_between_neighbours_or_consecutive_seeds():
    shape = (512, 512)
    masks = [
        np.asarray(keep_mask(shape, 0.5, jnp.array([s, 7], jnp.uint32)), np.float64) for s in (0, 1)
    ]
    limit = 5 / np.sqrt(masks[0].size)  # 5 sigma of a correlation of independent bits
    flat = masks[0].reshape(-1)
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < limit  # neighbours in a row
    assert abs(np.corrcoef(masks[0][:-1].ravel(), masks[0][1:].ravel())[0, 1]) < limit
    assert abs(np.corrcoef(masks[0].ravel(), masks[1].ravel())[0, 1]) < limit  # seeds 0, 1


def test_sites_of_one_module_draw_different_masks():
    import flax.linen as nn

    class Two(nn.Module):
        rate: float

        @nn.compact
        def __call__(self, x, deterministic=False):
            return Dropout(self.rate)(x, deterministic), Dropout(self.rate)(x, deterministic)

    a, b = Two(0.5).apply({}, jnp.ones((64, 64)), rngs={"dropout": jax.random.PRNGKey(0)})
    assert 0.4 < (np.asarray(a) != np.asarray(b)).mean() < 0.6


def test_gradient_is_the_scaled_mask():
    x = jax.random.normal(jax.random.PRNGKey(2), (16, 32))
    y = apply(0.25, x, rng=5)
    grad = jax.grad(lambda v: apply(0.25, v, rng=5).sum())(x)
    np.testing.assert_allclose(grad, np.where(np.asarray(y) != 0, 1 / 0.75, 0.0), rtol=1e-6)


def test_seed_words_of_typed_and_raw_keys():
    raw = jax.random.PRNGKey(9)
    typed = jax.random.wrap_key_data(raw)
    np.testing.assert_array_equal(seed_words(raw), seed_words(typed))
    rbg = jax.random.key(9, impl="rbg")
    assert seed_words(rbg).shape == (2,)


def test_gelu_exact_matches_pytorch():
    torch = pytest.importorskip("torch")
    x = np.linspace(-12, 12, 100_001, dtype=np.float32)
    ours = np.asarray(layers.gelu_exact(jnp.asarray(x)))
    reference = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(ours, jax.nn.gelu(x, approximate=False), atol=1e-6)
