"""Invariants of every fine-tuning method on every family, on tiny random models."""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import optax
import pytest

from ftjax import methods
from ftjax.core import partition
from ftjax.core.partition import PatternError
from ftjax.models import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2Model,
    T5Config,
    T5Model,
    hub,
    init_params,
)
from ftjax.training.config import standalone_task
from ftjax.training.experiment import unreached_params
from ftjax.training.train import create_state, make_train_step

H, HEADS, FF, LAYERS, VOCAB = 16, 2, 24, 2, 60
CONFIGS = {
    "bert": BertModel(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=H,
            num_layers=LAYERS,
            num_heads=HEADS,
            intermediate_size=FF,
            max_position_embeddings=32,
        )
    ),
    "gpt2": GPT2Model(
        GPT2Config(
            vocab_size=VOCAB,
            hidden_size=H,
            num_layers=LAYERS,
            num_heads=HEADS,
            intermediate_size=FF,
            max_position_embeddings=32,
        )
    ),
    "t5": T5Model(
        T5Config(
            vocab_size=VOCAB,
            hidden_size=H,
            head_dim=8,
            intermediate_size=FF,
            num_layers=LAYERS,
            num_decoder_layers=1,
            num_heads=HEADS,
            relative_buckets=8,
            relative_max_distance=16,
            gated_mlp=True,
            hidden_act="gelu_new",
            tie_word_embeddings=False,
        )
    ),
}
POOLING = {"bert": "cls", "gpt2": "last", "t5": "mean"}
OPTIONS = {
    "top_k": {"k": 1},
    "selective": {"patterns": [r".*/attention/query/kernel"]},
    "lora": {"rank": 4},
    "adapter": {"size": 4},
    "prefix": {"length": 3},
    "prompt": {"length": 3},
}


def classifier(model, pooling="mean", layers="last", num_labels=3):
    return standalone_task(
        "classification", model, num_labels=num_labels, pooling=pooling, layers=layers,
        head_dropout=0.0,
    )  # fmt: skip


_base_params = {}


def base(family):
    if family not in _base_params:
        _base_params[family] = init_params(CONFIGS[family], 0)
    return CONFIGS[family], _base_params[family]


def batch(seed=0, lengths=(7, 4, 2, 6)):
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1, VOCAB, n)
        mask[row, :n] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": np.array([0, 1, 2, 1], np.int32)[: len(lengths)],
        "example_mask": np.ones(len(lengths), np.float32),
    }


def with_method(family, name, options=None):
    options = OPTIONS.get(name, {}) if options is None else options
    return _with_method(family, name, tuple(sorted((k, _frozen(v)) for k, v in options.items())))


def _frozen(value):
    return tuple(value) if isinstance(value, list) else value


@functools.cache  # applying a method compiles; tests share the results (all immutable)
def _with_method(family, name, options):
    model, params = base(family)
    method = methods.resolve(
        name, model, {k: list(v) if isinstance(v, tuple) else v for k, v in options}
    )
    model, params = methods.apply(method, model, params, rng=1)
    task = classifier(model, POOLING[family])
    params = {**params, **task.init_head(jax.random.PRNGKey(2))}
    return method, task, params


# Every method on every family (BitFit refuses T5: no biases). Training each one is
# tests/test_task_matrix*.py: every method on every task, whose families cover all three.
ALL = [(f, m) for f in CONFIGS for m in methods.METHODS if not (f == "t5" and m == "bitfit")]


def test_bitfit_on_t5_is_a_clear_error():
    """T5 has no bias terms at all, so BitFit would train only the head: refuse."""
    with pytest.raises(PatternError, match=r"\.\*/bias"):
        with_method_mask("t5", "bitfit")


def with_method_mask(family, name, options=None, training=True):
    method, _, params = with_method(family, name, options)
    return methods.trainable_mask(method, params, training=training)


