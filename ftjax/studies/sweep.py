"""Run a grid of experiments: one workdir per point, one after another, or one launch line
per point for a cluster.

    python -m ftjax.sweep --config configs/sentiment.py:model=minilm --root runs/study \\
        --grid method=probe,lora,full --grid train.seed=0,1,2 \\
        --grid data.train_examples=100,1000,all [--config.train.epochs=3] [--print]

An axis without a dot is an argument of the config file (`configs/X.py:method=lora`); a
dotted one is a config field (`--config.train.seed=1`). Values are split at commas outside
brackets; `all` means 0 for the `data.*_examples` fields. `--config.*` flags apply to every
point; other unknown flags go to the entry point (e.g. `--seeds=1` for `--entry prompt`).
Every point's config is loaded and checked before anything runs.

`--lr_factors 0.3,1,3` runs each point at its method's default learning rate times each
factor, and `--tune AXIS` marks a grid axis the same way: `ftjax.report` picks the value
of a tuned axis on the validation split and reports the test metric of that choice.

ROOT/<point>/point.json records the point (axes, command, status: pending, running,
finished, failed or stopped; exit code, the error's last lines, wall seconds) beside the
run's own files (config.json, results.json or eval.json, metrics.jsonl, checkpoints) and
log.txt (the run's output). A rerun skips finished points and resumes the others from
their checkpoints; a failed point is recorded and the sweep goes on. SIGTERM / Ctrl-C
stop the running point at its next step with a checkpoint, and the sweep with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from absl import flags
from ml_collections import config_flags

from ftjax.core.errors import ConfigError
from ftjax.studies.warm_process import WarmRunner

ENTRIES = {"main": ("ftjax.main", "results.json"), "prompt": ("ftjax.prompt", "eval.json")}
ALL_MEANS_ZERO = ("data.train_examples", "data.eval_examples", "data.test_examples")
LEARNING_RATE = "optimizer.learning_rate"


@dataclasses.dataclass
class Point:
    """One grid point: its axis values, and what they set."""

    axes: dict[str, str]
    spec: str  # config file and its arguments, "configs/X.py:method=lora"
    overrides: list[str]  # "--config.section.field=value"
    tuned: list[str]
    name: str = ""

    def with_value(self, axis: str, value: str) -> Point:
        """This point with `axis` set: a dotted axis as a `--config.` flag, another as
        an argument of the config file."""
        axes = {**self.axes, axis: value}
        if "." in axis:
            return dataclasses.replace(
                self, axes=axes, overrides=[*self.overrides, override(axis, value)]
            )
        from ftjax.training.config import parse_arg  # here: ftjax.report imports this module

        path, _, arg = self.spec.partition(":")
        args = ",".join(f"{k}={v}" for k, v in {**parse_arg(arg), axis: value}.items())
        return dataclasses.replace(self, axes=axes, spec=f"{path}:{args}")


def split_values(text: str) -> list[str]:
    """ "a,b,(1,2)" -> ["a", "b", "(1,2)"]: commas inside brackets or quotes stay."""
    values, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current.strip())
            current = ""
            continue
        current += char
    values.append(current.strip())
    return values


def parse_axis(text: str) -> tuple[str, list[str]]:
    """ "train.seed=0,1,2" -> ("train.seed", ["0", "1", "2"])."""
    name, equals, values = text.partition("=")
    name = name.strip().removeprefix("config.")
    if not equals or not name or not values.strip():
        raise ConfigError(f"--grid {text!r}: write --grid field=value1,value2,...")
    parsed = split_values(values)
    if "" in parsed or len(set(parsed)) < len(parsed):
        raise ConfigError(f"--grid {text!r}: empty or repeated values")
    return name, parsed


def expand(spec: str, axes: list[tuple[str, list[str]]], fixed: list[str]) -> list[Point]:
    """Every combination of the axes' values (the last axis varies fastest)."""
    points = [Point({}, spec, list(fixed), [])]
    for axis, values in axes:
        points = [point.with_value(axis, value) for point in points for value in values]
    return points


def override(axis: str, value: str) -> str:
    if axis in ALL_MEANS_ZERO and value == "all":
        value = "0"
    return f"--config.{axis}={value}"


