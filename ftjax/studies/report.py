"""Summarise an ablation study that `ftjax.sweep` ran: one Markdown table and three plots.

    python -m ftjax.report ROOT [--out FILE] [--metric NAME]

ROOT holds one folder per grid point (ROOT/<point>/point.json, with results.json from
`ftjax.main` or eval.json from `ftjax.prompt`). Points that differ only in seed axes (an
axis whose last dotted part ends in "seed") and tuned axes make one row: the test metric's
mean and sample standard deviation over seeds, trainable parameters and their share,
median step time, peak memory and wall time. A tuned axis (`ftjax.sweep --tune`,
`--lr_factors`) takes the value whose points score best on the validation split (mean over
seeds); the row reports the test metric of that value's points only.

The report goes to FILE (default ROOT/report.md) and to stdout; the plots (PNG) to the
folder `plots` beside it: the metric against trainable parameters, against training
examples (when a `data.train_examples` axis exists), and learning curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ftjax.studies.sweep import ENTRIES, LEARNING_RATE, short_names

DASH = "–"
BUDGET = "data.train_examples"  # the data-budget axis; "0" and "all" mean every row
OWN_COLUMNS = ("method", "model")  # axes shown by their own columns
RESULTS_FILES = {entry: results for entry, (_, results) in ENTRIES.items()}
# --metric may name a metric other than the task's primary one, whose direction point.json
# does not record: these words mark the ones where lower is better.
LOWER_IS_BETTER_WORDS = ("loss", "perplexity", "mse", "mae", "error")
PLOTS = {  # file name: (what it shows, why it may be missing)
    "metric_vs_params.png": (
        "test metric against trainable parameters",
        "no finished point with a known trainable-parameter count",
    ),
    "metric_vs_examples.png": (
        "test metric against training examples",
        f"no finished training run on a {BUDGET} axis",
    ),
    "learning_curves.png": (
        "training loss and validation metric against step",
        "no finished training run with train or validation rows in metrics.jsonl",
    ),
}


class ReportError(Exception):
    """ROOT is not a study: a message for the person who named it."""


@dataclasses.dataclass
class Point:
    """One grid point as the sweep recorded it, with its results when it has them."""

    name: str
    directory: Path
    entry: str  # "main" (trained) or "prompt" (the model as it is)
    axes: dict[str, str]
    tuned: list[str]
    task: str
    model: str
    method: str
    metric: str
    higher_is_better: bool
    status: str
    returncode: int | None
    error: str | None
    wall_seconds: float | None
    results: dict[str, Any] | None  # results.json or eval.json; None when absent

    @property
    def results_file(self) -> str:
        return RESULTS_FILES.get(self.entry, "results.json")

    @property
    def finished(self) -> bool:
        return self.status == "finished" and self.results is not None


@dataclasses.dataclass
class Row:
    """The points that differ only in seed and tuned axes, and the ones averaged."""

    model: str
    method: str
    entry: str
    metric: str
    higher_is_better: bool
    axes: dict[str, str]  # the non-seed, non-tuned axes the row's points share
    tuned: list[str]
    chosen: dict[str, str]  # tuned axis -> the value picked on validation
    points: list[Point]  # every point of the group, whatever its status
    used: list[Point]  # the finished points averaged
    values: list[float]  # their test metric, one per seed

    @property
    def kind(self) -> str:
        """The method, or "prompting" for the model as it is (nothing trained)."""
        return "prompting" if self.entry == "prompt" else self.method

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1); None below two seeds."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def seeds(self) -> int:
        return len(self.values)

    @property
    def trainable(self) -> float | None:
        if self.entry == "prompt":
            return 0.0
        return _first(_number(_dig(p.results, "params", "trainable")) for p in self.used)

    @property
    def total(self) -> float | None:
        return _first(_number(_dig(p.results, "params", "total")) for p in self.used)

    @property
    def share(self) -> float | None:
        """Trainable parameters as a percentage of the model's."""
        if self.trainable == 0:
            return 0.0
        if self.trainable is None or not self.total:
            return None
        return 100 * self.trainable / self.total

    @property
    def step_ms(self) -> float | None:
        times = self._numbers("median_step_seconds")
        return 1000 * statistics.median(times) if times else None

    @property
    def rss_mb(self) -> float | None:
        return max(self._numbers("peak_rss_mb"), default=None)

    @property
    def wall_s(self) -> float | None:
        walls = [w for w in (_number(p.wall_seconds) for p in self.used) if w is not None]
        return statistics.mean(walls) if walls else None

    @property
    def train_examples(self) -> float | None:
        """Training examples of the budget axis; "0" / "all" as the runs counted them."""
        value = self.axes.get(BUDGET)
        if value is None:
            return None
        if value not in ("0", "all"):
            return _number_text(value)
        counts = self._numbers("data", "train", "examples")
        return statistics.mean(counts) if counts else None

    def _numbers(self, *keys: str) -> list[float]:
        found = (_number(_dig(p.results, *keys)) for p in self.used)
        return [v for v in found if v is not None]


