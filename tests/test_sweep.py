"""ftjax.sweep: grid expansion and checks, skip / resume / failure through the shell, and
the `data.train_examples` subsample that data-budget axes set."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ftjax.data.splits import stratified_sample
from ftjax.studies import report, sweep, warm_process
from ftjax.training.config import ConfigError
from tests.helpers.tiny import make_checkpoint, make_dataset

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def test_values_split_at_commas_outside_brackets():
    assert sweep.split_values("a, b,('q','v'),[1,2]") == ["a", "b", "('q','v')", "[1,2]"]
    assert sweep.parse_axis("config.train.seed=0,1") == ("train.seed", ["0", "1"])
    for bad in ("train.seed", "train.seed=", "train.seed=1,1", "x=1,,2"):
        with pytest.raises(ConfigError, match="--grid"):
            sweep.parse_axis(bad)


def test_grid_expands_file_arguments_and_fields():
    axes = [("method", ["lora", "full"]), ("data.train_examples", ["100", "all"])]
    points = sweep.expand("configs/sentiment.py:model=minilm", axes, ["--config.train.epochs=1"])
    sweep.name_points(points)
    assert [p.name for p in points] == [
        "method=lora,train_examples=100",
        "method=lora,train_examples=all",
        "method=full,train_examples=100",
        "method=full,train_examples=all",
    ]
    last = points[-1]
    assert last.spec == "configs/sentiment.py:model=minilm,method=full"
    assert last.overrides == ["--config.train.epochs=1", "--config.data.train_examples=0"]
    config = sweep.checked_config(last)
    assert config.method.name == "full" and config.data.train_examples == 0
    assert config.optimizer.learning_rate == 1e-4  # the method's own default rate


def test_names_keep_axes_apart_when_their_last_parts_clash():
    axes = [("train.seed", ["0"]), ("task.seed", ["1"])]
    points = sweep.expand("configs/sentiment.py", axes, [])
    sweep.name_points(points)
    assert points[0].name == "train.seed=0,task.seed=1"


def test_learning_rate_factors_scale_each_methods_default_and_are_tuned():
    points = sweep.expand("configs/sentiment.py", [("method", ["lora", "full"])], [])
    points = sweep.with_learning_rates(points, [0.5, 2.0])
    sweep.name_points(points)
    rates = {p.name: sweep.checked_config(p).optimizer.learning_rate for p in points}
    assert rates == {
        "method=lora,learning_rate=0.0005": 5e-4,
        "method=lora,learning_rate=0.002": 2e-3,
        "method=full,learning_rate=5e-05": 5e-5,
        "method=full,learning_rate=0.0002": 2e-4,
    }
    assert all(p.tuned == ["optimizer.learning_rate"] for p in points)


@pytest.mark.parametrize(
    "grid, message",
    [
        ("train.sed=1", 'Did you mean "seed"'),
        ("train.seed=a", "invalid literal"),
        ("optimizer.name=adam", "choose from adamw"),
        ("data.train_examples=-3", "must be >= 0"),
        ("method=lorx", "method='lorx'"),
        ("method.rank=0", "rank=0 must be >= 1"),
        # checked against the model's config.json, before any point runs:
        ("method.extra_trainable=('encoder/nope/.*',)", "'encoder/nope/.*' matches no parameter"),
        ("data.max_length=32,4096", "beyond the 64 positions of model"),
    ],
)
def test_a_bad_grid_value_fails_before_anything_runs(tmp_path, capsys, grid, message):
    model = make_checkpoint(tmp_path / "model")
    root = tmp_path / "study"
    code = sweep.main(
        ["--config", "configs/sentiment.py:method=lora", "--root", str(root),
         "--grid", "train.epochs=1,2", "--grid", grid, f"--config.model.name={model}"]
    )  # fmt: skip
    assert code == 2 and not root.exists()
    error = capsys.readouterr().err
    assert error.startswith("config error: grid point ") and message in error
    assert "Traceback" not in error


def test_print_gives_one_launch_line_per_point(tmp_path, capsys):
    root = tmp_path / "study"
    argv = ["--config", "configs/sentiment.py", "--root", str(root), "--grid", "train.seed=0,1"]
    assert sweep.main([*argv, "--print"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("--point ")[-1] for line in lines] == ["seed=0", "seed=1"]
    assert all(" --print" not in line and "-m ftjax.sweep" in line for line in lines)
    recorded = json.loads((root / "seed=1" / "point.json").read_text())
    assert recorded["status"] == "pending" and recorded["axes"] == {"train.seed": "1"}
    assert recorded["metric"] == "accuracy" and recorded["higher_is_better"] is True


def commands_in(log: Path) -> int:
    return sum(line.startswith("$ ") for line in log.read_text().splitlines())


@pytest.mark.slow
def test_sweep_skips_finished_resumes_stopped_and_goes_past_failures(tmp_path):
    """Points in order: dataset `data` (runs), `nowhere` (no such folder: fails when it
    runs, past the sweep's checks, which read configs and the model, not the data),
    `copy` (stopped by SIGTERM at its first checkpoint, then resumed)."""
    model, data = make_checkpoint(tmp_path / "model"), make_dataset(tmp_path / "data")
    shutil.copytree(data, tmp_path / "copy")
    root = tmp_path / "study"
    names = ",".join(str(tmp_path / n) for n in ("data", "nowhere", "copy"))
    command = [
        sys.executable, "-m", "ftjax.sweep", "--config", "configs/sentiment.py:method=bitfit",
        "--root", str(root), "--grid", f"data.name={names}",
        f"--config.model.name={model}", "--config.data.max_length=32",
        "--config.data.batch_size=8", "--config.train.max_steps=40",
        "--config.train.checkpoint_every=2", "--config.train.log_every=1",
        "--config.train.prng_impl=rbg",
    ]  # fmt: skip
    first = subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    stopped = root / "name=copy"
    deadline = time.monotonic() + 300
    while not any((stopped / "checkpoints").glob("[0-9]*")):
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 1 and "rerun the same command to resume" in out

    def status(name: str) -> dict:
        return json.loads((root / name / "point.json").read_text())

    assert status("name=data")["status"] == "finished"
    assert status("name=nowhere")["status"] == "failed"
    assert "nowhere" in status("name=nowhere")["error"]
    assert status("name=copy")["status"] == "stopped"
    results = (root / "name=data" / "results.json").read_text()

    again = subprocess.run(command, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "1 finished, 1 already finished, 1 failed" in again.stdout
    assert (root / "name=data" / "results.json").read_text() == results
    assert commands_in(root / "name=data" / "log.txt") == 1  # never ran again
    assert (
        commands_in(stopped / "log.txt") == 2
        and "resumed from step" in (stopped / "log.txt").read_text()
    )
    rows = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    train_steps = [row["step"] for row in rows if row["kind"] == "train"]
    assert train_steps == list(range(1, 41))  # resumed where it stopped: no step twice
    finished = json.loads((stopped / "results.json").read_text())
    assert finished["step"] == 40 and finished["params"]["trainable"] > 0
    assert set(finished["validation"]) >= {"accuracy", "loss"}
    assert status("name=copy")["status"] == "finished"
    assert status("name=nowhere")["status"] == "failed"
    # the report's rows follow the grid's order, not the folders' names
    assert [p.name for p in report.load_points(root)] == ["name=data", "name=nowhere", "name=copy"]


def test_stratified_sample_keeps_class_shares_and_nests():
    labels = np.array([0] * 600 + [1] * 300 + [2] * 100)
    chosen = stratified_sample(labels, len(labels), 100, seed=3)
    assert len(set(chosen)) == 100 and list(chosen) == sorted(chosen)
    assert Counter(labels[chosen]) == {0: 60, 1: 30, 2: 10}
    larger = stratified_sample(labels, len(labels), 400, seed=3)
    assert set(chosen) <= set(larger)  # smaller budgets lie inside larger ones
    other = stratified_sample(labels, len(labels), 100, seed=4)
    assert set(other) != set(chosen)
    odd = stratified_sample(["a", "b", "b"], 3, 2, seed=0)  # 2/3 and 4/3: remainders decide
    assert len(odd) == 2
    uniform = stratified_sample(None, 50, 10, seed=0)
    assert len(set(uniform)) == 10 and uniform.max() < 50


def test_train_examples_subsamples_the_training_split_by_class(tmp_path):
    from ftjax.training.experiment import build
    from tests.helpers.runs import tiny_run_config

    model, data = make_checkpoint(tmp_path / "model"), make_dataset(tmp_path / "data")
    config = tiny_run_config("sentiment", model, data, method="bitfit")
    config.data.train_examples = 20
    train = build(config).loader.examples("train")
    labels = train.arrays["labels"]
    assert len(labels) == 20
    everything = json.loads(
        json.dumps(
            Counter(
                json.loads(line)["label"]
                for line in (data / "train.jsonl").read_text().splitlines()
            )
        )
    )
    shares = {int(k): v / sum(everything.values()) for k, v in everything.items()}
    assert all(abs(np.mean(labels == c) - share) <= 1 / 20 for c, share in shares.items())
    config.data.train_examples = 10**6
    with pytest.raises(ConfigError, match="config.data.train_examples=1000000.*has 64 rows"):
        build(config)


def test_warm_runner_runs_a_module_as_python_m_would(tmp_path):
    """Each run is its own process, forked from a server that imported the stack and
    started no JAX runtime: its output goes to the log, its exit code and a signal that
    kills it come back as a subprocess's would."""
    runner = warm_process.WarmRunner("tests.helpers.echo_entry")
    log = tmp_path / "log.txt"
    log.write_text("$ the command\n")
    run = runner.start(["--flag=a b", "3"], log)
    run.join(timeout=120)
    assert run.exitcode == 3
    assert log.read_text().splitlines() == [
        "$ the command", "flag a b argv ['3']", "warm True", "backends []",
    ]  # fmt: skip
    killed = runner.start(["sleep"], log)
    deadline = time.monotonic() + 60
    while log.read_text().count("backends") < 2:  # running, past its imports
        assert time.monotonic() < deadline and killed.is_alive()
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGTERM)
    killed.join(timeout=60)
    assert killed.exitcode == -signal.SIGTERM
