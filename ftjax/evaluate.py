"""Evaluate a trained workdir on its test split or on another dataset of the same task.

    python -m ftjax.evaluate --workdir runs/x [--data FILE_OR_NAME] [--step latest|best|N]

`--data` takes a dataset asset name, a local directory or file (jsonl/csv/parquet with
the config's text and label columns) or a hub id; its `test` split is used when it has
one, otherwise its only split. Prints the metrics and writes them to
WORKDIR/eval[_NAME].json.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import ml_collections
from absl import app, flags
from absl import logging as absl_logging

WORKDIR = flags.DEFINE_string("workdir", None, "a workdir written by ftjax.main", required=True)
DATA = flags.DEFINE_string("data", None, "dataset to evaluate on (default: the run's test split)")
STEP = flags.DEFINE_string("step", "latest", "checkpoint: latest, best or a step number")


def evaluate(workdir: str | Path, data: str | None = None, step: str = "latest") -> dict:
    from ftjax import checkpoints, experiment, loop, state, steps
    from ftjax.loop import to_plain

    workdir = Path(workdir)
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    exp = experiment.build(config, data_override=data)
    initial, shardings = state.initial_state(exp)
    mngr = loop.checkpoint_manager(config, workdir)
    chosen = {"latest": mngr.latest_step(), "best": mngr.best_step()}.get(step)
    chosen = int(step) if chosen is None and step.isdigit() else chosen
    if chosen is None:
        raise SystemExit(f"{workdir}: no checkpoint for --step={step}")
    restored, meta = checkpoints.restore(mngr, initial, chosen)
    if meta["frozen_hash"] != exp.frozen_hash:
        raise checkpoints.ResumeError(f"{workdir}: the frozen params differ from training's")
    metrics = steps.Steps(exp, shardings).evaluate(restored, "test")
    result = {
        "workdir": str(workdir),
        "step": chosen,
        "data": data or config.data.name,
        "test": metrics,
    }
    name = "eval.json" if data is None else f"eval_{Path(data).stem}.json"
    (workdir / name).write_text(json.dumps(result, indent=2, default=to_plain) + "\n")
    mngr.close()
    return result


def main(argv: list[str]) -> None:
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    logging.basicConfig(level=logging.WARNING)
    result = evaluate(WORKDIR.value, DATA.value, STEP.value)
    from ftjax.loop import format_metrics

    print(f"test {format_metrics(result['test'])} (step {result['step']}, data {result['data']})")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
