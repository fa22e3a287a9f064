"""The planner: its per-device total against XLA's memory_analysis on a small Llama
compiled ahead of time over a simulated 8-device mesh (the large shapes live in
benchmarks/plan_vs_xla.py), the bundled config.json shapes, and its stand-in batch
against the loader's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ftjax.models import LlamaConfig
from tests.helpers import xla

ROOT = Path(__file__).resolve().parents[1]


def test_cli_plans_a_small_llama_within_15_percent_of_xla(tmp_path):
    # Attention and the logits dominate, as at scale; LoRA over a bf16 frozen backbone.
    config = LlamaConfig(
        vocab_size=2048, hidden_size=256, num_layers=2, num_heads=8, num_kv_heads=4,
        head_dim=32, intermediate_size=512, max_position_embeddings=1024,
    )  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf()))
    command = [
        sys.executable, "-m", "ftjax.plan",
        f"--config={ROOT / 'configs' / 'lm.py'}:model={tmp_path / 'config.json'},method=lora",
        "--mesh=fsdp=8", "--remat=full", "--scan_layers", "--param_dtype=bfloat16",
        "--config.model.dtype=bfloat16", "--config.data.batch_size=8",
        "--config.data.max_length=512", "--check",
    ]  # fmt: skip
    env = dict(os.environ, XLA_FLAGS=xla.flags(device_count=8))
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for row in ("params frozen bfloat16", "optimizer state", "gradients", "activations saved"):
        assert row in out, out
    assert "(8 devices)" in out and "XLA memory_analysis: argument" in out
    ratio = float(re.search(r"planned / XLA ([\d.]+)", out)[1])
    assert 0.85 <= ratio <= 1.15, out
    analytic = float(re.search(r"total ([\d.e+]+)\n", out)[1])
    counted = float(re.search(r"cost analysis of the lowered step\): ([\d.e+]+)", out)[1])
    assert analytic == pytest.approx(counted, rel=0.15), out


def test_bundled_shapes_have_the_published_sizes():
    from ftjax.models import hub
    from ftjax.planning import abstract

    sizes = {}
    for name in abstract.shape_names():
        family, config = abstract.read_model_config(name)
        params = hub.abstract_params(family.module(config), family)
        sizes[name] = sum(leaf.size for leaf in jax_leaves(params))
    assert sizes == {
        # BertModel's 335,141,888 (pooler included) + the MLM head (transform + bias)
        "bert-large-uncased-shape": 336_224_058,
        "llama2-7b-shape": 6_738_415_616,
        "t5-v1_1-xl-shape": 2_849_757_184,
    }


def jax_leaves(tree):
    import flax.linen as nn
    import jax

    return jax.tree.leaves(nn.unbox(tree))


@pytest.mark.parametrize(
    "family, task", [("bert", "classification"), ("llama", "language_modeling"), ("t5", "seq2seq")]
)
def test_abstract_batch_is_the_loaders_longest_batch(tmp_path, family, task):
    from ftjax.planning import abstract
    from ftjax.training import experiment
    from ftjax.training.config import base_config
    from tests.helpers.tiny import make_checkpoint, make_dataset

    fields = {"classification": {"num_labels": 2}, "language_modeling": {},
              "seq2seq": {"source_column": "text", "label_column": "label",
                          "max_target_length": 4}}[task]  # fmt: skip
    config = base_config(
        "method=lora", task=task, data=str(make_dataset(tmp_path / "data")), **fields
    )
    config.model.name = str(make_checkpoint(tmp_path / family, family))
    config.data.update(batch_size=8, max_length=32, bucket_step=32, pack_length=0)
    if task == "seq2seq":
        config.task.label_words = ("negative", "positive")
    loader = experiment.build(config).loader
    real = max(loader.train_batches(0, 0), key=lambda b: b["input_ids"].shape[1])
    planned = abstract.abstract_batch(abstract.build(config))
    assert {k: (v.shape, v.dtype) for k, v in planned.items()} == {
        k: (v.shape, v.dtype) for k, v in real.items()
    }
