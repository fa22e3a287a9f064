"""A workdir as a model source: continued pre-training, then fine-tuning from it. The
exported backbone is exactly what trained (LoRA merged), and unexportable methods are
refused by name."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from ftjax import loop, partition
from ftjax.export import STAMP, ExportError, export_backbone, is_run
from ftjax.models import from_pretrained
from tests.helpers import synthetic
from tests.helpers.runs import tiny_run_config
from tests.helpers.tiny import write_splits


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    splits = synthetic.splits_of(
        synthetic.sentiment_rows, sizes={"train": 64, "validation": 16, "test": 16}
    )
    return write_splits(tmp_path_factory.mktemp("data"), splits)


def trained(workdir) -> dict:
    """The run's latest params (trainable and frozen), flat, on the host."""
    _, state, _, _ = loop.restore_run(workdir)
    every = {**state.trainable, **state.frozen}
    return {p: np.asarray(jax.device_get(v)) for p, v in every.items()}


def test_masked_lm_run_is_the_source_of_a_fine_tuning_run(tmp_path, shallow_checkpoints, data):
    cpt = tiny_run_config("lm", shallow_checkpoints["bert"], data, train__epochs=1)
    loop.run(cpt, tmp_path / "mlm")
    assert is_run(tmp_path / "mlm") and not is_run(shallow_checkpoints["bert"])
    model, params = from_pretrained(tmp_path / "mlm")
    assert model.config.with_mlm_head  # the head the run initialised and trained
    loaded, expected = partition.flatten(params), trained(tmp_path / "mlm")
    assert loaded.keys() == expected.keys()
    assert all(np.array_equal(loaded[p], expected[p]) for p in loaded)
    _, original = from_pretrained(shallow_checkpoints["bert"])
    path = "encoder/layer_0/attention/query/kernel"
    assert not np.array_equal(partition.flatten(original)[path], loaded[path])
    stamp = json.loads((tmp_path / "mlm" / "export" / "step_4" / STAMP).read_text())
    assert stamp["step"] == 4 and stamp["source"] == str(shallow_checkpoints["bert"])

    tune = tiny_run_config("sentiment", tmp_path / "mlm", data, method="lora", train__epochs=1)
    results = loop.run(tune, tmp_path / "tuned")
    assert results["test"]["examples"] == 16


def test_lora_run_exports_merged_kernels(tmp_path, shallow_checkpoints, data):
    config = tiny_run_config("lm", shallow_checkpoints["gpt2"], data, "lora", train__epochs=1)
    loop.run(config, tmp_path / "clm")
    folder = export_backbone(tmp_path / "clm")
    model, params = from_pretrained(folder)
    assert not model.config.peft.lora_rank
    run = trained(tmp_path / "clm")
    scale = 16 / 8  # alpha / rank, the defaults
    base = "decoder/layer_0/attention/query/"
    lora = run[base + "lora_a"] @ run[base + "lora_b"]
    assert np.abs(lora).max() > 0  # it trained
    merged = partition.flatten(params)[base + "kernel"]
    np.testing.assert_allclose(merged, run[base + "kernel"] + lora * scale, atol=1e-6)
    assert export_backbone(tmp_path / "clm") == folder  # exported once, then reused

    refused = tmp_path / "prefix"
    shutil.copytree(tmp_path / "clm", refused, ignore=shutil.ignore_patterns("export"))
    saved = json.loads((refused / "config.json").read_text())
    saved["method"]["name"] = "prefix"
    (refused / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ExportError, match="method prefix adds parameters"):
        from_pretrained(refused)


def test_t5_span_corruption_run_is_a_model_source(tmp_path, shallow_checkpoints, data):
    config = tiny_run_config(
        "lm", shallow_checkpoints["t5"], data, train__epochs=1, task__sentinel_format="[unused{}]"
    )
    results = loop.run(config, tmp_path / "t5")
    assert np.isfinite(results["test"]["perplexity"]) and results["test"]["tokens"] > 0
    model, params = from_pretrained(tmp_path / "t5")
    expected = trained(tmp_path / "t5")
    loaded = partition.flatten(params)
    assert all(np.array_equal(loaded[p], expected[p]) for p in expected)
    assert type(model).__name__ == "T5Model"
