"""benchmarks/torch_reference.py, the PyTorch reference runner, end to end on a tiny
BERT and tiny data: every method trains two steps and reports sane figures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.tiny import make_checkpoint, make_dataset

# Minutes, not seconds: outside the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

pytest.importorskip("torch")
pytest.importorskip("peft")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_reference.py"
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


def test_time_to_accuracy_alternates_the_sides_and_pairs_neighbours(tmp_path):
    model = make_checkpoint(tmp_path / "model", max_position_embeddings=128)
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "runs.json"
    script = SCRIPT.parent / "time_to_accuracy.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--pairs", "2", "--out", str(out),
         "--torch-flags", f"--model {model} --data {data} --max-steps 2 --threads 1", "--",
         f"--config.model.name={model}", f"--config.data.name={data}",
         "--config.train.max_steps=2", "--config.train.prng_impl=rbg"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert [r["side"] for r in runs] == ["ftjax", "torch", "torch", "ftjax"]
    assert all(r["seconds"] > 0 and 0 <= r["test_accuracy"] <= 1 for r in runs)
    pairs = [r["seconds"] for r in runs]
    ratios = f"{pairs[1] / pairs[0]:.2f}x, {pairs[2] / pairs[3]:.2f}x"
    assert f"pair ratios (torch s / ftjax s): {ratios}" in proc.stdout