# ---------------------------------------------------------------------------- loading


def load_points(root: str | Path) -> list[Point]:
    """Every ROOT/*/point.json, in natural order of their names (seed=2 before seed=10)."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root}: no such folder (give the --root of an ftjax.sweep study)")
    folders = sorted((p.parent for p in root.glob("*/point.json")), key=_natural)
    if not folders:
        raise ReportError(
            f"{root}: no point.json in any subfolder, so no ftjax.sweep study to report on "
            "(is it the sweep's --root? the sweep writes point.json before it runs anything)"
        )
    return [_load_point(folder) for folder in folders]


def _load_point(folder: Path) -> Point:
    record = _read_json(folder / "point.json") or {}  # written while read: "unreadable"
    entry = record.get("entry", "main")
    results = _read_json(folder / RESULTS_FILES.get(entry, "results.json"))
    return Point(
        name=record.get("name", folder.name),
        directory=folder,
        entry=entry,
        axes={str(k): str(v) for k, v in (record.get("axes") or {}).items()},
        tuned=list(record.get("tuned") or []),
        task=record.get("task", "?"),
        model=record.get("model", "?"),
        method=record.get("method", "?"),
        metric=record.get("metric", ""),
        higher_is_better=bool(record.get("higher_is_better", True)),
        status=record.get("status", "unreadable"),
        returncode=record.get("returncode"),
        error=record.get("error"),
        wall_seconds=record.get("wall_seconds"),
        results=results,
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None when the file is absent or half-written."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(point: Point) -> list[dict[str, Any]]:
    """metrics.jsonl's rows; a line cut short by a running point is skipped."""
    try:
        lines = (point.directory / "metrics.jsonl").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def metric_values(point: Point, metric: str) -> list[float]:
    """A finished point's test metric: one value, or one per demonstration seed of a
    prompting point (eval.json keeps each seed's metrics)."""
    if not point.finished:
        return []
    seeds = point.results.get("seeds")
    if point.entry == "prompt" and isinstance(seeds, list):
        found = [_number(_dig(seed, metric)) for seed in seeds]
    else:
        found = [_number(_dig(point.results, "test", metric))]
    return [v for v in found if v is not None]


def validation_value(point: Point, metric: str) -> float | None:
    """The validation metric of the state tested; None before results.json kept it."""
    return _number(_dig(point.results, "validation", metric)) if point.finished else None


# ---------------------------------------------------------------------------- summary


def is_seed_axis(axis: str) -> bool:
    """train.seed, task.shot_seed, seed: repeats of one configuration."""
    return axis.rsplit(".", 1)[-1].endswith("seed")


def summarize(points: Sequence[Point], metric: str | None = None) -> list[Row]:
    """One row per group of points differing only in seed and tuned axes, in the order
    the groups first appear; `metric` (default: each point's task's primary one)."""
    groups: dict[tuple, list[Point]] = {}
    for point in points:
        groups.setdefault(_group_key(point), []).append(point)
    return [_row(group, metric) for group in groups.values()]


def _described_axes(point: Point) -> dict[str, str]:
    """The axes that tell rows apart (not seeds, not tuned, not method / model)."""
    return {
        axis: value
        for axis, value in point.axes.items()
        if not is_seed_axis(axis) and axis not in point.tuned and axis not in OWN_COLUMNS
    }


def _group_key(point: Point) -> tuple:
    described = tuple(sorted(_described_axes(point).items()))
    return (point.entry, point.task, point.model, point.method, tuple(point.tuned), described)


