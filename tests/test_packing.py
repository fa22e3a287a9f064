"""Packed batches (data.pack_length): the layout, and per-example outputs and losses
equal to the unpacked batch's for every task that packs (classification on each
pooling, regression, NER tagging, causal LM) on BERT, GPT-2 and Llama; the refusals."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ftjax.data import batching
from ftjax.data.batching import IGNORE, Examples, Seq
from ftjax.models import LlamaConfig, LlamaModel, init_params
from ftjax.tasks import TaskError
from ftjax.tasks.base import labelled_token_losses
from ftjax.training.config import standalone_task
from tests.test_methods import VOCAB, base

LENGTHS = (7, 4, 2, 6, 3, 5, 1, 8)
PACK, ROW_STEP = 12, 2
LLAMA = LlamaModel(
    LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=24, max_position_embeddings=32,
    )
)  # fmt: skip


def model_of(family):
    if family == "llama":
        return LLAMA, init_params(LLAMA, 0)
    return base(family)


def examples(per_token_labels=False, seed=0) -> Examples:
    rng = np.random.default_rng(seed)
    ids = [rng.integers(1, VOCAB, n).astype(np.int32) for n in LENGTHS]
    arrays = {"input_ids": ids}
    layout = {"input_ids": Seq("source", 0)}
    if per_token_labels:
        arrays["labels"] = [
            np.where(rng.random(n) < 0.3, IGNORE, rng.integers(0, 3, n)).astype(np.int32)
            for n in LENGTHS
        ]
        layout["labels"] = Seq("source", IGNORE)
    else:
        arrays["labels"] = rng.integers(0, 3, len(LENGTHS)).astype(np.int32)
    return Examples(arrays, layout, np.arange(len(LENGTHS)))


def both(data: Examples, batch_size: int = 10):
    """(unpacked, packed) batches of all examples, in `batch_size` example slots."""
    index = np.arange(len(data))
    unpacked = batching.pad_batch(data, index, batch_size, {"source": [PACK]})
    return unpacked, batching.pack_batch(data, index, batch_size, PACK, ROW_STEP)


def test_pack_layout():
    data = examples(per_token_labels=True)
    unpacked, packed = both(data)
    rows = packed["input_ids"].shape[0]
    assert packed["input_ids"].shape[1] == PACK and rows % ROW_STEP == 0
    assert rows < len(LENGTHS)  # 36 tokens in rows of 12: fewer rows than examples
    assert packed["segment_ids"].max() > 1  # some row holds several examples
    np.testing.assert_array_equal(packed["attention_mask"], packed["segment_ids"] > 0)
    for i, n in enumerate(LENGTHS):
        row, start = packed["example_row"][i], packed["example_start"][i]
        span = slice(start, start + n)
        assert packed["example_length"][i] == n
        np.testing.assert_array_equal(packed["input_ids"][row, span], data.arrays["input_ids"][i])
        np.testing.assert_array_equal(packed["labels"][row, span], data.arrays["labels"][i])
        np.testing.assert_array_equal(packed["position_ids"][row, span], np.arange(n))
        assert len(set(packed["segment_ids"][row, span])) == 1
    np.testing.assert_array_equal(packed["example_mask"], unpacked["example_mask"])
    assert packed["attention_mask"].sum() == sum(LENGTHS)  # every real token, once


def test_pack_rows_refuses_an_example_longer_than_a_row():
    with pytest.raises(ValueError, match="over data.pack_length=4"):
        batching.pack_rows(np.array([3, 5]), 4)


@pytest.mark.parametrize(
    "family,pooling,layers",
    [
        ("bert", "mean", "last"),
        ("bert", "cls", "mean_all"),
        ("gpt2", "last", "last"),
        ("llama", "last", "-2"),
        ("gpt2", "last", "mean_all"),
    ],
)
def test_classification_packed_equals_unpacked(family, pooling, layers):
    model, params = model_of(family)
    task = standalone_task(
        "classification", model, num_labels=3, pooling=pooling, layers=layers,
        head_dropout=0.0, pack_length=PACK, max_length=PACK,
    )  # fmt: skip
    params = {**params, **task.init_head(jax.random.PRNGKey(1))}
    unpacked, packed = both(examples())
    logits = [np.asarray(jax.jit(task.outputs_of)(params, b)) for b in (unpacked, packed)]
    real = len(LENGTHS)  # the empty slots' outputs are masked out of everything
    np.testing.assert_allclose(logits[1][:real], logits[0][:real], atol=1e-5)
    losses = [float(jax.jit(task.loss)(params, b)[0]) for b in (unpacked, packed)]
    np.testing.assert_allclose(losses[1], losses[0], atol=1e-5)


def test_regression_packed_equals_unpacked():
    model, params = model_of("bert")
    task = standalone_task("regression", model, head_dropout=0.0, pack_length=PACK, max_length=PACK)
    params = {**params, **task.init_head(jax.random.PRNGKey(1))}
    data = examples()
    data.arrays["labels"] = data.arrays["labels"].astype(np.float32)
    unpacked, packed = both(data)
    outputs = [np.asarray(jax.jit(task.outputs_of)(params, b)) for b in (unpacked, packed)]
    np.testing.assert_allclose(outputs[1][: len(LENGTHS)], outputs[0][: len(LENGTHS)], atol=1e-5)


def per_example_tokens(values: np.ndarray, batch: dict, packed: bool) -> list[np.ndarray]:
    """Each example's per-token values, from its row (and segment, when packed)."""
    out = []
    for i, n in enumerate(LENGTHS):
        if packed:
            start = batch["example_start"][i]
            out.append(values[batch["example_row"][i], start : start + n])
        else:
            out.append(values[i, :n])
    return out


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_tagging_packed_equals_unpacked(family):
    model, params = model_of(family)
    task = standalone_task(
        "token_classification", model, label_names=("O", "B", "I"), head_dropout=0.0,
        pack_length=PACK, max_length=PACK,
    )  # fmt: skip
    params = {**params, **task.init_head(jax.random.PRNGKey(1))}
    unpacked, packed = both(examples(per_token_labels=True))
    for name, batch in (("unpacked", unpacked), ("packed", packed)):
        logits = np.asarray(jax.jit(task.logits)(params, batch))
        tokens = per_example_tokens(logits, batch, name == "packed")
        if name == "unpacked":
            reference = tokens
            continue
        for ours, theirs in zip(tokens, reference, strict=True):
            np.testing.assert_allclose(ours, theirs, atol=1e-5)
    losses = [float(jax.jit(task.loss)(params, b)[0]) for b in (unpacked, packed)]
    np.testing.assert_allclose(losses[1], losses[0], atol=1e-5)
    counted = [int(labelled_token_losses(jax.numpy.zeros((*b["labels"].shape, 3)), b)[1].sum())
               for b in (unpacked, packed)]  # fmt: skip
    assert counted[0] == counted[1]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_lm_packed_equals_unpacked(family):
    """Per-token losses of each text, and which tokens count: no next-token pair crosses
    from one packed text into the next."""
    model, params = model_of(family)
    task = standalone_task("language_modeling", model, pack_length=PACK, max_length=PACK)
    unpacked, packed = both(examples())
    per_text = []
    for name, batch in (("unpacked", unpacked), ("packed", packed)):
        losses, counted = jax.jit(task.token_losses)(params, batch)
        losses = np.pad(np.asarray(losses) * np.asarray(counted), ((0, 0), (0, 1)))
        per_text.append(per_example_tokens(losses, batch, name == "packed"))
        assert int(counted.sum()) == sum(n - 1 for n in LENGTHS)
    for ours, theirs in zip(per_text[1], per_text[0], strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_packing_refusals():
    bert, t5 = base("bert")[0], base("t5")[0]
    packed = {"pack_length": PACK, "max_length": PACK}
    refusals = [
        ("classification", bert, {"pooling": "pooler", **packed}, "task.pooling='pooler'"),
        ("classification", t5, packed, "T5Model takes no segment_ids"),
        ("classification", bert, {"pack_length": 8, "max_length": 16}, "shorter than data.max"),
        ("extractive_qa", bert, packed, "the extractive_qa task reads whole rows"),
    ]
    for task, model, fields, message in refusals:
        with pytest.raises(TaskError, match=message):
            standalone_task(task, model, **fields)


def test_packing_refuses_a_soft_prompt():
    from tests.test_methods import with_method

    _, task, _ = with_method("bert", "prompt")
    model = task.model
    with pytest.raises(TaskError, match="soft prompt is one per row"):
        standalone_task("classification", model, pack_length=PACK, max_length=PACK)


def test_a_packed_run_trains_on_its_examples_unpacked_loss(tmp_path):
    """The trainer on packed batches (dropout off): each step's logged loss is the loss of
    the same examples unpacked (at the first step, before any update), on no more padded
    tokens; results.json counts the real and computed tokens."""
    import json

    from ftjax.training import loop
    from ftjax.training.experiment import build
    from tests.helpers.tiny import make_checkpoint, make_dataset, tiny_config

    model, data = make_checkpoint(tmp_path / "model"), make_dataset(tmp_path / "data")
    config = tiny_config(model, data, "full", prng_impl="rbg", max_steps=3)
    config.model.dropout = config.task.head_dropout = 0.0
    config.data.update(pack_length=64, bucket_step=32)
    loop.run(config, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if r["kind"] == "train" and r["step"] == 1)

    exp = build(config)
    train = exp.loader.examples("train")
    size = config.data.batch_size
    index = batching.epoch_order(train.sort_key(), size, config.train.seed, 0, group_lengths=False)[
        0
    ]
    unpacked = batching.pad_batch(train, index, size, {"source": [32]})
    loss = float(jax.jit(exp.task.loss)(exp.params, unpacked)[0])
    np.testing.assert_allclose(first["loss"], loss, rtol=1e-5)
    real_share = first["tokens_per_second"] / first["padded_tokens_per_second"]
    # never more padding (the share is a ratio of two logged rates: rounding aside)
    assert real_share >= unpacked["attention_mask"].mean() * (1 - 1e-9)
    tokens = json.loads((tmp_path / "run" / "results.json").read_text())["train_tokens"]
    assert tokens["computed"] % 64 == 0  # whole packed rows
    assert tokens["real_share"] == tokens["real"] / tokens["computed"] > 0.5


def test_row_buckets_are_the_fewest_sizes_within_the_padding_bound():
    """Against brute force over every set of sizes: as few as the 10% bound allows, and
    of those the least padding."""
    import itertools

    rng = np.random.default_rng(0)
    for trial in range(30):
        counts = rng.integers(3, 19, size=int(rng.integers(1, 40)))
        step = (1, 2)[trial % 2]
        got = batching.choose_row_buckets(counts, step)
        need = [-(-int(c) // step) * step for c in counts]
        sizes = sorted(set(need))

        def padding(chosen, need=need):
            return sum(min(b for b in chosen if b >= n) - n for n in need)

        for k in range(1, len(sizes) + 1):
            sets = [(*c, sizes[-1]) for c in itertools.combinations(sizes[:-1], k - 1)]
            fitting = [c for c in sets if padding(c) <= 0.1 * (sum(need) + padding(c))]
            if fitting:
                break
        assert len(got) == k, (counts, got)
        assert padding(got) == min(padding(c) for c in fitting), (counts, got)
        assert all(b % step == 0 for b in got) and max(got) == max(need)


def test_packing_is_on_by_default_where_the_task_packs(tmp_path, caplog):
    """data.pack_length=-1 (the default) packs rows of max_length, every training batch
    in one of the few row counts chosen for the run; a soft prompt keeps bucketing and
    the log says why."""
    import logging

    from ftjax.training.experiment import build
    from tests.helpers.tiny import make_checkpoint, make_dataset, tiny_config

    model, data = make_checkpoint(tmp_path / "model"), make_dataset(tmp_path / "data")
    config = tiny_config(model, data, "lora", epochs=2)
    config.data.pack_length = -1
    exp = build(config)
    assert exp.config.data.pack_length == config.data.max_length
    buckets = exp.loader.row_buckets
    rows = {len(b["input_ids"]) for e in (0, 1) for b in exp.loader.train_batches(e, 0)}
    assert buckets and rows <= set(buckets), (rows, buckets)
    config = tiny_config(model, data, "prompt", epochs=1)
    config.data.pack_length = -1
    with caplog.at_level(logging.INFO, logger="ftjax.tasks"):
        exp = build(config)
    assert exp.config.data.pack_length == 0 and not exp.loader.row_buckets
    assert "not packing (a soft prompt is one per row" in caplog.text