def load_config(point: Point):
    """The config `ftjax.main` would run for this point, parsed by the same flags."""
    argv = ["ftjax.sweep", f"--config={point.spec}", *point.overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


def checked_config(point: Point):
    """The point's config, validated as a run validates it before compiling anything."""
    from ftjax.data.asset_catalog import AssetError
    from ftjax.training.checkpoints import ResumeError
    from ftjax.training.config import validate

    try:
        config = load_config(point)
        validate(config, 1)
        check_method(config)
    except (ConfigError, flags.Error, KeyError, TypeError, ValueError, AttributeError,
            AssetError, ResumeError) as err:  # fmt: skip
        shown = " ".join([point.spec, *point.overrides])
        raise ConfigError(f"grid point {point.name or shown}: {reason(err)}") from err
    return config


def check_method(config) -> None:
    """The method and the task against the model's config.json (not its weights), as the
    run checks them before compiling: the method's options, its patterns (each must name
    a parameter), the task on the family (packing included) and the sequence lengths
    against the position table. A GGUF checkpoint is read whole to learn its config: its
    point checks these when it runs. Prompting draws its demonstrations from the data,
    so its lengths are checked by the run."""
    from ftjax import methods, tasks
    from ftjax.models import hub
    from ftjax.training.config import method_options
    from ftjax.training.experiment import check_positions

    directory = _checkpoint_dir(config.model.name)
    if not (directory / "config.json").is_file():
        return
    family, model_config = hub.read_config(directory)
    task = tasks.make(config, _tokenizer(config.model.name))
    model = task.prepare_model(family.module(model_config))
    method = methods.resolve(config.method.name, model, method_options(config.method))
    model = type(model)(dataclasses.replace(model.config, peft=method.peft))
    methods.trainable_mask(method, hub.abstract_params(model, family), training=False)
    task.attach(model)
    if config.task.name != "prompting":
        check_positions(config, task)


@functools.cache
def _tokenizer(name: str):
    from ftjax.models import load_tokenizer

    return load_tokenizer(name)


@functools.cache
def _checkpoint_dir(name: str) -> Path:
    from ftjax.models import hub

    return hub.resolve_checkpoint_dir(name)


def reason(err: Exception) -> str:
    """An error's message on one line: a config file's traceback (absl quotes it whole)
    gives its last line, a KeyError its text without quotes."""
    while err.args and isinstance(err.args[0], Exception):  # ml_collections wraps KeyErrors
        err = err.args[0]
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if "Traceback" in text else " ".join(lines)


def with_learning_rates(points: list[Point], factors: list[float]) -> list[Point]:
    """Each point at its config's learning rate times each factor, a tuned axis."""
    out = []
    for point in points:
        rate = checked_config(point).optimizer.learning_rate
        for factor in factors:
            value = f"{rate * factor:.3g}"
            tuned = dataclasses.replace(point, tuned=[*point.tuned, LEARNING_RATE])
            out.append(tuned.with_value(LEARNING_RATE, value))
    return out


def name_points(points: list[Point]) -> None:
    """Readable, unique workdir names: "method=lora,seed=0,train_examples=100"; an axis
    goes by its last dotted part unless two axes share it, a path by its last part."""
    short = short_names(list(dict.fromkeys(a for p in points for a in p.axes)))
    for point in points:
        parts = [f"{short[a]}={Path(v).name or v}" for a, v in point.axes.items()]  # a path
        point.name = re.sub(r"[^\w.,=+-]", "_", ",".join(parts)) or "point"
    names = [p.name for p in points]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"grid points share a name: {repeated}")


def short_names(axes: list[str]) -> dict[str, str]:
    """Each axis by its last dotted part, unless two axes share it."""
    lasts = [axis.rsplit(".", 1)[-1] for axis in axes]
    return {
        axis: last if lasts.count(last) == 1 else axis
        for axis, last in zip(axes, lasts, strict=True)
    }


def describe(point: Point, config, entry: str, command: list[str]) -> dict[str, Any]:
    """point.json's fields that follow from the grid (the status fields come later)."""
    from ftjax import tasks

    task = tasks.task_class(config.task.name)
    metric = task.metrics[0]
    return {
        "name": point.name,
        "entry": entry,
        "axes": point.axes,
        "tuned": point.tuned,
        "task": config.task.name,
        "model": config.model.name,
        "method": config.method.name,
        "metric": metric,
        "higher_is_better": metric not in task.lower_is_better,
        "command": command,
    }


