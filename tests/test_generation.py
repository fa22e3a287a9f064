"""KV-cache decoding: cached equals uncached, and greedy / beam equal transformers' generate.

Reference models are small random PyTorch GPT-2, Llama (grouped-query attention, rotary
positions) and T5 checkpoints with a small vocabulary
and a large initialisation, so their logits are well separated (no near-ties for argmax
to flip between two float32 implementations).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ftjax.models import (  # noqa: E402
    from_pretrained,
    generation,  # noqa: E402
    hub,
)
from ftjax.models.base import PeftConfig  # noqa: E402
from ftjax.models.hub import complete_params, override_config  # noqa: E402

PAD, NEW = 0, 10
LENGTHS = (6, 3, 8, 1)


def left_padded(vocab: int, lengths=LENGTHS, seed: int = 0):
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.full((len(lengths), width), PAD, np.int64)
    mask = np.zeros_like(ids, np.int32)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = rng.integers(3, vocab, n)
        mask[row, width - n :] = 1
    return ids, mask


def right_padded(vocab: int, lengths=LENGTHS, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), max(lengths)), PAD, np.int64)
    mask = np.zeros_like(ids, np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(3, vocab, n)
        mask[row, :n] = 1
    return ids, mask


def reference(family: str, path):
    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=48,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            initializer_range=0.5,
            bos_token_id=1,
            eos_token_id=2,
        )
        model = transformers.GPT2LMHeadModel(config)
    elif family == "llama":
        config = transformers.LlamaConfig(
            vocab_size=48, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            initializer_range=0.5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        )  # fmt: skip
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.T5Config(
            vocab_size=48, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
            num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
            initializer_factor=4.0, decoder_start_token_id=PAD, pad_token_id=PAD,
        )  # fmt: skip
        model = transformers.T5ForConditionalGeneration(config)
    model.eval().save_pretrained(path)
    return model


def prompts(family: str):
    return (right_padded if family == "t5" else left_padded)(48)


def jit_generate(model, **options):
    return jax.jit(functools.partial(generation.generate, model, **options))


def uncached_greedy(model, params, ids, mask, n, eos):
    """Reruns the whole sequence at every step, no cache: the reference for the cache.
    The sequence buffer has its final length from the start (causal attention never
    looks at the unfilled slots), so the step compiles once."""
    encoder_decoder = len(hub.family_of(model).stacks(model.config)) == 2
    batch, width = ids.shape

    @jax.jit
    def next_logits(sequence, t):
        if encoder_decoder:
            logits = model.apply({"params": params}, ids, mask, decoder_input_ids=sequence).logits
            return logits[:, t]
        full_mask = jnp.concatenate([mask, jnp.ones((batch, n), mask.dtype)], 1)
        return model.apply({"params": params}, sequence, full_mask).logits[:, width + t - 1]

    if encoder_decoder:
        sequence = jnp.full((batch, n + 1), model.config.decoder_start_token_id, jnp.int32)
        offset = 1
    else:
        sequence = jnp.concatenate(
            [jnp.asarray(ids, jnp.int32), jnp.zeros((batch, n), jnp.int32)], 1
        )
        offset = width
    done = jnp.zeros(batch, bool)
    for t in range(n):
        token = jnp.where(done, PAD, jnp.argmax(next_logits(sequence, t), -1)).astype(jnp.int32)
        sequence = sequence.at[:, offset + t].set(token)
        done = done | (token == eos)
    return np.asarray(sequence[:, offset:])


def an_eos_it_reaches(model, params, ids, mask) -> int:
    """The token greedy decoding emits most often, so EOS stops rows early in the tests."""
    tokens = np.asarray(
        jit_generate(model, max_new_tokens=NEW, eos_token_id=-1, pad_token_id=PAD)(
            params, ids, mask
        )
    )
    return int(np.bincount(tokens.ravel()).argmax())


@pytest.mark.parametrize(
    "family, peft",
    [
        ("gpt2", PeftConfig()),
        ("t5", PeftConfig()),
        ("gpt2", PeftConfig(prompt_length=3, prefix_length=2)),
        ("t5", PeftConfig(prompt_length=3, prefix_length=2, lora_rank=2, lora_targets=".*query")),
        (
            "llama",
            PeftConfig(prompt_length=3, prefix_length=2, lora_rank=2, lora_targets=".*query"),
        ),
    ],
    ids=["gpt2", "t5", "gpt2-prompt-prefix", "t5-prompt-prefix-lora", "llama-prompt-prefix-lora"],
)
def test_cached_greedy_equals_uncached(tmp_path, family, peft):
    reference(family, tmp_path)
    model, params = from_pretrained(tmp_path)
    if peft != PeftConfig():
        model = type(model)(override_config(model.config, peft=peft))
        params = complete_params(model, params, 1)
        # Non-zero LoRA B so that the adapted path really differs from the base.
        params = jax.tree_util.tree_map_with_path(
            lambda p, x: x + 0.3 if "lora_b" in jax.tree_util.keystr(p) else x, params
        )
    ids, mask = prompts(family)
    eos = an_eos_it_reaches(model, params, ids, mask)
    cached = jit_generate(model, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=PAD)
    ours = np.asarray(cached(params, ids, mask))
    expected = uncached_greedy(model, params, ids, mask, NEW, eos)
    np.testing.assert_array_equal(ours, expected)
    assert (ours == eos).any() and (ours[:, -1] == PAD).any()  # some row stopped early


def hf_generate(ref, ids, mask, eos, **options) -> np.ndarray:
    with torch.no_grad():
        out = ref.generate(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=NEW,
            eos_token_id=eos, pad_token_id=PAD, do_sample=False, **options,
        ).numpy()  # fmt: skip
    generated = out[:, 1:] if ref.config.is_encoder_decoder else out[:, ids.shape[1] :]
    generated = np.pad(generated, ((0, 0), (0, NEW - generated.shape[1])), constant_values=PAD)
    # transformers' beam search fills finished rows with EOS when pad_token_id is 0
    # (`pad_token_id or eos`); ftjax pads after EOS in every strategy.
    after_eos = np.cumsum(generated == eos, axis=1) - (generated == eos) > 0
    return np.where(after_eos, PAD, generated)


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5"])
@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "greedy"},
        {"strategy": "beam", "num_beams": 3, "length_penalty": 1.0},
        {"strategy": "beam", "num_beams": 4, "length_penalty": 0.0},
        {"strategy": "beam", "num_beams": 2, "length_penalty": 2.0},
    ],
    ids=["greedy", "beam3", "beam4-lp0", "beam2-lp2"],
)
def test_decoding_equals_transformers_generate(tmp_path, family, options):
    ref = reference(family, tmp_path)
    model, params = from_pretrained(tmp_path)
    ids, mask = prompts(family)
    eos = an_eos_it_reaches(model, params, ids, mask)
    ours = np.asarray(
        jit_generate(model, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=PAD, **options)(
            params, ids, mask
        )
    )
    hf_options = {"num_beams": options.get("num_beams", 1)}
    if options["strategy"] == "beam":
        hf_options.update(length_penalty=options["length_penalty"], early_stopping=False)
    np.testing.assert_array_equal(ours, hf_generate(ref, ids, mask, eos, **hf_options))
    if options.get("length_penalty", 1.0) <= 1.0:  # a large penalty favours long outputs
        assert (ours == eos).any()  # hypotheses finished early, not only at the length limit


def test_top_p_filter_keeps_the_smallest_sufficient_set():
    logits = jnp.log(jnp.array([[0.1, 0.5, 0.15, 0.25]]))
    kept = np.isfinite(np.asarray(generation.top_p_filter(logits, 0.7)))
    assert kept.tolist() == [[False, True, False, True]]  # 0.5 + 0.25 reaches 0.7
    kept = np.isfinite(np.asarray(generation.top_p_filter(logits, 0.01)))
    assert kept.tolist() == [[False, True, False, False]]  # always the most likely one


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sampling(tmp_path, family):
    reference(family, tmp_path)
    model, params = from_pretrained(tmp_path)
    ids, mask = prompts(family)
    options = dict(max_new_tokens=NEW, eos_token_id=-1, pad_token_id=PAD)
    greedy = jit_generate(model, **options)(params, ids, mask)
    # A nucleus of one token is greedy decoding, whatever the temperature.
    nucleus = jit_generate(model, strategy="sample", top_p=1e-6, temperature=3.0, **options)
    np.testing.assert_array_equal(nucleus(params, ids, mask), greedy)
    # Full sampling: seeded, and different seeds give different text.
    sample = jit_generate(model, strategy="sample", **options)
    a = np.asarray(sample(params, ids, mask, rng=jax.random.PRNGKey(1)))
    b = np.asarray(sample(params, ids, mask, rng=jax.random.PRNGKey(1)))
    c = np.asarray(sample(params, ids, mask, rng=jax.random.PRNGKey(2)))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and a.min() >= 0 and a.max() < 48


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="decoding strategy 'top_k'"):
        generation.generate(None, None, None, None, max_new_tokens=1, eos_token_id=1,
                            pad_token_id=0, strategy="top_k")  # fmt: skip