def _row(points: list[Point], metric: str | None) -> Row:
    first = points[0]
    name = metric or first.metric
    higher = _higher_is_better(first, name)
    if first.tuned:
        chosen, used = choose(points, first.tuned, name, higher)
    else:
        chosen, used = {}, [p for p in points if metric_values(p, name)]
    return Row(
        model=first.model,
        method=first.method,
        entry=first.entry,
        metric=name,
        higher_is_better=higher,
        axes=_described_axes(first),
        tuned=list(first.tuned),
        chosen=chosen,
        points=points,
        used=used,
        values=[v for p in used for v in metric_values(p, name)],
    )


def _higher_is_better(point: Point, metric: str) -> bool:
    if metric == point.metric:
        return point.higher_is_better
    return not any(word in metric for word in LOWER_IS_BETTER_WORDS)


def choose(
    points: Sequence[Point], tuned: Sequence[str], metric: str, higher_is_better: bool
) -> tuple[dict[str, str], list[Point]]:
    """The tuned axes' values whose points score best on validation (mean over seeds;
    the first on a tie), and those of its points that have a test metric. Test never
    takes part in the choice. ({}, []) when no point has a validation metric."""
    scores: dict[tuple[str, ...], list[float]] = {}
    for point in points:
        value = validation_value(point, metric)
        if value is not None:
            scores.setdefault(_tuned_values(point, tuned), []).append(value)
    if not scores:
        return {}, []
    pick = max if higher_is_better else min
    best = pick(scores, key=lambda values: statistics.mean(scores[values]))
    used = [p for p in points if _tuned_values(p, tuned) == best and metric_values(p, metric)]
    return dict(zip(tuned, best, strict=True)), used


def _tuned_values(point: Point, tuned: Sequence[str]) -> tuple[str, ...]:
    return tuple(point.axes.get(axis, "") for axis in tuned)


def problem(point: Point, metric: str) -> str | None:
    """Why a point adds nothing to the table, or None when it does."""
    if point.status != "finished":
        code = f" (exit {point.returncode})" if point.returncode not in (None, 0) else ""
        error = (point.error or "").strip().splitlines()
        return point.status + code + (f": {error[-1].strip()}" if error else "")
    if point.results is None:
        return f"finished, but {point.results_file} is missing or unreadable"
    if not metric_values(point, metric):
        return f"finished, but {point.results_file} has no test {metric}"
    return None


# ---------------------------------------------------------------------------- Markdown


def markdown(rows: Sequence[Row], plots: Iterable[Path] = (), base: Path | None = None) -> str:
    """The report: the table, the plots (paths relative to `base`) and what is missing."""
    points = [p for row in rows for p in row.points]
    root = points[0].directory.parent if points else "?"
    finished = sum(p.finished for p in points)
    summary = (
        f"{finished} of {len(points)} points finished. Test metric: mean ± sample standard "
        "deviation over seeds; a tuned axis takes the value best on the validation split."
    )
    parts = [f"# Study {root}", summary, table(rows), _plots_section(plots, base)]
    return "\n\n".join([*parts, _missing_section(rows)]) + "\n"


def table(rows: Sequence[Row]) -> str:
    """The Markdown table, one line per row."""
    columns = _columns(rows)
    lines = [
        _line(header for header, _, _ in columns),
        _line("---:" if numeric else "---" for _, _, numeric in columns),
    ]
    lines += [_line(cell(row) for _, cell, _ in columns) for row in rows]
    return "\n".join(lines)


Column = tuple[str, Callable[[Row], str], bool]  # header, cell, right-aligned


def _columns(rows: Sequence[Row]) -> list[Column]:
    axes = list(dict.fromkeys(a for row in rows for a in row.axes))
    tuned = list(dict.fromkeys(a for row in rows for a in row.tuned))
    short = short_names(axes + tuned)
    metrics = list(dict.fromkeys(row.metric for row in rows))
    columns: list[Column] = [("model", lambda r: r.model, False), ("method", _method_cell, False)]
    columns += [(short[a], lambda r, a=a: r.axes.get(a, ""), False) for a in axes]
    columns += [
        (_chosen_header(a, short[a]), lambda r, a=a: _chosen_cell(r, a), False) for a in tuned
    ]
    if len(metrics) > 1:  # a study over several tasks: say which metric each row shows
        columns.append(("metric", lambda r: r.metric, False))
    shown = metrics[0] if len(metrics) == 1 else "test"
    return columns + [
        (f"{shown} (mean ± std)", _metric_cell, True),
        ("seeds", lambda r: str(r.seeds), True),
        ("trainable params", lambda r: _fmt(r.trainable, ",.0f"), True),
        ("trainable share", lambda r: _fmt(r.share, ".3g", "%"), True),
        ("median step ms", lambda r: _fmt(r.step_ms, ".1f"), True),
        ("peak RSS MB", lambda r: _fmt(r.rss_mb, ",.0f"), True),
        ("wall s", lambda r: _fmt(r.wall_s, ",.0f"), True),
    ]


