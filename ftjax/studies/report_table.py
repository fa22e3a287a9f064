"""The report's Markdown: one table row per `Row`, the plots, and what is missing."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ftjax.studies.report_plots import PLOTS
from ftjax.studies.report_rows import Row, problem
from ftjax.studies.sweep import LEARNING_RATE, short_names

DASH = "–"


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
