"""ftjax models against transformers' PyTorch models, float32 on CPU, max |diff| <= 1e-4.

Each reference model is a small random config written with `save_pretrained` inside the
test, run on a padded batch of unequal lengths.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ftjax.models import from_pretrained, save_pretrained  # noqa: E402

TOL = 1e-4
LENGTHS = (9, 5, 1, 7)  # real tokens per row of the padded batch


def padded_batch(vocab: int, lengths=LENGTHS, seed: int = 0, pad_id: int = 0):
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.full((len(lengths), width), pad_id, np.int64)
    mask = np.zeros((len(lengths), width), np.int64)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(pad_id + 1, vocab, n)
        mask[row, :n] = 1
    return ids, mask


def max_diff(ours, theirs, mask=None) -> float:
    ours, theirs = np.asarray(ours), theirs.detach().numpy()
    if mask is not None:  # compare real positions only
        ours, theirs = ours[mask.astype(bool)], theirs[mask.astype(bool)]
    return float(np.abs(ours - theirs).max())


def save_reference(model_cls, config, path):
    torch.manual_seed(0)
    model = model_cls(config).eval()
    if isinstance(model, transformers.T5ForConditionalGeneration) and not getattr(
        config, "scale_decoder_outputs", True
    ):
        # transformers v5 ties every T5 LM head at init; untie it, as real v1.1 has it.
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
        model._tied_weights_keys = {
            k: v for k, v in model._tied_weights_keys.items() if k != "lm_head.weight"
        }
    model.save_pretrained(path)
    return model


def load_save_load_bit_exact(source, out) -> dict:
    """Loads `source`, saves it to `out`, loads that: same config, bit-identical params."""
    from flax import traverse_util

    model, params = from_pretrained(source)
    save_pretrained(model, params, out)
    model2, params2 = from_pretrained(out)
    assert model2.config == model.config
    flat, flat2 = (traverse_util.flatten_dict(p, sep="/") for p in (params, params2))
    assert flat.keys() == flat2.keys()
    for key in flat:
        assert np.array_equal(np.asarray(flat[key]), np.asarray(flat2[key])), key
    return params


BERT = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_bert_family_matches_transformers(tmp_path, kind):
    if kind == "bert":
        config = transformers.BertConfig(**BERT, type_vocab_size=2)
        ref = save_reference(transformers.BertModel, config, tmp_path)
    else:
        config = transformers.RobertaConfig(**BERT, type_vocab_size=1, pad_token_id=1)
        ref = save_reference(transformers.RobertaModel, config, tmp_path)
    pad = config.pad_token_id
    ids, mask = padded_batch(config.vocab_size, pad_id=pad)
    types = np.zeros_like(ids)
    if kind == "bert":
        types[:, 3:] = 1
    model, params = from_pretrained(tmp_path)
    ours = model.apply({"params": params}, ids, mask, types, output_hidden_states=True)
    with torch.no_grad():
        theirs = ref(
            torch.tensor(ids), torch.tensor(mask), torch.tensor(types), output_hidden_states=True
        )
    assert max_diff(ours.last_hidden_state, theirs.last_hidden_state) <= TOL
    assert max_diff(ours.pooled, theirs.pooler_output) <= TOL
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 3
    for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        assert max_diff(a, b) <= TOL


GPT2 = dict(vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_positions=64)


def test_gpt2_matches_transformers(tmp_path):
    config = transformers.GPT2Config(**GPT2)
    ref = save_reference(transformers.GPT2LMHeadModel, config, tmp_path)
    ids, mask = padded_batch(config.vocab_size)  # right padding
    model, params = from_pretrained(tmp_path)
    ours = model.apply({"params": params}, ids, mask, output_hidden_states=True)
    with torch.no_grad():
        theirs = ref(
            torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True
        )
    # Padded query rows differ only in what they attend to; real tokens must agree.
    assert max_diff(ours.last_hidden_state, theirs.hidden_states[-1], mask) <= TOL
    assert max_diff(ours.logits, theirs.logits, mask) <= TOL
    for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        assert max_diff(a, b, mask) <= TOL


def left_padded(ids, mask):
    """The batch with each row's real tokens moved to the right end."""
    left_ids, left_mask = ids.copy(), mask.copy()
    for row, n in enumerate(mask.sum(1)):
        left_ids[row] = np.roll(ids[row], ids.shape[1] - n)
        left_mask[row] = np.roll(mask[row], ids.shape[1] - n)
    return left_ids, left_mask


def assert_left_padding_changes_nothing(model, params, ref, vocab: int) -> None:
    """Each left-padded row's logits equal the reference's on that row's tokens alone
    (no padding, the reference's own default positions), whatever the padding."""
    ids, mask = padded_batch(vocab)
    left_ids, left_mask = left_padded(ids, mask)
    ours = np.asarray(model.apply({"params": params}, left_ids, left_mask).logits)
    for row, n in enumerate(LENGTHS):
        with torch.no_grad():
            alone = ref(torch.tensor(ids[row : row + 1, :n])).logits[0].numpy()
        assert np.abs(ours[row, -n:] - alone).max() <= TOL, row


