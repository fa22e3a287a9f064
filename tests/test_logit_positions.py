"""`logit_positions`: a caller names the positions whose LM logits it reads, and gets
exactly the full logits at those positions (every family with an LM head)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from ftjax.models import init_params
from ftjax.models.base import PeftConfig
from tests.helpers.tiny import tiny_model

IDS = jnp.array([[5, 6, 7, 8, 9, 3], [3, 4, 5, 6, 0, 0]])
MASK = (IDS > 0).astype(jnp.int32)
POSITIONS = jnp.array([[5, 0, 2], [3, 3, 1]])  # any order, repeats allowed
PEFTS = {"plain": PeftConfig(), "prompt": PeftConfig(prompt_length=2)}


def logits(model, params, **kwargs):
    if "T5" in type(model).__name__:
        kwargs["decoder_input_ids"] = IDS
        kwargs["decoder_attention_mask"] = MASK
    return model.apply({"params": params}, IDS, MASK, **kwargs).logits


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
@pytest.mark.parametrize("peft", list(PEFTS))
def test_logits_at_positions_equal_the_full_logits_there(family, peft):
    model = tiny_model(family)
    extra = {"with_mlm_head": True} if family == "bert" else {}
    model = type(model)(dataclasses.replace(model.config, peft=PEFTS[peft], **extra))
    params = init_params(model, 0)
    full = logits(model, params)
    some = logits(model, params, logit_positions=POSITIONS)
    assert some.shape == (*POSITIONS.shape, full.shape[-1])
    want = np.take_along_axis(np.asarray(full), np.asarray(POSITIONS)[..., None], axis=1)
    np.testing.assert_allclose(np.asarray(some), want, atol=1e-6, rtol=0)
