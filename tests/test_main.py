"""README's main command, end to end through the shell, on a tiny model and data slice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ftjax.core.partition import count, param_table
from tests.helpers import synthetic
from tests.helpers.tiny import make_checkpoint, make_dataset, write_splits

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cli_trains_tests_and_evaluates(tmp_path):
    """Train, test, the same command again (tested again from its steps in the
    compilation cache), another run refused, ftjax.evaluate on another file."""
    from ftjax import cli

    model, data = make_checkpoint(tmp_path / "model"), make_dataset(tmp_path / "data")
    # ftjax's own compilation cache (ftjax.cli), not the suite's: the rerun loads its steps.
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", FTJAX_CACHE=str(tmp_path / "cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",  # tiny steps compile fast
    )  # fmt: skip
    compiled = tmp_path / "cache" / "xla" / cli.host_cpu_key()
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

    def again(*changes: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ftjax.main", "--config", "configs/sentiment.py:method=lora",
             "--workdir", str(workdir), *overrides, *changes],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
        )  # fmt: skip

    entries = sorted(p.name for p in compiled.iterdir())
    assert [e for e in entries if e.startswith("jit_train_step")]
    rerun = again()  # the same command: says the run is finished, tests it again
    assert rerun.returncode == 0 and "holds a finished run" in rerun.stdout
    assert final in rerun.stdout
    assert sorted(p.name for p in compiled.iterdir()) == entries  # nothing compiled anew
    retested = json.loads((workdir / "results.json").read_text())
    assert retested["median_step_seconds"] == results["median_step_seconds"] is not None
    refused = again("--config.train.seed=1")  # another run in this workdir: one line, no trace
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "workdir error:" in refused.stderr and "train.seed: 0 -> 1" in refused.stderr

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


def run_cli(module: str, *args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_cli_runs_ner_and_evaluate_reproduces(tmp_path):
    model = make_checkpoint(tmp_path / "model", "bert")
    sizes = {"train": 32, "validation": 16, "test": 16}
    data = write_splits(tmp_path / "data", synthetic.splits_of(synthetic.ner_rows, sizes=sizes))
    workdir = tmp_path / "run"
    run_cli(
        "ftjax.main", "--config", "configs/ner.py:method=full", "--workdir", str(workdir),
        f"--config.model.name={model}", f"--config.data.name={data}",
        "--config.data.batch_size=16", "--config.data.max_length=32", "--config.train.epochs=1",
        "--config.train.prng_impl=rbg", "--config.train.best_metric=entity_f1",
    )  # fmt: skip
    results = json.loads((workdir / "results.json").read_text())
    assert results["task"] == "token_classification"
    proc = run_cli("ftjax.evaluate", "--workdir", str(workdir))
    assert proc.stdout.startswith("test ")
    evaluated = json.loads((workdir / "eval.json").read_text())["test"]
    for metric, value in results["test"].items():
        if isinstance(value, float):
            assert evaluated[metric] == value, metric


@pytest.mark.slow
def test_cli_evaluates_an_untrained_model_on_a_test_split_alone(tmp_path):
    """`ftjax.evaluate --config`: zero-shot text-to-text with beam search, no train split."""
    model = make_checkpoint(tmp_path / "model", "t5")
    rows = synthetic.splits_of(synthetic.text_to_text_rows, sizes={"test": 16})
    data = write_splits(tmp_path / "data", {"test": rows["test"]})
    workdir = tmp_path / "zero"
    proc = run_cli(
        "ftjax.evaluate", "--config", "configs/seq2seq.py", "--workdir", str(workdir),
        f"--config.model.name={model}", f"--config.data.name={data}",
        "--config.data.label_column=", "--config.data.source_column=source",
        "--config.data.max_target_length=8", "--config.task.decoding=beam",
        "--config.task.num_beams=2", "--config.train.prng_impl=rbg",
    )  # fmt: skip
    result = json.loads((workdir / "eval.json").read_text())
    assert proc.stdout.startswith("test ") and result["step"] == 0
    assert result["test"]["examples"] == 16 and 0.0 <= result["test"]["rouge_l"] <= 1.0
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["task"]["decoding"] == "beam" and saved["data"]["name"] == str(data)


def test_compilation_cache_folder_is_per_host_cpu_and_yields_to_jax_and_off(monkeypatch):
    from ftjax import cli

    assert cli.host_cpu_key() == cli.host_cpu_key()
    monkeypatch.setenv("FTJAX_COMPILATION_CACHE", "0")
    assert cli.use_compilation_cache() is None
    monkeypatch.setenv("FTJAX_COMPILATION_CACHE", "1")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere/else")
    assert cli.use_compilation_cache() == "/somewhere/else"