@pytest.mark.parametrize("family", CONFIGS)
@pytest.mark.parametrize("name", ["lora", "adapter"])
def test_noop_initialisation_leaves_outputs_unchanged(family, name):
    model, params = base(family)
    _, task, adapted = with_method(family, name)
    b = batch()
    plain = jax.jit(classifier(model, task.spec.pooling).features)(params, b)
    # Bit-identical up to how XLA fuses the two (different) programs.
    np.testing.assert_allclose(np.asarray(jax.jit(task.features)(adapted, b)), plain, atol=1e-6)


@functools.cache
def trained(family, name, steps=3, options=None):
    """(method, task, params) after `steps` Adam steps; `options` as a tuple of pairs."""
    method, task, params = with_method(family, name, dict(options) if options else None)
    tx = optax.adam(1e-2)
    mask = methods.trainable_mask(method, params, unreached_params(task, params))
    state = create_state(params, mask, tx)
    step = jax.jit(make_train_step(task.loss, tx))
    for i in range(steps):
        state, metrics = step(state, batch(i), jax.random.PRNGKey(i))
        assert np.isfinite(metrics["loss"])
    return method, task, state.params


@pytest.mark.parametrize("family", CONFIGS)
def test_merged_lora_equals_unmerged(family):
    method, task, params = trained(family, "lora")
    backbone = {k: v for k, v in params.items() if k != "head"}
    merged_model, merged, factors = methods.merge_lora(task.model, backbone)
    assert not any(p.endswith(("lora_a", "lora_b")) for p in partition.flatten(merged))
    merged_task = classifier(merged_model, task.spec.pooling)
    b = batch(5)
    expected = jax.jit(task.outputs_of)(params, b)
    got = jax.jit(merged_task.outputs_of)({**merged, "head": params["head"]}, b)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
    model_back, unmerged = methods.unmerge_lora(merged_model, merged, factors, method.peft)
    again = jax.jit(classifier(model_back, task.spec.pooling).outputs_of)(
        {**unmerged, "head": params["head"]}, b
    )
    np.testing.assert_allclose(np.asarray(again), np.asarray(expected), atol=1e-5)


@pytest.mark.parametrize("family", CONFIGS)
def test_folded_prefix_mlp_gives_the_same_outputs(family):
    _, task, params = trained(family, "prefix", options=(("length", 3), ("hidden", 8)))
    backbone = {k: v for k, v in params.items() if k != "head"}
    folded_model, folded = methods.fold_prefix(task.model, backbone)
    paths = partition.flatten(folded)
    assert any(p.endswith("prefix/key_value") for p in paths)
    assert not any("prefix/output" in p for p in paths)
    b = batch(6)
    got = jax.jit(classifier(folded_model, task.spec.pooling).outputs_of)(
        {**folded, "head": params["head"]}, b
    )
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(jax.jit(task.outputs_of)(params, b)), atol=1e-5
    )


@pytest.mark.parametrize("family", CONFIGS)
@pytest.mark.parametrize("name", ["prefix", "prompt"])
def test_prefix_and_prompt_keep_padding_masks_right(family, name):
    """A row's features do not depend on what pads it, nor on the rows beside it."""
    _, task, params = trained(family, name)
    b = batch(3)
    feats = np.asarray(jax.jit(task.features)(params, b))
    noisy = dict(b, input_ids=np.where(b["attention_mask"] == 1, b["input_ids"], 7))
    np.testing.assert_allclose(np.asarray(jax.jit(task.features)(params, noisy)), feats, atol=1e-5)
    alone = {k: v[2:3, :2] if v.ndim == 2 else v[2:3] for k, v in b.items()}  # row of 2 tokens
    np.testing.assert_allclose(
        np.asarray(jax.jit(task.features)(params, alone))[0], feats[2], atol=1e-5
    )


