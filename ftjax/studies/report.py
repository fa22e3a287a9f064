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

The parts: `report_points` (a study's folders read), `report_rows` (points grouped into
rows, tuned values chosen on validation), `report_table` (the Markdown), `report_plots`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftjax.studies.report_plots import PLOTS, mean_curve, write_plots
from ftjax.studies.report_points import Point, ReportError, load_points
from ftjax.studies.report_rows import BUDGET, Row, summarize
from ftjax.studies.report_table import markdown, table

__all__ = [
    "BUDGET",
    "PLOTS",
    "Point",
    "ReportError",
    "Row",
    "load_points",
    "main",
    "markdown",
    "mean_curve",
    "summarize",
    "table",
    "write_plots",
]


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
