"""The Llama family against transformers' PyTorch `LlamaForCausalLM`, float32 on CPU:
random tiny configs (grouped-query attention, untied heads, biases, every RoPE scaling
ftjax reads) written with `save_pretrained`, max |diff| <= 1e-4 on a padded batch."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ftjax.models import LlamaModel, from_pretrained  # noqa: E402
from tests.test_model_parity import (  # noqa: E402
    TOL,
    assert_left_padding_changes_nothing,
    load_save_load_bit_exact,
    max_diff,
    padded_batch,
)

BASE = dict(
    vocab_size=103,
    hidden_size=32,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
VARIANTS = {
    "gqa-untied": dict(tie_word_embeddings=False, rope_theta=500.0),
    "mha-tied-biases-linear": dict(
        num_key_value_heads=4,
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ),
    "llama3": dict(
        num_key_value_heads=1,
        head_dim=16,
        rope_theta=10000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ),
    # Positions run past max_position_embeddings=8, so the dynamic base grows.
    "dynamic": dict(
        max_position_embeddings=8, rope_scaling={"rope_type": "dynamic", "factor": 2.0}
    ),
}


def reference(path, **variant):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{**BASE, **variant})
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    return model


def run_both(model, params, ref, ids, mask, positions=None):
    ours = model.apply({"params": params}, ids, mask, positions, output_hidden_states=True)
    kwargs = {} if positions is None else {"position_ids": torch.tensor(positions)}
    with torch.no_grad():
        theirs = ref(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            output_hidden_states=True,
            **kwargs,
        )
    return ours, theirs


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_llama_matches_transformers(tmp_path, variant):
    ref = reference(tmp_path, **VARIANTS[variant])
    model, params = from_pretrained(tmp_path)
    assert isinstance(model, LlamaModel)
    assert ("lm_head" in params) == (not ref.config.tie_word_embeddings)
    ids, mask = padded_batch(ref.config.vocab_size)  # right padding
    ours, theirs = run_both(model, params, ref, ids, mask)
    assert max_diff(ours.logits, theirs.logits, mask) <= TOL
    for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        assert max_diff(a, b, mask) <= TOL


def test_llama_left_padding_keeps_real_token_positions(tmp_path):
    ref = reference(tmp_path, **VARIANTS["gqa-untied"])
    model, params = from_pretrained(tmp_path)
    assert_left_padding_changes_nothing(model, params, ref, ref.config.vocab_size)


@pytest.mark.parametrize("variant", ["gqa-untied", "mha-tied-biases-linear", "llama3"])
def test_llama_save_load_roundtrip_is_bit_exact_and_loads_in_transformers(tmp_path, variant):
    ref = reference(tmp_path / "hf", **VARIANTS[variant])
    load_save_load_bit_exact(tmp_path / "hf", tmp_path / "ours")
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert reloaded.config.rope_parameters == ref.config.rope_parameters
    assert reloaded.config.tie_word_embeddings == ref.config.tie_word_embeddings
    theirs = reloaded.state_dict()
    for name, tensor in ref.state_dict().items():
        assert torch.equal(theirs[name], tensor), name