class Sweep:
    """The points of one grid under ROOT and what running them needs."""

    def __init__(
        self, root: Path, entry: str, points: list[Point], passthrough: list[str],
        runner: WarmRunner | None = None,
    ):  # fmt: skip
        self.root, self.entry, self.points, self.passthrough = root, entry, points, passthrough
        self.runner = runner  # made at the first point run without one
        self.stop_signal: int | None = None
        self.child = None  # the running point's process

    def workdir(self, point: Point) -> Path:
        return self.root / point.name

    def arguments(self, point: Point) -> list[str]:
        """The entry point's flags for this point."""
        return [
            "--config", point.spec, "--workdir", str(self.workdir(point)),
            *point.overrides, *self.passthrough,
        ]  # fmt: skip

    def command(self, point: Point) -> list[str]:
        """What the point runs, as a shell would run it (recorded in point.json)."""
        return [sys.executable, "-m", ENTRIES[self.entry][0], *self.arguments(point)]

    def read_record(self, point: Point) -> dict[str, Any]:
        """The point's point.json, {} before its first."""
        path = self.workdir(point) / "point.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def record(self, point: Point, **fields: Any) -> dict[str, Any]:
        """point.json updated with `fields`; the whole record."""
        record = {**self.read_record(point), **fields}
        path = self.workdir(point) / "point.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        return record

    def finished(self, point: Point) -> bool:
        """Finished by this same command: its results are there."""
        record = self.read_record(point)
        done = (self.workdir(point) / ENTRIES[self.entry][1]).is_file()
        same = record.get("command", [None])[1:] == self.command(point)[1:]  # any python
        return done and record.get("status") == "finished" and same

    def prepare(self, configs: list) -> None:
        """point.json for every point; finished ones keep their record (and their wall
        seconds are added up over resumes)."""
        started = time.time_ns()
        for index, (point, config) in enumerate(zip(self.points, configs, strict=True)):
            if self.finished(point):
                continue
            earlier = self.read_record(point)
            self.record(
                point, **describe(point, config, self.entry, self.command(point)),
                status="pending", returncode=None, error=None,
                wall_seconds=earlier.get("wall_seconds"),
                # (when its grid first ran, its place in the grid): the report's row order
                grid_order=earlier.get("grid_order") or [started, index],
            )  # fmt: skip

    def run_point(self, point: Point) -> dict[str, Any]:
        """Runs (or resumes) one point; its record, with status finished, failed or
        stopped."""
        workdir = self.workdir(point)
        log = workdir / "log.txt"
        earlier = self.record(point, status="running", returncode=None, error=None)
        tic = time.perf_counter()
        with open(log, "a") as out:
            out.write(f"$ {shlex.join(self.command(point))}\n")
            out.flush()
            start_offset = out.tell()
        # the command recorded, run in a process forked from a warm one
        self.runner = self.runner or WarmRunner(ENTRIES[self.entry][0])
        self.child = self.runner.start(self.arguments(point), log)
        self.child.join()
        code, self.child = self.child.exitcode, None
        wall = time.perf_counter() - tic + (earlier.get("wall_seconds") or 0.0)
        done = (workdir / ENTRIES[self.entry][1]).is_file()
        if code == 0 and done and not self.stop_signal:
            status, error = "finished", None
        elif self.stop_signal or code == 0:  # exit 0 without results: stopped by a signal
            status, error = "stopped", None
        else:
            status, error = "failed", last_lines(log, start_offset)
        return self.record(point, status=status, returncode=code, error=error, wall_seconds=wall)

    def forward_signal(self, signum: int, frame) -> None:
        """The running point saves a checkpoint and exits; the sweep stops after it."""
        self.stop_signal = signum
        if self.child is not None and self.child.is_alive():
            os.kill(self.child.pid, signum)


def last_lines(log: Path, offset: int, lines: int = 15) -> str:
    with open(log, errors="replace") as f:
        f.seek(offset)
        return "\n".join(f.read().splitlines()[-lines:])


