"""The layers chosen for XLA:CPU's speed keep their numerics: the hash-based dropout
(drop rate, scaling, independence across elements and calls, gradient), the erf-based
exact GELU against PyTorch's, LayerNorm's hand-written backward, the layer
boundary's gradient and bf16 matmul inputs in both passes."""

import math

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
    # The float64 truth, x/2 erfc(-x/sqrt 2), which has no cancellation for negative x.
    truth = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64)])
    np.testing.assert_allclose(ours, truth, atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(ours, jax.nn.gelu(x, approximate=False), atol=1e-6)
    # PyTorch's own vectorised erf is off the truth by up to 1.1e-6 here (at x = -3.47):
    # agreement with it is within both sides' errors.
    reference = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, reference, atol=2.5e-6, rtol=1e-6)


def test_layer_norm_gradients_equal_autodiff_of_the_formula():
    """layers.layer_norm's hand-written backward (it lets XLA:CPU materialise the input
    gradient) against JAX's autodiff of the plain formula."""
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 6, 32)) * 3 + 1
    scale = jax.random.normal(jax.random.PRNGKey(4), (32,))
    bias = jax.random.normal(jax.random.PRNGKey(5), (32,))
    weights = jax.random.normal(jax.random.PRNGKey(6), x.shape)

    def plain(x, scale, bias):
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-12) * scale + bias

    def ours(x, scale, bias):
        return layers.layer_norm(x, scale, bias, 1e-12)

    np.testing.assert_allclose(ours(x, scale, bias), plain(x, scale, bias), atol=1e-5)
    grads = [
        jax.grad(lambda *a, f=f: (f(*a) * weights).sum(), argnums=(0, 1, 2))(x, scale, bias)
        for f in (ours, plain)
    ]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


def test_layer_boundary_passes_values_and_gradients_unchanged():
    x = jax.random.normal(jax.random.PRNGKey(7), (3, 5, 16))
    cotangent = jax.random.normal(jax.random.PRNGKey(8), x.shape)
    y, pullback = jax.vjp(layers.layer_boundary, x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(pullback(cotangent)[0], cotangent)  # bit-exact


def _dots(jaxpr) -> list:
    """Every dot_general of a jaxpr, inside custom-vjp calls and jits too."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn)
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                found += _dots(inner)
    return found


def test_bf16_matmul_precision_dots_bf16_in_both_passes_and_accumulates_in_f32():
    x = jax.random.normal(jax.random.key(0), (4, 6, 32))
    kernel = jax.random.normal(jax.random.key(1), (32, 16)) / 8
    weights = jax.random.normal(jax.random.key(2), (4, 6, 16))

    def loss(x, kernel):
        return jnp.sum(layers.matmul(x, kernel, jnp.float32) * weights)

    grad = jax.value_and_grad(loss, argnums=(0, 1))
    with jax.default_matmul_precision("bfloat16"):
        value, (d_x, d_kernel) = grad(x, kernel)
        dots = _dots(jax.make_jaxpr(grad)(x, kernel).jaxpr)
    assert len(dots) == 3  # forward, d_x, d_kernel
    for eqn in dots:
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * 2, eqn
        assert eqn.outvars[0].aval.dtype == jnp.float32
    # the same products of the bf16-rounded operands, accumulated in float64
    x16, k16, w16 = (np.asarray(a.astype(jnp.bfloat16), np.float64) for a in (x, kernel, weights))
    np.testing.assert_allclose(value, np.sum((x16 @ k16) * np.asarray(weights)), rtol=1e-5)
    np.testing.assert_allclose(d_x, w16 @ k16.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d_kernel, np.einsum("bsi,bso->io", x16, w16), rtol=1e-5, atol=1e-5)
    # and within bf16's rounding of the float32 results, which the default keeps
    exact = grad(x, kernel)
    assert float(exact[0]) != float(value)
    np.testing.assert_allclose(d_kernel, exact[1][1], rtol=0.05, atol=0.05)
