"""ftjax.report on studies written by hand (point.json, results.json, eval.json,
metrics.jsonl as ftjax.sweep and the runs write them): the table's numbers, the choice of
a tuned axis on validation, missing points, plots and the command line."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from ftjax.studies import report
from ftjax.studies.sweep import LEARNING_RATE

TOTAL = 22_713_218
TRAINABLE = {"lora": 72_194, "full": TOTAL}
ALL_EXAMPLES = 8_456  # what budget "all" trains on
# test accuracy per (method, budget), seeds 0, 1, 2
TEST = {
    ("lora", "100"): [0.712, 0.745, 0.698],
    ("lora", "all"): [0.836, 0.841, 0.829],
    ("full", "100"): [0.701, 0.688, 0.731],
    ("full", "all"): [0.851, 0.846, 0.858],
}
PROMPT_ACCURACY = 0.664


def write_point(root: Path, name: str, results: dict | None = None, **fields) -> Path:
    """ROOT/name/point.json (fields over a finished lora point's), and its results file."""
    record = {
        "name": name,
        "entry": "main",
        "axes": {},
        "tuned": [],
        "task": "classification",
        "model": "minilm",
        "method": "lora",
        "metric": "accuracy",
        "higher_is_better": True,
        "status": "finished",
        "returncode": 0,
        "error": None,
        "wall_seconds": 60.0,
        **fields,
    }
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "point.json").write_text(json.dumps(record))
    if results is not None:
        file = "eval.json" if record["entry"] == "prompt" else "results.json"
        (folder / file).write_text(json.dumps(results))
    return folder


def run_results(test: float, validation: float, method: str = "lora", examples: int = 100):
    return {
        "step": 60,
        "test": {"loss": 0.5, "accuracy": test, "examples": 512},
        "validation": {"loss": 0.5, "accuracy": validation, "examples": 256},
        "params": {"trainable": TRAINABLE[method], "total": TOTAL},
        "median_step_seconds": 0.040 if method == "lora" else 0.120,
        "peak_rss_mb": 1500.0 if method == "lora" else 2600.0,
        "data": {"train": {"examples": examples}},
        "method": method,
        "model": "minilm",
        "task": "classification",
    }


