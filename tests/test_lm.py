"""Language modelling: the MLM head against transformers, BERT's masking statistics, the
causal loss against transformers' own, and a head-less encoder getting a tied head."""

from __future__ import annotations

import logging

import datasets
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ftjax.data.batching import pad_batch  # noqa: E402
from ftjax.data.splits import load_splits  # noqa: E402
from ftjax.models import from_pretrained, load_tokenizer  # noqa: E402
from ftjax.tasks import TaskError, span_corruption  # noqa: E402
from ftjax.training.config import standalone_task  # noqa: E402
from tests.helpers import synthetic  # noqa: E402
from tests.helpers.tiny import make_checkpoint  # noqa: E402
from tests.test_model_parity import TOL, max_diff, padded_batch, save_reference  # noqa: E402

BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64)  # fmt: skip


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_mlm_head_matches_transformers(tmp_path, kind):
    if kind == "bert":
        config = transformers.BertConfig(**BERT)
        ref = save_reference(transformers.BertForMaskedLM, config, tmp_path)
    else:
        config = transformers.RobertaConfig(**BERT, pad_token_id=1, type_vocab_size=1)
        ref = save_reference(transformers.RobertaForMaskedLM, config, tmp_path)
    with torch.no_grad():  # a non-zero output bias, so that it is checked too
        (ref.cls.predictions if kind == "bert" else ref.lm_head).bias.normal_()
    ref.save_pretrained(tmp_path)
    model, params = from_pretrained(tmp_path)
    assert model.config.with_mlm_head
    ids, mask = padded_batch(config.vocab_size, pad_id=config.pad_token_id)
    ours = model.apply({"params": params}, ids, mask).logits
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    assert max_diff(ours, theirs, mask) <= TOL


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("t5"), "t5")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    return {f: make_checkpoint(base / f, f) for f in ("bert", "gpt2")}


def lm_task(path, **fields):
    model, params = from_pretrained(path)
    task = standalone_task("language_modeling", model, load_tokenizer(path), **fields)
    return task, params


def test_masking_follows_bert(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="ftjax.tasks"):
        task, _ = lm_task(tiny["bert"], max_length=64)
    assert "has no masked-LM head; initialising one" in caplog.text
    rows = synthetic.sentiment_rows(256, 0)
    import datasets

    examples = task.encode(datasets.Dataset.from_list(rows), "train")
    batch = pad_batch(examples, np.arange(len(examples)), len(examples), {"source": [64]})
    ids, real = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]) > 0
    inputs, picked = task.mask_tokens(ids, real, jax.random.PRNGKey(3))
    inputs, picked, ids, real = map(np.asarray, (inputs, picked, ids, real))
    special = np.isin(ids, task.tokenizer.all_special_ids)
    eligible = real & ~special
    assert not picked[~eligible].any()  # never [CLS], [SEP] or padding
    assert (inputs[~picked] == ids[~picked]).all()
    share = picked.sum() / eligible.sum()
    assert abs(share - 0.15) < 0.02, share
    masked = (inputs[picked] == task.tokenizer.mask_token_id).mean()
    unchanged = (inputs[picked] == ids[picked]).mean()
    assert abs(masked - 0.8) < 0.05 and abs(unchanged - 0.1) < 0.04, (masked, unchanged)
    # A different key masks other tokens (dynamic masking).
    _, again = task.mask_tokens(jnp.asarray(ids), jnp.asarray(real), jax.random.PRNGKey(4))
    assert (np.asarray(again) != picked).any()


def test_masked_loss_reads_the_lm_head_only_at_predicted_positions(tiny):
    """The loss from logits at the picked positions equals the loss from every
    position's logits; the capacity is far above what a row picks."""
    import optax

    from ftjax.models.hub import complete_params
    from ftjax.tasks import lm

    task, params = lm_task(tiny["bert"], max_length=64)
    params = complete_params(task.model, params)
    examples = task.encode(datasets.Dataset.from_list(synthetic.sentiment_rows(32, 1)), "train")
    batch = pad_batch(examples, np.arange(len(examples)), len(examples), {"source": [64]})
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    loss, _ = task.loss(params, batch)
    capacity = lm.prediction_capacity(64, 0.15)
    assert capacity < 64 and lm.prediction_capacity(512, 0.15) < 0.3 * 512
    key = jax.random.PRNGKey(lm.EVAL_MASK_SEED)
    ids, real = batch["input_ids"], batch["attention_mask"] > 0
    inputs, picked = task.mask_tokens(ids, real, key, None, capacity)  # eval: this key
    assert 0 < int(picked.sum(1).max()) < capacity - 10
    logits = task.model.apply({"params": params}, inputs, batch["attention_mask"]).logits
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), ids)
    want = float((losses * picked).sum() / picked.sum())
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)


