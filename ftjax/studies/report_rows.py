"""Points grouped into rows: points that differ in seed axes (and tuned axes) only make
one row, with mean and sample standard deviation over seeds; a tuned axis takes the
value whose points score best on validation."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

from ftjax.studies.report_points import (
    Point,
    dig,
    first_number,
    metric_values,
    number,
    number_text,
    validation_value,
)

BUDGET = "data.train_examples"  # the data-budget axis; "0" and "all" mean every row


# --metric may name a metric other than the task's primary one, whose direction point.json
# does not record: these words mark the ones where lower is better.
LOWER_IS_BETTER_WORDS = ("loss", "perplexity", "mse", "mae", "error")


OWN_COLUMNS = ("method", "model")  # axes shown by their own columns


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
        return first_number(number(dig(p.results, "params", "trainable")) for p in self.used)

    @property
    def total(self) -> float | None:
        return first_number(number(dig(p.results, "params", "total")) for p in self.used)

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
        walls = [w for w in (number(p.wall_seconds) for p in self.used) if w is not None]
        return statistics.mean(walls) if walls else None

    @property
    def train_examples(self) -> float | None:
        """Training examples of the budget axis; "0" / "all" as the runs counted them."""
        value = self.axes.get(BUDGET)
        if value is None:
            return None
        if value not in ("0", "all"):
            return number_text(value)
        counts = self._numbers("data", "train", "examples")
        return statistics.mean(counts) if counts else None

    def _numbers(self, *keys: str) -> list[float]:
        found = (number(dig(p.results, *keys)) for p in self.used)
        return [v for v in found if v is not None]


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
