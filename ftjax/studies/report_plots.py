"""The report's plots (PNG, Agg backend): the metric against trainable parameters and
against training examples, and learning curves."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path

from ftjax.studies.report_points import number, number_text, read_metrics
from ftjax.studies.report_rows import BUDGET, Row
from ftjax.studies.sweep import short_names

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
            int(record["step"]): number(record.get(key))
            for record in read_metrics(point)
            if record.get("kind") == kind and number(record.get("step")) is not None
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
    number = number_text(value)
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
