"""README's main command on the bundled defaults, end to end, offline."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from ftjax.partition import count, param_table


def test_main_encodes_real_sentences_offline():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "ftjax.main", "--num_sentences", "3"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    total = next(line.split() for line in out.splitlines() if line.startswith("total "))
    assert total == ["total", "22,713,216", "22,713,216", "100.000%"]
    assert "last_hidden_state  (3, " in out and ", 384) float32" in out
    assert "hidden_states      7 x (3, " in out


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