def _chosen_header(axis: str, short: str) -> str:
    return "lr chosen" if axis == LEARNING_RATE else f"{short} chosen"


def _chosen_cell(row: Row, axis: str) -> str:
    if axis not in row.tuned:
        return ""
    return row.chosen.get(axis) or "none (no validation results)"


def _method_cell(row: Row) -> str:
    return row.kind if row.method in (row.kind, "none") else f"{row.kind} ({row.method})"


def _metric_cell(row: Row) -> str:
    if row.mean is None:
        return DASH
    return f"{row.mean:.3f}" if row.std is None else f"{row.mean:.3f} ± {row.std:.3f}"


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return DASH if value is None else f"{value:{spec}}{suffix}"


def _line(cells: Iterable[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _plots_section(plots: Iterable[Path], base: Path | None) -> str:
    written = {Path(p).name: Path(p) for p in plots}
    lines = ["## Plots", ""]
    for name, (shows, missing) in PLOTS.items():
        if name in written:
            path = written[name]
            shown = os.path.relpath(path, base) if base else str(path)
            lines.append(f"- [{shown}]({shown}): {shows}")
        else:
            lines.append(f"- {name}: not drawn ({missing})")
    return "\n".join(lines)


def _missing_section(rows: Sequence[Row]) -> str:
    found = [(p, problem(p, row.metric)) for row in rows for p in row.points]
    missing = [f"- `{p.name}`: {why}" for p, why in found if why]
    if not missing:
        return f"## Missing or failed points\n\nall {len(found)} points finished"
    return "\n".join(["## Missing or failed points", "", *missing])


# ---------------------------------------------------------------------------- plots

MARKERS = "osD^vPX*"
LINESTYLES = ("-", "--", ":", "-.")


def write_plots(rows: Sequence[Row], out_dir: str | Path) -> list[Path]:
    """The plots there is something to draw for, as PNGs in `out_dir`; their paths."""
    out_dir = Path(out_dir)
    plots = (plot_metric_vs_params, plot_metric_vs_examples, plot_learning_curves)
    return [path for plot in plots for path in plot(rows, out_dir)]


def plot_metric_vs_params(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """Test metric against trainable parameters (log), a panel per data budget;
    prompting (0 parameters) at a tick of its own left of the log scale."""
    drawn = [r for r in rows if r.mean is not None and r.trainable is not None]
    if not drawn:
        return []
    plt = _pyplot()
    budgets = _budgets(drawn) or [None]
    fig, axes = plt.subplots(
        1, len(budgets), figsize=(5.5 * len(budgets) + 1, 4.5), sharey=True, squeeze=False
    )
    colours, markers = _colours(rows), _markers(rows)  # of all rows: the same in every plot
    for ax, budget in zip(axes[0], budgets, strict=True):
        # rows without the budget axis (prompting) belong to every panel
        shown = [r for r in drawn if r.axes.get(BUDGET, budget) == budget]
        _draw_against_params(ax, shown, colours, markers)
        ax.set_title(_budget_title(budget), fontsize="medium")
    axes[0][0].set_ylabel(f"test {_metric_names(drawn)} (mean ± std over seeds)")
    _legend(axes[0][-1], drawn, colours, markers)
    fig.suptitle(f"Test {_metric_names(drawn)} against trainable parameters")
    return [_save(fig, out_dir / "metric_vs_params.png")]


def _draw_against_params(ax, rows: Sequence[Row], colours: dict, markers: dict) -> None:
    positive = [r.trainable for r in rows if r.trainable]
    decade = 10 ** math.floor(math.log10(min(positive))) if positive else 1.0
    zero_x = decade / 10  # 0 has no place on a log axis: a decade left of the rest
    for row in rows:
        ax.errorbar(
            row.trainable or zero_x,
            row.mean,
            yerr=row.std,
            fmt=markers[row.model],
            color=colours[_colour_key(row)],
            capsize=3,
            markersize=7,
        )
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^3, 3x10^3, ... overlap
    if any(r.trainable == 0 for r in rows):
        _zero_tick(ax, zero_x, decade, max(positive, default=decade))
    ax.set_xlabel("trainable parameters (log scale)")
    ax.grid(True, alpha=0.3)


def _zero_tick(ax, zero_x: float, decade: float, top: float) -> None:
    """A "0 (prompting)" tick, split from the decades by a dotted line."""
    from matplotlib.ticker import NullFormatter

    first, last = round(math.log10(decade)), math.ceil(math.log10(top))
    powers = range(first, max(last, first) + 1)
    ax.set_xticks(
        [zero_x, *(10.0**k for k in powers)],
        ["0\n(prompting)", *(f"$10^{{{k}}}$" for k in powers)],
    )
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(zero_x * 10**0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(zero_x / 3, 10.0 ** max(last, first) * 2)


def plot_metric_vs_examples(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """Test metric against training examples (log), a line per configuration; prompting
    rows as dashed horizontal lines."""
    trained = [r for r in rows if r.entry != "prompt" and r.mean is not None and r.train_examples]
    if not trained:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours, markers = _colours(rows), _markers(rows)
    lines: dict[str, list[Row]] = {}
    for row in trained:
        lines.setdefault(_row_label(row, without=BUDGET), []).append(row)
    for label, line in lines.items():
        line.sort(key=lambda r: r.train_examples)
        ax.errorbar(
            [r.train_examples for r in line],
            [r.mean for r in line],
            yerr=[r.std or 0.0 for r in line],
            fmt=f"{markers[line[0].model]}-",
            color=colours[_colour_key(line[0])],
            capsize=3,
            label=label,
        )
    prompting = [r for r in rows if r.entry == "prompt" and r.mean is not None]
    for i, row in enumerate(prompting):
        ax.axhline(
            row.mean,
            color=colours[_colour_key(row)] if len(prompting) == 1 else f"C{(i + 3) % 10}",
            linestyle=LINESTYLES[1 + i % 3],
            label=_row_label(row),
        )
    ax.set_xscale("log")
    ax.set_xlabel("training examples (log scale)")
    ax.set_ylabel(f"test {_metric_names(rows)} (mean ± std over seeds)")
    ax.set_title(f"Test {_metric_names(rows)} against training examples")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return [_save(fig, out_dir / "metric_vs_examples.png")]


def plot_learning_curves(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """Training loss and validation metric against step from metrics.jsonl, averaged
    over seeds; with a data budget axis, the largest budget only."""
    trained = [r for r in rows if r.entry != "prompt" and r.used]
    budgets = _budgets(trained)
    if budgets:
        trained = [r for r in trained if r.axes.get(BUDGET) == budgets[-1]]
    curves = [(r, mean_curve(r, "train", "loss"), mean_curve(r, "eval", r.metric)) for r in trained]
    curves = [c for c in curves if c[1][0] or c[2][0]]
    if not curves:
        return []
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = _colours(rows)
    styles = {m: LINESTYLES[i % 4] for i, m in enumerate(dict.fromkeys(r.model for r in trained))}
    for row, train, validation in curves:
        style = {"color": colours[_colour_key(row)], "linestyle": styles[row.model]}
        label = _row_label(row, without=BUDGET)
        left.plot(*train, label=label, **style)
        right.plot(*validation, marker=".", label=label, **style)
    metrics = _metric_names(r for r, _, _ in curves)
    for ax, ylabel in ((left, "training loss"), (right, f"validation {metrics}")):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    left.set_title("Training loss", fontsize="medium")
    right.set_title(f"Validation {metrics}", fontsize="medium")
    budget = f", {_budget_title(budgets[-1])}" if budgets else ""
    fig.suptitle(f"Learning curves (mean over seeds{budget})")
    return [_save(fig, out_dir / "learning_curves.png")]


def mean_curve(row: Row, kind: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, mean over the row's points) of `key` in metrics.jsonl rows of `kind`
    ("train" or "eval"); a step logged twice (a resumed run) counts once, the last."""
    per_step: dict[int, list[float]] = {}
    for point in row.used:
        curve = {
            int(record["step"]): _number(record.get(key))
            for record in read_metrics(point)
            if record.get("kind") == kind and _number(record.get("step")) is not None
        }
        for step, value in curve.items():
            if value is not None:
                per_step.setdefault(step, []).append(value)
    steps = sorted(per_step)
    return steps, [statistics.mean(per_step[s]) for s in steps]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _colour_key(row: Row) -> str:
    """What a colour stands for: the method and the axes other than the data budget
    (e.g. "probe layers=-2"), so rows of one method stay apart; models get markers."""
    return _row_label(row, without=BUDGET, model=False)


def _colours(rows: Iterable[Row]) -> dict[str, str]:
    keys = dict.fromkeys(_colour_key(r) for r in rows)
    return {key: f"C{i % 10}" for i, key in enumerate(keys)}


def _markers(rows: Iterable[Row]) -> dict[str, str]:
    models = dict.fromkeys(r.model for r in rows)
    return {model: MARKERS[i % len(MARKERS)] for i, model in enumerate(models)}


def _legend(ax, rows: Sequence[Row], colours: dict[str, str], markers: dict[str, str]) -> None:
    """Colours name the methods drawn; marker shapes the models, when there are several."""
    from matplotlib.lines import Line2D

    colours = {k: colours[k] for k in dict.fromkeys(_colour_key(r) for r in rows)}
    markers = {m: markers[m] for m in dict.fromkeys(r.model for r in rows)}
    handles = [
        Line2D([], [], color=c, marker="o", linestyle="", label=k) for k, c in colours.items()
    ]
    if len(markers) > 1:
        handles += [
            Line2D([], [], color="grey", marker=m, linestyle="", label=model)
            for model, m in markers.items()
        ]
    ax.legend(handles=handles, fontsize="small", loc="best")


def _budgets(rows: Iterable[Row]) -> list[str]:
    """The data budget axis's values, smallest first ("0" / "all" last)."""
    values = {r.axes[BUDGET] for r in rows if BUDGET in r.axes}
    return sorted(values, key=lambda v: (_budget_size(v), v))


def _budget_size(value: str) -> float:
    number = _number_text(value)
    return math.inf if value in ("0", "all") or number is None else number


def _budget_title(budget: str | None) -> str:
    if budget is None:
        return "all training examples"
    return "all training examples" if budget in ("0", "all") else f"{budget} training examples"


def _row_label(row: Row, without: str = "", model: bool = True) -> str:
    shown = {a: v for a, v in row.axes.items() if a != without}
    short = short_names(list(shown))
    words = [row.kind, *(f"{short[a]}={v}" for a, v in shown.items())]
    return " ".join([row.model, *words] if model else words)


def _metric_names(rows: Iterable[Row]) -> str:
    return ", ".join(dict.fromkeys(r.metric for r in rows))


# ---------------------------------------------------------------------------- helpers


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _number(value: Any) -> float | None:
    """A finite number, else None (absent, text, bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _number_text(text: str) -> float | None:
    try:
        return _number(float(text))
    except ValueError:
        return None


def _first(values: Iterable[float | None]) -> float | None:
    return next((v for v in values if v is not None), None)


def _natural(path: Path) -> list[tuple[int, Any]]:
    """Sort key: numbers in a name compare as numbers."""
    parts = re.split(r"(\d+)", path.name)
    return [(0, int(p)) if p.isdigit() else (1, p) for p in parts]


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ftjax.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("root", help="the --root of an ftjax.sweep study")
    parser.add_argument("--out", default=None, help="the report (default ROOT/report.md)")
    parser.add_argument("--metric", default=None, help="default: each task's primary metric")
    args = parser.parse_args(argv)
    try:
        points = load_points(args.root)
    except ReportError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    out = Path(args.out) if args.out else Path(args.root) / "report.md"
    rows = summarize(points, args.metric)
    try:
        plots = write_plots(rows, out.parent / "plots")
        text = markdown(rows, plots, out.parent)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as err:
        parser.exit(2, f"{parser.prog}: error: cannot write the report: {err}\n")
    print(text)
    print(f"written: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
