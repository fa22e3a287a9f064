"""README's main command, end to end through the shell, on a tiny model and data slice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ftjax.partition import count, param_table
from tests.helpers.tiny import make_checkpoint, make_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_cli_trains_tests_and_evaluates(tmp_path):
    model, data = make_checkpoint(tmp_path / "model"), make_dataset(tmp_path / "data")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    workdir = tmp_path / "run"
    overrides = [
        f"--config.model.name={model}",
        f"--config.data.name={data}",
        "--config.data.batch_size=16",
        "--config.train.epochs=1",
        "--config.method.rank=4",
        "--config.train.prng_impl=rbg",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "ftjax.main", "--config", "configs/sentiment.py:method=lora",
         "--workdir", str(workdir), *overrides],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lora " in proc.stdout and "% total" in proc.stdout  # the trainable table
    final = next(line for line in proc.stdout.splitlines() if line.startswith("final test"))
    results = json.loads((workdir / "results.json").read_text())
    assert f"accuracy {results['test']['accuracy']:.4f}" in final
    assert results["test"]["examples"] == 32
    assert (workdir / "config.json").is_file() and any((workdir / "tensorboard").iterdir())
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["method"]["rank"] == 4

    other = tmp_path / "other.csv"  # another dataset of the same task, as a csv file
    other.write_text('text,label\n"a wonderful, moving film",1\n"dull and far too long",0\n')
    proc = subprocess.run(
        [sys.executable, "-m", "ftjax.evaluate", "--workdir", str(workdir), "--data", str(other)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "examples 2" in proc.stdout
    assert json.loads((workdir / "eval_other.json").read_text())["test"]["examples"] == 2


def test_param_table_counts_by_group():
    params = {
        "encoder": {"layer_0": {"kernel": np.zeros((4, 3)), "bias": np.zeros(3)}},
        "head": {"kernel": np.zeros((3, 2))},
    }
    trainable = {"encoder/layer_0/kernel": False, "encoder/layer_0/bias": True, "head/kernel": True}
    table = param_table(params, trainable)
    assert count(params) == 21
    lines = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:]}
    assert lines["encoder/layer_0"] == ["15", "3", "14.286%"]
    assert lines["head"] == ["6", "6", "28.571%"]
    assert lines["total"] == ["21", "9", "42.857%"]