def build_points(args: argparse.Namespace, fixed: list[str]) -> tuple[list[Point], list]:
    """The grid's points, named and with their checked configs; any bad value raises."""
    axes = [parse_axis(text) for text in args.grid]
    names = [a for a, _ in axes]
    repeated = sorted({a for a in names if names.count(a) > 1})
    if repeated:
        raise ConfigError(f"--grid names {repeated} more than once")
    unknown = sorted(set(args.tune) - set(names))
    if unknown:
        raise ConfigError(f"--tune {unknown}: not a --grid axis ({', '.join(names) or 'none'})")
    points = expand(args.config, axes, fixed)
    for point in points:
        point.tuned = [a for a in args.tune if a in point.axes]
    if args.lr_factors:
        if LEARNING_RATE in names:
            raise ConfigError(f"--lr_factors and --grid {LEARNING_RATE}: choose one")
        factors = [float(f) for f in split_values(args.lr_factors)]
        points = with_learning_rates(points, factors)
    name_points(points)
    return points, [checked_config(point) for point in points]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str], list[str]]:
    """(options, --config.* overrides for every point, flags for the entry point)."""
    parser = argparse.ArgumentParser(
        prog="python -m ftjax.sweep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", required=True, help="config file[:arguments]")
    parser.add_argument("--root", required=True, help="one workdir per point under it")
    parser.add_argument("--grid", action="append", default=[], help="field=value1,value2,...")
    parser.add_argument("--tune", action="append", default=[], help="axis chosen on validation")
    parser.add_argument("--lr_factors", default="", help="e.g. 0.3,1,3 times the default rate")
    parser.add_argument("--entry", choices=sorted(ENTRIES), default="main")
    parser.add_argument("--print", action="store_true", help="print launch lines, run nothing")
    parser.add_argument("--point", default="", help="run this point only (a printed line)")
    args, rest = parser.parse_known_args(argv)
    fixed = [a for a in rest if a.startswith("--config.")]
    return args, fixed, [a for a in rest if not a.startswith("--config.")]


def launch_lines(argv: list[str], points: list[Point]) -> list[str]:
    """One command per point: this sweep restricted to it, so point.json stays current."""
    kept = [a for a in argv if a != "--print"]
    return [
        shlex.join([sys.executable, "-m", "ftjax.sweep", *kept, "--point", p.name]) for p in points
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, fixed, passthrough = parse_args(argv)
    # started first: its server imports what the points run while the grid is checked
    runner = None if args.print else WarmRunner(ENTRIES[args.entry][0])
    try:
        points, configs = build_points(args, fixed)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.point:
        chosen = [i for i, p in enumerate(points) if p.name == args.point]
        if not chosen:
            print(f"--point {args.point!r} is not a point of this grid", file=sys.stderr)
            return 2
        points, configs = [points[chosen[0]]], [configs[chosen[0]]]
    sweep = Sweep(Path(args.root), args.entry, points, passthrough, runner)
    sweep.prepare(configs)
    if args.print:
        print("\n".join(launch_lines(argv, points)))
        return 0
    return run_all(sweep)


def run_all(sweep: Sweep) -> int:
    """Runs every unfinished point; prints what finished, was skipped or failed."""
    previous = {s: signal.signal(s, sweep.forward_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    outcome: dict[str, list[str]] = {"finished": [], "skipped": [], "failed": [], "stopped": []}
    try:
        for i, point in enumerate(sweep.points, 1):
            if sweep.stop_signal:
                break
            if sweep.finished(point):
                outcome["skipped"].append(point.name)
                continue
            print(f"[{i}/{len(sweep.points)}] {point.name}", flush=True)
            record = sweep.run_point(point)
            outcome[record["status"]].append(point.name)
            if record["status"] == "failed":
                print(f"  failed: {(record['error'] or '').splitlines()[-1:]}", flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(
        f"{len(outcome['finished'])} finished, {len(outcome['skipped'])} already finished, "
        f"{len(outcome['failed'])} failed" + "".join(f"\n  failed: {n}" for n in outcome["failed"])
    )
    if sweep.stop_signal:
        print("stopped by a signal: rerun the same command to resume", flush=True)
        return 1
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