def test_whole_word_masking_picks_every_piece_of_a_word(tiny):
    task, _ = lm_task(tiny["bert"], max_length=64, whole_word_mask=True)
    rows = load_splits("sentiment")["train"].select(range(256))
    examples = task.encode(rows, "train")
    batch = pad_batch(examples, np.arange(len(examples)), len(examples), {"source": [64]})
    ids, real = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]) > 0
    heads = np.asarray(batch["word_head"])
    _, picked = task.mask_tokens(ids, real, jax.random.PRNGKey(3), jnp.asarray(heads))
    picked, ids = np.asarray(picked), np.asarray(ids)
    pieces = np.vectorize(lambda t: t.startswith("##"))(
        np.asarray(task.tokenizer.convert_ids_to_tokens(ids.ravel())).reshape(ids.shape)
    )
    rows_, cols = np.nonzero(pieces & np.asarray(real))
    assert len(rows_) > 100  # real reviews hold many multi-piece words
    assert (heads[rows_, cols] < cols).all()  # a "##" piece points back to its word
    assert (picked[rows_, cols] == picked[rows_, heads[rows_, cols]]).all()
    assert picked[rows_, cols].any()
    eligible = np.asarray(real) & ~np.isin(ids, task.tokenizer.all_special_ids)
    assert abs(picked.sum() / eligible.sum() - 0.15) < 0.03


def test_packing_fills_rows_and_keeps_every_token(tiny):
    texts = list(load_splits("sentiment")["train"].select(range(40))["text"])
    rows = datasets.Dataset.from_dict({"text": texts})
    causal, _ = lm_task(tiny["gpt2"], max_length=32, pack=True)
    packed = causal.encode(rows, "train")
    ids = packed.arrays["input_ids"]
    assert all(len(r) == 32 for r in ids[:-1]) and 0 < len(ids[-1]) <= 32
    eos = causal.model.config.eos_token_id
    docs = causal.tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert np.concatenate(ids).tolist() == [t for doc in docs for t in [*doc, eos]]
    assert packed.report["packed_texts"] == 40 and packed.report["examples"] == len(ids)
    assert packed.rows[0] == 0 and (np.diff(packed.rows) >= 0).all() and packed.rows[-1] <= 39
    # A masked LM packs [CLS] text [SEP] units; word heads stay inside their row.
    masked, _ = lm_task(tiny["bert"], max_length=32, pack=True, whole_word_mask=True)
    packed = masked.encode(rows, "train")
    expected = [t for doc in masked.tokenizer(texts)["input_ids"] for t in doc]
    assert np.concatenate(packed.arrays["input_ids"]).tolist() == expected
    for heads in packed.arrays["word_head"]:
        assert (heads >= 0).all() and (heads <= np.arange(len(heads))).all()
    assert any((h < np.arange(len(h))).any() for h in packed.arrays["word_head"])


def test_tied_head_of_a_headless_encoder(tiny):
    task, params = lm_task(tiny["bert"])
    from ftjax.models.hub import complete_params

    params = complete_params(task.model, params)
    table = params["embeddings"]["word_embeddings"]["embedding"]
    head = params["mlm_head"]
    ids = jnp.array([[101, 2204, 3185, 102]])
    out = task.model.apply({"params": params}, ids, output_hidden_states=True)
    h = out.last_hidden_state @ head["transform"]["kernel"] + head["transform"]["bias"]
    h = jax.nn.gelu(h, approximate=False)
    h = (h - h.mean(-1, keepdims=True)) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-12)
    h = h * head["norm"]["scale"] + head["norm"]["bias"]
    np.testing.assert_allclose(out.logits, h @ table.T + head["bias"], atol=1e-4)


