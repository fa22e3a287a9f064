"""Checkpoint loading beyond numerics: bad input, formats, sources, axes, dtypes."""

from __future__ import annotations

import json
import logging
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from ftjax.data import sources
from ftjax.models import (
    BertConfig,
    BertModel,
    CheckpointError,
    from_pretrained,
    init_params,
    param_axes,
    save_pretrained,
)

TINY_BERT = BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    intermediate_size=24,
    max_position_embeddings=32,
)


@pytest.fixture(scope="module")
def pristine_checkpoint(tmp_path_factory):
    model = BertModel(TINY_BERT)
    return save_pretrained(model, init_params(model, 0), tmp_path_factory.mktemp("tiny") / "c")


@pytest.fixture
def tiny_checkpoint(tmp_path, pristine_checkpoint):
    """A fresh copy per test, so tests may damage it."""
    return shutil.copytree(pristine_checkpoint, tmp_path / "ckpt")


def rewrite_tensors(checkpoint, edit):
    tensors = load_file(checkpoint / "model.safetensors")
    edit(tensors)
    save_file(tensors, checkpoint / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(tiny_checkpoint):
    rewrite_tensors(tiny_checkpoint, lambda t: t.pop("encoder.layer.1.attention.self.key.weight"))
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.attention\.self\.key\.weight"):
        from_pretrained(tiny_checkpoint)


def test_wrong_shape_is_named(tiny_checkpoint):
    def shrink(t):
        t["encoder.layer.0.intermediate.dense.weight"] = np.zeros((23, 16), np.float32)

    rewrite_tensors(tiny_checkpoint, shrink)
    with pytest.raises(CheckpointError, match=r"intermediate\.dense\.weight.*\(23, 16\)"):
        from_pretrained(tiny_checkpoint)


def test_unknown_model_type_is_named(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    config["model_type"] = "mamba"
    (tiny_checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type='mamba'"):
        from_pretrained(tiny_checkpoint)


def test_missing_config_field_is_named(tiny_checkpoint):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    del config["num_attention_heads"]
    (tiny_checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="num_attention_heads"):
        from_pretrained(tiny_checkpoint)


def test_unknown_override_is_named(tiny_checkpoint):
    with pytest.raises(ValueError, match="hidden_dropuot"):
        from_pretrained(tiny_checkpoint, hidden_dropuot=0.0)


def test_folder_without_weights(tmp_path, tiny_checkpoint):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    with pytest.raises(CheckpointError, match="model.safetensors"):
        from_pretrained(tmp_path / "empty")


class BertWithHead(BertModel):
    """A backbone plus a part that no checkpoint has (as a task head will be)."""

    @nn.compact
    def __call__(self, input_ids, **kwargs):
        out = super().__call__(input_ids, **kwargs)
        return nn.Dense(3, name="head")(out.last_hidden_state[:, 0])


def test_checkpoint_without_pooler_loads_without_one(tiny_checkpoint):
    rewrite_tensors(tiny_checkpoint, lambda t: [t.pop(k) for k in list(t) if "pooler" in k])
    model, params = from_pretrained(tiny_checkpoint)
    assert "pooler" not in params and model.config.with_pooler is False


def test_new_params_are_initialised_and_logged(tiny_checkpoint, caplog):
    """Only parts no checkpoint has are random, and the log line lists them."""
    from ftjax.models import hub

    tensors = load_file(tiny_checkpoint / "model.safetensors")
    with caplog.at_level(logging.INFO, logger="ftjax.models"):
        params = hub.params_from_tensors(BertWithHead(TINY_BERT), tensors, "test")
    assert params["head"]["kernel"].shape == (16, 3)
    assert "new by design" in caplog.text and "head/kernel" in caplog.text
    assert "pooler" not in caplog.text.split("new by design")[1]
    np.testing.assert_array_equal(params["pooler"]["kernel"], tensors["pooler.dense.weight"].T)


def test_unused_checkpoint_tensors_are_logged(tiny_checkpoint, caplog):
    rewrite_tensors(
        tiny_checkpoint,
        lambda t: t.update({"cls.predictions.bias": np.zeros(50, np.float32)}),
    )
    with caplog.at_level(logging.INFO, logger="ftjax.models"):
        from_pretrained(tiny_checkpoint)
    assert "cls.predictions.bias" in caplog.text


def test_prefixed_checkpoint_and_pytorch_bin(tiny_checkpoint, tmp_path):
    """BertForPreTraining-style 'bert.' names, stored as pytorch_model.bin."""
    torch = pytest.importorskip("torch")
    tensors = load_file(tiny_checkpoint / "model.safetensors")
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    torch.save(
        {f"bert.{k}": torch.from_numpy(v.copy()) for k, v in tensors.items()},
        binary / "pytorch_model.bin",
    )
    _, expected = from_pretrained(tiny_checkpoint)
    _, params = from_pretrained(binary)
    flat, flat_expected = (traverse_util.flatten_dict(p, sep="/") for p in (params, expected))
    assert flat.keys() == flat_expected.keys()
    for key, value in flat.items():
        assert np.array_equal(np.asarray(value), np.asarray(flat_expected[key])), key


def test_hub_id_offline_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(sources.SourceError, match="offline"):
        from_pretrained("some-org/some-model")


def test_missing_local_path_is_an_error():
    with pytest.raises(sources.SourceError, match="neither an existing path"):
        from_pretrained("./no/such/folder")


def test_every_param_has_logical_axes():
    model = BertModel(TINY_BERT)
    axes = traverse_util.flatten_dict(param_axes(model), sep="/")
    shapes = traverse_util.flatten_dict(init_params(model), sep="/")
    assert axes.keys() == shapes.keys()
    for path, spec in axes.items():
        assert len(spec) == shapes[path].ndim and all(spec), path
    assert tuple(axes["encoder/layer_0/attention/query/kernel"]) == ("embed", "joined_heads")
    assert tuple(axes["embeddings/word_embeddings/embedding"]) == ("vocab", "embed")


def test_abstract_params_trace_a_config_once_and_hand_out_fresh_trees():
    import dataclasses

    from ftjax.models import hub

    family = hub.family_of(BertModel(TINY_BERT))
    config = dataclasses.replace(TINY_BERT, intermediate_size=TINY_BERT.intermediate_size + 8)
    before = hub._traced.cache_info()
    first = hub.abstract_params(BertModel(config), family)
    first["encoder"].clear()  # a caller's edit stays its own
    again = hub.abstract_params(BertModel(config), family)  # another module, same config
    after = hub._traced.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    shapes = traverse_util.flatten_dict(nn.unbox(again), sep="/")
    want = traverse_util.flatten_dict(init_params(BertModel(config)), sep="/")
    assert {p: s.shape for p, s in shapes.items()} == {p: a.shape for p, a in want.items()}


def test_bfloat16_compute_keeps_float32_params(tiny_checkpoint):
    model32, params = from_pretrained(tiny_checkpoint)
    model16, params16 = from_pretrained(tiny_checkpoint, dtype="bfloat16")
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(params16))
    ids = np.arange(1, 13).reshape(2, 6)
    out32 = model32.apply({"params": params}, ids).last_hidden_state
    out16 = model16.apply({"params": params16}, ids).last_hidden_state
    assert out16.dtype == jax.numpy.bfloat16
    np.testing.assert_allclose(np.asarray(out16, np.float32), np.asarray(out32), atol=0.1)


def test_dropout_is_active_only_when_not_deterministic(tiny_checkpoint):
    model, params = from_pretrained(tiny_checkpoint)
    ids = np.arange(1, 13).reshape(2, 6)
    a = model.apply({"params": params}, ids).last_hidden_state
    b = model.apply({"params": params}, ids).last_hidden_state
    c = model.apply(
        {"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)}
    ).last_hidden_state
    assert np.array_equal(a, b) and not np.allclose(a, c)
