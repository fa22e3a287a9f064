"""Sequences longer than a model's position table are refused before anything compiles:
JAX's embedding gather answers an out-of-range position with NaN, not an error."""

from __future__ import annotations

import numpy as np
import pytest

from ftjax.models import from_pretrained
from ftjax.training.config import ConfigError
from ftjax.training.experiment import build
from tests.helpers.runs import config_file
from tests.helpers.tiny import make_checkpoint, make_dataset, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(
        tmp_path_factory.mktemp("data"), (("train", 16), ("validation", 8), ("test", 8))
    )


def real_rows_output(model_dir, length: int) -> np.ndarray:
    model, params = from_pretrained(model_dir)
    ids = np.full((1, length), 1000, np.int32)
    return np.asarray(model.apply({"params": params}, ids, np.ones_like(ids)).last_hidden_state)


@pytest.mark.parametrize("kind, table, usable", [("bert", 64, 64), ("roberta", 64, 62)])
def test_max_length_beyond_the_position_table_is_a_config_error(
    tmp_path, data, kind, table, usable
):
    # RoBERTa numbers real tokens from pad_token_id + 1 (its pad id is 1): two rows fewer.
    pad = {"roberta": 1}.get(kind, 0)
    model_dir = make_checkpoint(
        tmp_path / kind, model_type=kind, max_position_embeddings=table, pad_token_id=pad
    )
    assert np.isfinite(real_rows_output(model_dir, usable)).all()
    assert np.isnan(real_rows_output(model_dir, usable + 1)).any()  # what the check prevents

    config = tiny_config(model_dir, data, "lora")
    config.data.max_length = usable
    build(config)
    config.data.max_length = usable + 1
    with pytest.raises(
        ConfigError, match=rf"config.data.max_length={usable + 1}.*{usable} positions"
    ):
        build(config)


def test_decoder_prompt_plus_target_must_fit(tmp_path, data):
    """A decoder-only text-to-text run feeds source and target as one sequence."""
    model_dir = make_checkpoint(tmp_path / "gpt2", "gpt2", max_position_embeddings=48)
    config = config_file("seq2seq", "method=lora")
    config.model.name, config.data.name = str(model_dir), str(data)
    config.data.update(max_length=40, max_target_length=8)
    config.task.label_words = ("bad", "good")
    build(config)
    config.data.max_target_length = 9
    with pytest.raises(ConfigError, match="source 49.*max_target_length"):
        build(config)


def test_roberta_pad_id_zero_is_kept(tmp_path):
    """pad_token_id 0 is a value, not a missing field (it decides RoBERTa's positions)."""
    model_dir = make_checkpoint(tmp_path / "r", model_type="roberta", pad_token_id=0)
    model, _ = from_pretrained(model_dir)
    assert model.config.pad_token_id == 0