@pytest.mark.parametrize("name", ["prefix", "prompt"])
def test_gpt2_left_padding_leaves_each_row_as_alone(name):
    """With a prefix or a prompt, a left-padded row computes what the row alone does.
    What the row alone computes (real tokens at positions P.., as PEFT places them) is
    checked against PEFT in tests/test_peft_export.py."""
    _, task, params = trained("gpt2", name)
    model = task.model
    b = batch(4)
    left_ids, left_mask = b["input_ids"].copy(), b["attention_mask"].copy()
    for row, n in enumerate(b["attention_mask"].sum(1)):
        left_ids[row] = np.concatenate([np.zeros(len(left_ids[row]) - n), b["input_ids"][row][:n]])
        left_mask[row] = np.concatenate([np.zeros(len(left_mask[row]) - n), np.ones(n)])
    backbone = {k: v for k, v in params.items() if k != "head"}
    run = jax.jit(model.apply)
    left = np.asarray(run({"params": backbone}, left_ids, left_mask).logits)
    for row, n in enumerate(b["attention_mask"].sum(1)):  # each row alone, unpadded
        alone = run({"params": backbone}, b["input_ids"][row : row + 1, :n]).logits
        np.testing.assert_allclose(left[row, -n:], np.asarray(alone)[0], atol=1e-5)


@pytest.mark.parametrize("name", ["prefix", "prompt"])
def test_t5_cross_attention_still_reads_the_source(name):
    _, task, params = trained("t5", name)
    backbone = {k: v for k, v in params.items() if k != "head"}
    b = batch(2)
    dec = b["input_ids"][:, :3]
    run = jax.jit(task.model.apply)
    a = run({"params": backbone}, b["input_ids"], b["attention_mask"], dec).logits
    changed = (b["input_ids"] % (VOCAB - 1)) + 1
    c = run({"params": backbone}, changed, b["attention_mask"], dec).logits
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-4


@pytest.mark.parametrize("family", CONFIGS)
def test_gradient_of_trainable_part_equals_masked_full_gradient(family):
    method, task, params = with_method(family, "lora")
    mask = methods.trainable_mask(method, params)
    trainable, frozen = partition.split(params, mask)
    b, rng = batch(1), jax.random.PRNGKey(0)

    def loss_full(p):
        return task.loss(p, b, rng)[0]

    full_loss, full_grads = jax.jit(jax.value_and_grad(loss_full))(params)
    part_loss, part_grads = jax.jit(
        jax.value_and_grad(lambda t: task.loss(partition.merge(t, frozen), b, rng)[0])
    )(trainable)
    np.testing.assert_allclose(float(part_loss), float(full_loss), rtol=1e-6)
    flat_full = partition.flatten(full_grads)
    assert part_grads.keys() == {p for p, m in mask.items() if m}
    for path, grad in part_grads.items():
        np.testing.assert_allclose(np.asarray(grad), np.asarray(flat_full[path]), atol=1e-7)