def test_gpt2_left_padding_keeps_real_token_positions(tmp_path):
    """Real tokens get the positions they would have unpadded, as in HF generation."""
    config = transformers.GPT2Config(**GPT2)
    ref = save_reference(transformers.GPT2LMHeadModel, config, tmp_path)
    model, params = from_pretrained(tmp_path)
    assert_left_padding_changes_nothing(model, params, ref, config.vocab_size)


T5 = dict(
    vocab_size=103,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
)


@pytest.mark.parametrize(
    "variant",
    [
        dict(feed_forward_proj="relu", num_layers=2, num_decoder_layers=3),  # T5 v1.0
        dict(
            feed_forward_proj="gated-gelu",
            num_layers=3,
            num_decoder_layers=2,
            tie_word_embeddings=False,
        ),  # T5 v1.1
    ],
    ids=["v1.0", "v1.1"],
)
def test_t5_matches_transformers(tmp_path, variant):
    config = transformers.T5Config(**T5, **variant)
    ref = save_reference(transformers.T5ForConditionalGeneration, config, tmp_path)
    # Long enough rows that relative positions reach the logarithmic buckets.
    ids, mask = padded_batch(config.vocab_size, lengths=(30, 12, 3, 25))
    dec_ids, dec_mask = padded_batch(config.vocab_size, lengths=(4, 26, 9, 1), seed=1)
    model, params = from_pretrained(tmp_path)
    assert ("lm_head" in params) == ("tie_word_embeddings" in variant)
    ours = model.apply({"params": params}, ids, mask, dec_ids, dec_mask, output_hidden_states=True)
    with torch.no_grad():
        theirs = ref(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            decoder_input_ids=torch.tensor(dec_ids),
            decoder_attention_mask=torch.tensor(dec_mask),
            output_hidden_states=True,
        )
    assert max_diff(ours.encoder_last_hidden_state, theirs.encoder_last_hidden_state) <= TOL
    assert max_diff(ours.last_hidden_state, theirs.decoder_hidden_states[-1]) <= TOL
    assert max_diff(ours.logits, theirs.logits) <= TOL
    for a, b in zip(ours.encoder_hidden_states, theirs.encoder_hidden_states, strict=True):
        assert max_diff(a, b) <= TOL


def test_t5_cross_attention_reads_the_source(tmp_path):
    """Changing only the encoder input changes the decoder output (and by HF's amount)."""
    config = transformers.T5Config(**T5, num_layers=1, num_decoder_layers=1)
    save_reference(transformers.T5ForConditionalGeneration, config, tmp_path)
    model, params = from_pretrained(tmp_path)
    ids, mask = padded_batch(config.vocab_size)
    dec_ids, dec_mask = padded_batch(config.vocab_size, seed=1)
    a = model.apply({"params": params}, ids, mask, dec_ids, dec_mask).logits
    b = model.apply({"params": params}, (ids + 1) * mask, mask, dec_ids, dec_mask).logits
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


@pytest.mark.parametrize(
    "model_cls, config",
    [
        ("BertModel", transformers.BertConfig(**BERT)),
        ("GPT2LMHeadModel", transformers.GPT2Config(**GPT2)),
        (
            "T5ForConditionalGeneration",
            transformers.T5Config(**T5, num_layers=2, num_decoder_layers=1),
        ),
        (
            "T5ForConditionalGeneration",
            transformers.T5Config(
                **T5, num_layers=1, feed_forward_proj="gated-gelu", tie_word_embeddings=False
            ),
        ),
    ],
    ids=["bert", "gpt2", "t5", "t5-v1.1"],
)
def test_save_load_roundtrip_is_bit_exact_and_loads_in_transformers(tmp_path, model_cls, config):
    ref_cls = getattr(transformers, model_cls)
    ref = save_reference(ref_cls, config, tmp_path / "hf")
    params = load_save_load_bit_exact(tmp_path / "hf", tmp_path / "ours")
    if "T5" in model_cls:
        assert ("lm_head" in params) == (not config.scale_decoder_outputs)
    reloaded = ref_cls.from_pretrained(tmp_path / "ours").eval()
    if "T5" in model_cls:
        assert reloaded.config.scale_decoder_outputs == ref.config.scale_decoder_outputs
        assert (reloaded.lm_head.weight is reloaded.shared.weight) == (
            ref.lm_head.weight is ref.shared.weight
        )
    theirs_state = reloaded.state_dict()
    for name, tensor in ref.state_dict().items():
        assert torch.equal(theirs_state[name], tensor), name
