"""benchmarks/torch_reference.py, the PyTorch reference runner, end to end on a tiny
BERT and tiny data: every method trains two steps and reports sane figures; and
benchmarks/time_to_accuracy.py, which alternates it with ftjax's default run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.modules import load_module
from tests.helpers.tiny import make_checkpoint, make_dataset

# Minutes, not seconds: outside the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

pytest.importorskip("torch")
pytest.importorskip("peft")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_reference.py"
TIME_TO_ACCURACY = SCRIPT.parent / "time_to_accuracy.py"
METHODS = ("full", "lora", "prefix", "prompt", "probe")


def test_torch_reference_runs_every_method(tmp_path):
    # 128 positions: prompt tuning puts 20 virtual tokens before up to 64 real ones.
    model = make_checkpoint(tmp_path / "model", max_position_embeddings=128)
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "reference.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(model), "--data", str(data),
         "--max-steps", "2", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    rows = {row["method"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == set(METHODS)
    for row in rows.values():
        assert row["steps"] == 2
        assert 0 <= row["test_accuracy"] <= 1 and 0 <= row["validation_accuracy"] <= 1
        assert row["median_step_ms"] > 0 and row["ms_per_1k_padded_tokens"] > 0
        assert 0 < row["padded_tokens_per_row"] <= 64
        assert row["peak_rss_mb"] > 0 and row["wall_s"] > 0
    assert rows["full"]["trainable_pct"] == 100
    assert all(0 < rows[m]["trainable_pct"] < 5 for m in METHODS if m != "full")

    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| method |")
    assert [line.split("|")[1].strip() for line in table[1:]] == list(METHODS)


def test_torch_reference_bf16_runs_linear_layers_in_bf16(tmp_path):
    import torch

    reference = load_module(SCRIPT)
    layer, x = torch.nn.Linear(4, 4), torch.ones(1, 4)
    with reference.precision(True):
        assert layer(x).dtype == torch.bfloat16
    with reference.precision(False):
        assert layer(x).dtype == torch.float32
    model = make_checkpoint(tmp_path / "model")
    args = reference.parse_args(
        ["--model", str(model), "--data", str(make_dataset(tmp_path / "data")),
         "--max-steps", "2", "--threads", "1", "--bf16"]
    )  # fmt: skip
    row = reference.run_method("lora", args)
    assert row["bf16"] is True and row["steps"] == 2 and 0 <= row["test_accuracy"] <= 1


def test_time_to_accuracy_runs_both_sides_and_reports_their_ratio(tmp_path):
    model = make_checkpoint(tmp_path / "model", max_position_embeddings=128)
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "runs.json"
    proc = subprocess.run(
        [sys.executable, str(TIME_TO_ACCURACY), "--pairs", "1", "--out", str(out),
         "--torch-flags", f"--model {model} --data {data} --max-steps 2 --threads 1", "--",
         f"--config.model.name={model}", f"--config.data.name={data}",
         "--config.train.max_steps=2", "--config.train.prng_impl=rbg"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["side"] for r in runs] == ["ftjax", "torch"]
    assert all(r["seconds"] > 0 and 0 <= r["test_accuracy"] <= 1 for r in runs)
    assert runs[1]["process_seconds"] >= runs[1]["seconds"]  # PyTorch's imports not counted
    ratio = runs[1]["seconds"] / runs[0]["seconds"]
    assert f"pair ratios (torch s / ftjax s): {ratio:.2f}x" in proc.stdout


def test_time_to_accuracy_swaps_the_order_every_pair_and_pairs_neighbours():
    tta = load_module(TIME_TO_ACCURACY)
    assert tta.sides(3) == ["ftjax", "torch", "torch", "ftjax", "ftjax", "torch"]
    seconds = {"ftjax": [100, 200, 50], "torch": [300, 300, 400]}
    runs = [{"side": side, "seconds": seconds[side].pop(0)} for side in tta.sides(3)]
    # pairs: 300/100, 300/200, 400/50; medians 300 / 100
    assert tta.summary(runs) == [
        "pair ratios (torch s / ftjax s): 3.00x, 1.50x, 8.00x",
        "median pair 3.00x, worst pair 1.50x, median against median 3.00x",
    ]
