"""A study's points as the sweep and the runs left them: point.json, results.json or
eval.json, metrics.jsonl; read leniently (a missing or broken file is a point's problem,
not the report's)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ftjax.studies.sweep import ENTRIES

RESULTS_FILES = {entry: results for entry, (_, results) in ENTRIES.items()}


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
    grid_order: list[int] = dataclasses.field(default_factory=list)  # [grid's start, index]

    @property
    def results_file(self) -> str:
        return RESULTS_FILES.get(self.entry, "results.json")

    @property
    def finished(self) -> bool:
        return self.status == "finished" and self.results is not None


def load_points(root: str | Path) -> list[Point]:
    """Every ROOT/*/point.json in grid order (the sweeps in the order they first ran,
    each grid's points as it expanded them); points recorded without it (older sweeps)
    after them, in natural order of their names (seed=2 before seed=10)."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root}: no such folder (give the --root of an ftjax.sweep study)")
    folders = sorted((p.parent for p in root.glob("*/point.json")), key=_natural)
    if not folders:
        raise ReportError(
            f"{root}: no point.json in any subfolder, so no ftjax.sweep study to report on "
            "(is it the sweep's --root? the sweep writes point.json before it runs anything)"
        )
    points = [_load_point(folder) for folder in folders]
    return sorted(points, key=lambda p: (0, p.grid_order) if p.grid_order else (1, []))


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
        grid_order=_grid_order(record.get("grid_order")),
    )


def _grid_order(value: Any) -> list[int]:
    """[when its grid first ran, its place in it]; [] when absent or unreadable."""
    try:
        return [int(x) for x in value or []]
    except (TypeError, ValueError):
        return []


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
        found = [number(dig(seed, metric)) for seed in seeds]
    else:
        found = [number(dig(point.results, "test", metric))]
    return [v for v in found if v is not None]


def validation_value(point: Point, metric: str) -> float | None:
    """The validation metric of the state tested; None before results.json kept it."""
    return number(dig(point.results, "validation", metric)) if point.finished else None


def dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def number(value: Any) -> float | None:
    """A finite number, else None (absent, text, bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def number_text(text: str) -> float | None:
    try:
        return number(float(text))
    except ValueError:
        return None


def first_number(values: Iterable[float | None]) -> float | None:
    return next((v for v in values if v is not None), None)


def _natural(path: Path) -> list[tuple[int, Any]]:
    """Sort key: numbers in a name compare as numbers."""
    parts = re.split(r"(\d+)", path.name)
    return [(0, int(p)) if p.isdigit() else (1, p) for p in parts]