def closed_form(family, name):
    """Trainable parameters of each method on the tiny configs, counted by hand."""
    model = CONFIGS[family]
    cfg = model.config
    head = H * 3 + (0 if family == "gpt2" else 3)  # GPT-2's head is `score`: no bias
    inner = HEADS * (8 if family == "t5" else H // HEADS)
    if family == "t5":
        enc, dec = cfg.num_layers, cfg.num_decoder_layers
        norms = H * (2 * enc + 1 + 3 * dec + 1)
        lora = 4 * (H + inner) * 2 * (enc + 2 * dec)  # q, v in self + cross attention
        sites = enc + 2 * dec
        adapters = 2 * (enc + dec) * (H * 4 + 4 + 4 * H + H)
        layer_sizes = {
            "encoder": 4 * H * inner + 3 * H * FF + 2 * H,
            "decoder": 8 * H * inner + 3 * H * FF + 3 * H,
        }
        top1 = layer_sizes["encoder"] + layer_sizes["decoder"]
        query = (enc + dec) * H * inner
    else:
        norms = 2 * H * (2 * LAYERS + 1)
        lora = 4 * (H + inner) * 2 * LAYERS
        sites = LAYERS
        adapters = 2 * LAYERS * (H * 4 + 4 + 4 * H + H)
        layer = 4 * (H * H + H) + 2 * H * FF + FF + H + 4 * H
        top1 = layer
        query = LAYERS * H * H
    # Dense biases per layer, then every LayerNorm's bias (and BERT's pooler bias).
    biases = {
        "bert": LAYERS * (4 * H + FF + H) + (2 * LAYERS + 1) * H + H,
        "gpt2": LAYERS * (4 * H + FF + H) + (2 * LAYERS + 1) * H,
    }.get(family, 0)
    if name == "none":
        return 0  # not even the head
    return (
        head
        + {
            "probe": 0,
            "full": partition.count(base(family)[1]),
            "top_k": top1,
            "layernorm": norms,
            "bitfit": biases,
            "selective": query,
            "lora": lora,
            "adapter": adapters + norms,
            "prefix": sites * 2 * 3 * inner,
            "prompt": 3 * H,
        }[name]
    )


@pytest.mark.parametrize("family, name", ALL)
def test_trainable_counts_match_closed_form(family, name):
    _, _, params = with_method(family, name)
    if name == "none":  # only an evaluation may train nothing
        with pytest.raises(methods.MethodError, match="method none trains nothing"):
            with_method_mask(family, name)
    mask = with_method_mask(family, name, training=name != "none")
    flat = partition.flatten(params)
    counted = sum(int(np.prod(flat[p].shape)) for p, m in mask.items() if m)
    assert counted == closed_form(family, name)


def test_lora_optimizer_state_holds_only_lora_and_head():
    method, task, params = with_method("bert", "lora")
    mask = methods.trainable_mask(method, params)
    state = create_state(params, mask, optax.adamw(1e-3))
    flat = partition.flatten(params)
    lora_and_head = [p for p in flat if p.endswith(("lora_a", "lora_b")) or p.startswith("head/")]
    assert sorted(state.trainable) == sorted(lora_and_head)
    expected = sum(flat[p].nbytes for p in lora_and_head)
    opt_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state.opt_state))
    assert 2 * expected <= opt_bytes <= 2 * expected + 64  # mu and nu, plus step counters
    opt_paths = {
        path
        for path in jax.tree.leaves(
            jax.tree.map_with_path(lambda k, _: jax.tree_util.keystr(k), state.opt_state)
        )
    }
    assert not any("attention/query/kernel'" in p for p in opt_paths)


def test_pattern_matching_nothing_is_an_error():
    method, _, params = with_method("bert", "lora", {"extra_trainable": ["encoder/layr_0/.*"]})
    with pytest.raises(PatternError, match="layr_0"):
        methods.trainable_mask(method, params)


def test_lora_rank_above_width_is_an_error():
    with pytest.raises(methods.MethodError, match="rank=32 exceeds"):
        with_method("bert", "lora", {"rank": 32})


def test_unknown_method_and_option_are_named():
    model, _ = base("bert")
    with pytest.raises(methods.MethodError, match="unknown method 'lorra'"):
        methods.resolve("lorra", model)
    with pytest.raises(methods.MethodError, match="rnak"):
        methods.resolve("lora", model, {"rnak": 4})


def test_lora_plus_bitfit_combination():
    mask = with_method_mask("bert", "lora", {"rank": 4, "extra_trainable": [methods.BIAS_PATTERN]})
    on = {p for p, m in mask.items() if m}
    assert "encoder/layer_0/attention/query/lora_a" in on
    assert "encoder/layer_0/mlp/intermediate/bias" in on
    assert "encoder/layer_0/mlp/intermediate/kernel" not in on


class WordTokenizer:
    """A tiny stand-in vocabulary for prompt initialisation from text."""

    all_special_ids = [0]

    def get_vocab(self):
        return {f"w{i}": i for i in range(VOCAB)}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(w[1:]) for w in text.split()]}


