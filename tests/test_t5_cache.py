"""T5 decoding with cross-attention keys/values cached once per source gives the same
tokens as projecting the source at every step: greedy, beam search and sampling, on
plain, LoRA (on the cached key/value projections too), prefix-tuned and scanned stacks.

A small vocabulary and a large initialisation keep the logits well separated, so token
identity tests the computation, not float32 rounding between near-ties.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax.core import partition
from ftjax.models import generation, init_params, stacking
from ftjax.models.base import PeftConfig
from ftjax.models.hub import stack_depths
from tests.helpers.tiny import tiny_model

# Minutes, not seconds: outside the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

NEW = 8
IDS = jnp.array([[5, 6, 7, 8, 9, 10, 11, 2], [3, 4, 5, 2, 0, 0, 0, 0], [9, 2, 0, 0, 0, 0, 0, 0]])
MASK = (IDS > 0).astype(jnp.int32)
LORA = PeftConfig(lora_rank=2, lora_targets=r".*layer_1/(attention|cross_attention)/(key|value)")
VARIANTS = {
    "plain": {},
    "lora": {"peft": LORA},
    "prefix": {"peft": PeftConfig(prefix_length=3)},
    "scanned": {"scan_layers": True},
    "scanned-prefix-lora": {
        "scan_layers": True,
        "peft": dataclasses.replace(LORA, prefix_length=3),
    },
}
STRATEGIES = {
    "greedy": {"strategy": "greedy"},
    "beam": {"strategy": "beam", "num_beams": 3},
    "sample": {"strategy": "sample", "rng": jax.random.PRNGKey(3)},
}


def t5(**fields):
    model = tiny_model("t5", vocab_size=48, initializer_factor=4.0, dropout=0.0, **fields)
    canonical = init_params(model, 0)
    # Non-zero LoRA B so that the adapted projections really differ from the base.
    canonical = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.3 if "lora_b" in jax.tree_util.keystr(p) else x, canonical
    )
    if not model.config.scan_layers:
        return model, canonical
    flat = stacking.to_storage(model, stack_depths(model), partition.flatten(canonical))
    return model, partition.unflatten(flat)


def generate(model, params, eos: int, cache_context: bool, **options) -> np.ndarray:
    rng = options.pop("rng", None)
    run = functools.partial(
        generation.generate, model, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0,
        cache_context=cache_context, **options,
    )  # fmt: skip
    return np.asarray(jax.jit(run)(params, IDS, MASK, rng=rng))


def frequent_token(model, params) -> int:
    """The token greedy decoding emits most often: as EOS it stops rows early."""
    tokens = generate(model, params, -1, True)
    return int(np.bincount(tokens.ravel()).argmax())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cached_cross_attention_gives_the_same_tokens(variant):
    model, params = t5(**VARIANTS[variant])
    eos = frequent_token(model, params)
    stopped = False
    for name, options in STRATEGIES.items():
        cached = generate(model, params, eos, True, **options)
        uncached = generate(model, params, eos, False, **options)
        np.testing.assert_array_equal(cached, uncached, err_msg=name)
        stopped |= bool((cached == eos).any())
    assert stopped  # some hypothesis ended at EOS, not only at the length limit


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_scanned_stack_decodes_as_the_unrolled_one(strategy):
    """The cache's rows sit behind the layer axis in a scanned stack: beams must expand
    and reorder them there."""
    peft = dataclasses.replace(LORA, prefix_length=3)
    (model, params), (scanned, stacked) = t5(peft=peft), t5(peft=peft, scan_layers=True)
    eos = frequent_token(model, params)
    want = generate(model, params, eos, True, **STRATEGIES[strategy])
    np.testing.assert_array_equal(
        generate(scanned, stacked, eos, True, **STRATEGIES[strategy]), want
    )


def test_decoding_without_a_context_needs_a_cached_one():
    model, params = t5()
    start = jnp.zeros((IDS.shape[0], 1), jnp.int32)
    with pytest.raises(ValueError, match="cross_attention.*reads its keys and values"):
        model.apply(
            {"params": params}, start, None, MASK, method="decode", cache_context=True,
            mutable=["cache"],
        )  # fmt: skip