def test_causal_loss_equals_transformers(tmp_path):
    config = transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    ref = save_reference(transformers.GPT2LMHeadModel, config, tmp_path)
    model, params = from_pretrained(tmp_path)
    task = standalone_task("language_modeling", model, None)
    ids, mask = padded_batch(config.vocab_size)
    batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask),
             "example_mask": jnp.ones(len(ids))}  # fmt: skip
    loss, aux = task.loss(params, batch)
    labels = torch.tensor(np.where(mask > 0, ids, -100))
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=labels)
    assert abs(float(loss) - float(theirs.loss)) <= TOL
    assert float(aux["weight"]) == (mask.sum(1) - 1).clip(0).sum()  # next-token pairs


def test_objectives_that_do_not_fit_are_refused(tiny):
    with pytest.raises(TaskError, match="objective='causal' needs a causal decoder"):
        lm_task(tiny["bert"], objective="causal")
    with pytest.raises(TaskError, match="objective='masked': GPT2Model has no masked-LM head"):
        lm_task(tiny["gpt2"], objective="masked")
    with pytest.raises(TaskError, match="config.task.objective='next'"):
        lm_task(tiny["gpt2"], objective="next")


def test_span_corruption_follows_t5():
    rng = np.random.default_rng(0)
    for length in (2, 7, 20, 113, 512):
        noise, spans = span_corruption.span_counts(length, 0.15, 3.0)
        for _ in range(20):
            mask = span_corruption.noise_mask(length, 0.15, 3.0, rng)
            assert mask.shape == (length,) and mask.sum() == noise and not mask[0]
            starts = mask & ~np.concatenate([[False], mask[:-1]])
            assert starts.sum() == spans  # every span non-empty, kept runs between them
    noise, spans = span_corruption.span_counts(1000, 0.15, 3.0)
    assert noise == 150 and spans == 50  # density 0.15, mean span 3
    tokens = np.arange(1000, 1100, dtype=np.int32)
    mask = span_corruption.noise_mask(len(tokens), 0.15, 3.0, rng)
    sentinels = np.arange(99, 80, -1, dtype=np.int32)  # like T5: ids count down
    inputs, targets = span_corruption.corrupt(tokens, mask, sentinels, eos=1)
    assert inputs[-1] == targets[-1] == 1
    assert (len(inputs), len(targets)) == span_corruption.corrupted_lengths(100, 0.15, 3.0)
    used = [t for t in inputs if t in sentinels]
    assert used == list(sentinels[: len(used)])  # in order, each once
    assert [t for t in targets if t in sentinels] == used
    # Putting each span back where its sentinel stands gives the original tokens.
    spans_of, current = {}, None
    for t in targets[:-1]:
        if t in sentinels:
            current = int(t)
            spans_of[current] = []
        else:
            spans_of[current].append(int(t))
    rebuilt = [x for t in inputs[:-1] for x in (spans_of[int(t)] if t in sentinels else [int(t)])]
    assert rebuilt == tokens.tolist()


def test_t5_examples_are_span_corrupted(tmp_path, tiny_t5):
    task, _ = lm_task(tiny_t5, max_length=24, sentinel_format="[unused{}]")
    assert task.objective() == "span_corruption"
    rows = datasets.Dataset.from_list(synthetic.sentiment_rows(32, 0))
    examples = task.encode(rows, "train")
    sentinel = task.tokenizer.convert_tokens_to_ids("[unused0]")
    for inputs, labels in zip(examples.arrays["input_ids"], examples.arrays["labels"], strict=True):
        assert len(inputs) <= 24 and inputs[-1] == labels[-1] == task.model.config.eos_token_id
        assert sentinel in inputs and labels[0] == sentinel
    again = task.encode(rows, "train").arrays["labels"]
    assert all(np.array_equal(a, b) for a, b in zip(again, examples.arrays["labels"], strict=True))
    with pytest.raises(TaskError, match=r"sentinel_format='<x{}>': the tokenizer has no token"):
        lm_task(tiny_t5, sentinel_format="<x{}>")[0].encode(rows, "train")
    with pytest.raises(TaskError, match="span corruption is for encoder-decoders"):
        lm_task(tiny_t5, objective="causal")
