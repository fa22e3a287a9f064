"""benchmarks/side_by_side.py on a tiny BERT: ftjax and PyTorch + PEFT train the same
rows in each padding mode, and the ratios come from the rows."""

import pytest

from tests.helpers.tiny import make_checkpoint

# Minutes, not seconds: outside the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

pytest.importorskip("torch")
pytest.importorskip("peft")


def test_both_sides_run_each_padding_and_equal_padding_computes_the_same_tokens(tmp_path):
    from benchmarks import side_by_side

    model = make_checkpoint(tmp_path / "model")
    args = side_by_side.parse_args(["--model", str(model), "--steps", "2"])
    runs = side_by_side.plan(["full", "lora"], ["equal"])
    runs += side_by_side.plan(["lora"], ["natural", "packed"])
    assert ("torch", "lora", "packed") not in runs and runs[0][0] != runs[1][0]  # alternating
    rows = [side_by_side.run_one(*run, args) for run in runs]
    by = {(r["side"], r["method"], r["padding"]): r for r in rows}
    for r in rows:
        assert r["step_ms"] > 0 and r["ms_per_1k_real"] > 0 and r["peak_rss_mb"] > 0
    for method in ("full", "lora"):
        ours, theirs = by[("ftjax", method, "equal")], by[("torch", method, "equal")]
        assert ours["computed_per_example"] == theirs["computed_per_example"] == 64
        assert ours["real_per_example"] == pytest.approx(theirs["real_per_example"])
    # The same rows: PyTorch pads each batch to its longest row, ftjax packs tighter.
    runs = (by[("torch", "lora", "natural")], by[("ftjax", "lora", "packed")])
    share = {r["side"]: r["real_per_example"] / r["computed_per_example"] for r in runs}
    assert share["ftjax"] > share["torch"]
    text = side_by_side.report(rows)
    speedup = by[("torch", "lora", "equal")]["step_ms"] / by[("ftjax", "lora", "equal")]["step_ms"]
    assert f"- lora, equal padding: ftjax {speedup:.2f}x PyTorch + PEFT per step" in text
    assert "- ftjax, equal padding: LoRA step / full step" in text


def test_bf16_runs_each_side_in_its_mixed_precision(tmp_path):
    from benchmarks import side_by_side

    model = make_checkpoint(tmp_path / "model")
    args = side_by_side.parse_args(["--model", str(model), "--steps", "2", "--bf16"])
    rows = [side_by_side.run_one(side, "lora", "equal", args) for side in ("ftjax", "torch")]
    assert all(r["bf16"] and r["step_ms"] > 0 for r in rows)