@pytest.mark.parametrize("family", CONFIGS)
def test_prompt_initialised_from_text_and_vocabulary(family):
    model, params = base(family)
    table = np.asarray(partition.flatten(params)[hub.family_of(model).word_embeddings])
    for init, text in (("text", "w5 w9"), ("vocab", "")):
        method = methods.resolve("prompt", model, {"length": 3, "init": init, "text": text})
        _, new = methods.apply(method, model, params, rng=0, tokenizer=WordTokenizer())
        prompt = next(v for p, v in partition.flatten(new).items() if "prompt/" in p)
        if init == "text":
            np.testing.assert_array_equal(prompt, table[[5, 9, 5]])
        else:
            rows = [int(np.argmin(np.abs(table - r).sum(1))) for r in np.asarray(prompt)]
            assert len(set(rows)) == 3 and 0 not in rows
            np.testing.assert_array_equal(prompt, table[rows])


def test_probe_features_depend_on_the_layer_choice():
    config = dataclasses.replace(CONFIGS["bert"].config, num_layers=4)
    model = BertModel(config)
    params = init_params(model, 0)
    b = batch()
    feats = {}
    for layers in ("last", "0", "-2", "mean_all", "mean_last4", "concat_last4"):
        feats[layers] = np.asarray(jax.jit(classifier(model, "mean", layers).features)(params, b))
    assert feats["concat_last4"].shape == (4, 4 * H)
    assert not np.allclose(feats["last"], feats["0"])
    out = jax.jit(model.apply, static_argnames="output_hidden_states")(
        {"params": params}, b["input_ids"], b["attention_mask"], output_hidden_states=True
    )
    m = b["attention_mask"][..., None]
    mean_of = lambda s: (np.asarray(s) * m).sum(1) / m.sum(1)  # noqa: E731
    np.testing.assert_allclose(feats["-2"], mean_of(out.hidden_states[-2]), atol=1e-6)
    expected = np.mean([mean_of(s) for s in out.hidden_states[1:]], axis=0)
    np.testing.assert_allclose(feats["mean_all"], expected, atol=1e-6)
    with pytest.raises(ValueError, match="layers=9 is out of range"):
        classifier(model, layers="9").features(params, b)
    shallow, shallow_params = base("bert")
    with pytest.raises(ValueError, match="needs 4 layers; this model has 2"):
        classifier(shallow, layers="mean_last4").features(shallow_params, b)


def test_methods_table_lists_every_method():
    model, params = base("gpt2")
    table = methods.table(model, params, num_labels=3)
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:]}
    assert list(rows) == list(methods.METHODS)
    head = 3 * H  # GPT-2's sequence head is `score`: no bias
    assert rows["probe"][0] == f"{head:,}"
    lora_rank8 = 8 * (H + H) * 2 * LAYERS  # default rank 8 on query and value
    assert rows["lora"][0] == f"{head + lora_rank8:,}"


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prefix_and_prompt_positions_count_against_the_table(tmp_path, method):
    """A prefix or prompt of P takes positions 0..P-1 (PEFT's convention), so P fewer
    real tokens fit in the table: the run is refused before the gather reads NaN."""
    from ftjax.training.config import ConfigError
    from ftjax.training.experiment import build
    from tests.helpers.tiny import make_checkpoint, make_dataset, tiny_config

    model_dir = make_checkpoint(tmp_path / "bert", model_type="bert", max_position_embeddings=32)
    data = make_dataset(tmp_path / "data", (("train", 8), ("validation", 4), ("test", 4)))
    config = tiny_config(model_dir, data, method)
    config.method.length = 4
    config.data.max_length = 28
    exp = build(config)
    ids = np.full((1, 29), 1000, np.int32)
    params = {k: v for k, v in exp.params.items() if k != "head"}
    out = exp.task.model.apply({"params": params}, ids, np.ones_like(ids))
    assert np.isnan(np.asarray(out.last_hidden_state)).any()  # what the check prevents
    config.data.max_length = 29
    with pytest.raises(ConfigError, match=r"beyond the 28 positions .*\(32, 4 of them taken"):
        build(config)