def write_curves(folder: Path, seed: int) -> None:
    rows = [
        {"step": step, "kind": "train", "loss": 0.7 - 0.01 * step + 0.01 * seed}
        for step in range(10, 61, 10)
    ] + [
        {"step": step, "kind": "eval", "loss": 0.6, "accuracy": 0.6 + step / 200 + seed / 100}
        for step in (20, 40, 60)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """2 methods x 3 seeds x 2 budgets, a zero-shot prompt point, a failed and a pending
    point (a fourth seed of each method)."""
    root = tmp_path / "study"
    for (method, budget), accuracies in TEST.items():
        for seed, accuracy in enumerate(accuracies):
            examples = ALL_EXAMPLES if budget == "all" else int(budget)
            folder = write_point(
                root,
                f"seed={seed},method={method},train_examples={budget}",
                run_results(accuracy, accuracy + 0.01, method, examples),
                axes={"train.seed": str(seed), "method": method, BUDGET: budget},
                method=method,
                wall_seconds=50.0 + 10 * seed,
            )
            write_curves(folder, seed)
    write_point(
        root,
        "seed=3,method=full,train_examples=100",
        axes={"train.seed": "3", "method": "full", BUDGET: "100"},
        method="full",
        status="failed",
        returncode=1,
        error="Traceback (most recent call last):\n  ...\nftjax.loop.TrainingDiverged: loss is nan",
    )
    write_point(
        root,
        "seed=3,method=lora,train_examples=all",
        axes={"train.seed": "3", "method": "lora", BUDGET: "all"},
        status="pending",
        returncode=None,
        wall_seconds=None,
    )
    prompt = {"step": 0, "test": {"accuracy": PROMPT_ACCURACY, "accuracy_std": 0.0, "seeds": 1}}
    write_point(
        root,
        "shots=0",
        {**prompt, "seeds": [{"shot_seed": 0, "accuracy": PROMPT_ACCURACY}]},
        entry="prompt",
        axes={"task.shots": "0"},
        model="smollm2",
        method="none",
        wall_seconds=30.0,
    )
    return root


BUDGET = report.BUDGET


def parse_table(text: str) -> list[dict[str, str]]:
    """The report's table as one dict per row, keyed by header."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]


def row_for(rows: list[report.Row], method: str, budget: str | None) -> report.Row:
    (row,) = [r for r in rows if r.method == method and r.axes.get(BUDGET) == budget]
    return row


def test_table_means_stds_seeds_and_shares(study: Path):
    rows = report.summarize(report.load_points(study))
    assert len(rows) == 5  # 2 methods x 2 budgets + prompting
    for (method, budget), accuracies in TEST.items():
        row = row_for(rows, method, budget)
        assert row.seeds == 3  # the failed and pending fourth seeds are not averaged
        assert row.mean == pytest.approx(statistics.mean(accuracies))
        assert row.std == pytest.approx(statistics.stdev(accuracies))
    lora = row_for(rows, "lora", "100")
    assert lora.share == pytest.approx(100 * 72_194 / 22_713_218)
    assert lora.step_ms == pytest.approx(40.0)
    assert lora.wall_s == pytest.approx(60.0)  # 50, 60, 70
    assert row_for(rows, "full", "all").train_examples == ALL_EXAMPLES

    table = {(r["method"], r["train_examples"]): r for r in parse_table(report.table(rows))}
    cell = table["lora", "100"]
    assert cell["accuracy (mean ± std)"] == "0.718 ± 0.024"  # 0.71833 ± 0.02413
    assert cell["seeds"] == "3"
    assert cell["trainable params"] == "72,194"
    assert cell["trainable share"] == "0.318%"
    assert cell["median step ms"] == "40.0"
    assert cell["peak RSS MB"] == "1,500"
    assert table["full", "all"]["trainable share"] == "100%"
    prompting = table["prompting", ""]
    assert prompting["model"] == "smollm2"
    assert prompting["shots"] == "0"
    assert prompting["accuracy (mean ± std)"] == "0.664"  # one seed: no ±
    assert prompting["trainable params"] == "0"
    assert prompting["trainable share"] == "0%"
    assert prompting["median step ms"] == "–"
    assert table["lora", "all"]["shots"] == ""  # an axis the point does not have


def test_missing_and_failed_points_are_listed(study: Path):
    text = report.markdown(report.summarize(report.load_points(study)))
    missing = text.split("## Missing or failed points")[1]
    assert "`seed=3,method=full,train_examples=100`: failed (exit 1): " in missing
    assert "TrainingDiverged: loss is nan" in missing
    assert "`seed=3,method=lora,train_examples=all`: pending" in missing
    assert missing.count("- `") == 2
    assert "13 of 15 points finished" in text


def test_a_finished_point_without_results_is_missing(study: Path):
    (study / "seed=0,method=lora,train_examples=100" / "results.json").unlink()
    rows = report.summarize(report.load_points(study))
    assert row_for(rows, "lora", "100").seeds == 2
    text = report.markdown(rows)
    assert "`seed=0,method=lora,train_examples=100`: finished, but results.json is missing" in text


def test_nothing_finished_still_reports(tmp_path: Path):
    for seed in range(2):
        write_point(tmp_path, f"seed={seed}", axes={"train.seed": str(seed)}, status="pending")
    rows = report.summarize(report.load_points(tmp_path))
    assert report.write_plots(rows, tmp_path / "plots") == []
    text = report.markdown(rows)
    assert parse_table(text)[0]["accuracy (mean ± std)"] == "–"
    assert "metric_vs_params.png: not drawn" in text
    assert "`seed=1`: pending" in text


def test_all_finished_says_so(tmp_path: Path):
    write_point(tmp_path, "seed=0", run_results(0.8, 0.8), axes={"train.seed": "0"})
    text = report.markdown(report.summarize(report.load_points(tmp_path)))
    assert "all 1 points finished" in text


def test_old_results_without_validation_or_params_show_dashes(tmp_path: Path):
    old = run_results(0.8, 0.8)
    del old["validation"], old["params"]
    write_point(tmp_path, "seed=0", old, axes={"train.seed": "0"})
    (row,) = parse_table(report.table(report.summarize(report.load_points(tmp_path))))
    assert row["accuracy (mean ± std)"] == "0.800"
    assert row["trainable params"] == row["trainable share"] == "–"


# learning rate -> (validation, test) accuracy of seeds 0 and 1: 1e-4 wins on validation,
# 1e-3 would win on test
TUNED = {
    "1e-4": [(0.820, 0.790), (0.830, 0.800)],
    "3e-4": [(0.800, 0.810), (0.790, 0.805)],
    "1e-3": [(0.700, 0.850), (0.810, 0.860)],
}


def write_tuned_study(root: Path, higher_is_better: bool = True) -> None:
    for rate, seeds in TUNED.items():
        for seed, (validation, test) in enumerate(seeds):
            write_point(
                root,
                f"seed={seed},learning_rate={rate}",
                run_results(test, validation),
                axes={"train.seed": str(seed), LEARNING_RATE: rate},
                tuned=[LEARNING_RATE],
                higher_is_better=higher_is_better,
            )


def test_tuned_axis_is_chosen_on_validation_not_test(tmp_path: Path):
    write_tuned_study(tmp_path)
    (row,) = report.summarize(report.load_points(tmp_path))
    assert row.chosen == {LEARNING_RATE: "1e-4"}
    assert row.mean == pytest.approx(statistics.mean([0.790, 0.800]))
    assert row.seeds == 2
    (cells,) = parse_table(report.table([row]))
    assert cells["lr chosen"] == "1e-4"
    assert cells["accuracy (mean ± std)"] == "0.795 ± 0.007"
    assert "learning_rate" not in cells  # a tuned axis is no column of its own


def test_tuned_axis_lower_is_better_picks_the_smallest(tmp_path: Path):
    write_tuned_study(tmp_path, higher_is_better=False)
    (row,) = report.summarize(report.load_points(tmp_path))
    assert row.chosen == {LEARNING_RATE: "1e-3"}  # validation mean 0.755


def test_plots_are_written(study: Path, tmp_path: Path):
    rows = report.summarize(report.load_points(study))
    paths = report.write_plots(rows, tmp_path / "plots")
    assert sorted(p.name for p in paths) == sorted(report.PLOTS)
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert len(data) > 15_000, path


def test_learning_curves_average_seeds(study: Path):
    rows = report.summarize(report.load_points(study))
    steps, losses = report.mean_curve(row_for(rows, "lora", "all"), "train", "loss")
    assert steps == [10, 20, 30, 40, 50, 60]
    assert losses[0] == pytest.approx(0.7 - 0.1 + 0.01)  # seeds 0, 1, 2 add 0, .01, .02


def test_cli_writes_report_and_plots(study: Path, capsys):
    assert report.main([str(study)]) == 0
    text = (study / "report.md").read_text()
    assert "| minilm | lora | 100 |  | 0.718 ± 0.024 | 3 |" in text
    assert "(plots/metric_vs_params.png)" in text
    assert (study / "plots" / "learning_curves.png").is_file()
    assert "0.718 ± 0.024" in capsys.readouterr().out


def test_cli_out_and_metric(study: Path, tmp_path: Path):
    out = tmp_path / "elsewhere" / "summary.md"
    assert report.main([str(study), "--out", str(out), "--metric", "loss"]) == 0
    assert "| loss (mean ± std) |" in out.read_text()
    assert (out.parent / "plots" / "metric_vs_params.png").is_file()


@pytest.mark.parametrize("make", [False, True], ids=["missing", "empty"])
def test_cli_refuses_a_root_that_is_no_study(tmp_path: Path, capsys, make: bool):
    root = tmp_path / "nowhere"
    if make:
        (root / "not_a_point").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(root)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert str(root) in error
    assert "Traceback" not in error
    with pytest.raises(report.ReportError, match="ftjax.sweep"):
        report.load_points(root)
