"""Evaluate a trained workdir on its test split or on another dataset of the same task;
or, given a config, the pretrained model as it is (zero-shot).

    python -m ftjax.evaluate --workdir runs/x [--data FILE_OR_NAME] [--step latest|best|N]
    python -m ftjax.evaluate --config configs/headlines.py:model=smollm2 --workdir runs/zero

`--data` takes a dataset asset name, a local directory or file (jsonl/csv/parquet with
the config's text and label columns) or a hub id; its `test` split is used when it has
one, otherwise its only split. With `--config` nothing is trained or restored: the
checkpoint's weights plus the method's fresh parameters are evaluated (LoRA starts as
the identity, so method=lora is the pretrained model itself), and only the test split is
read. Prints the metrics and writes them to WORKDIR/eval[_NAME].json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from ftjax import cli

WORKDIR = flags.DEFINE_string("workdir", None, "a workdir written by ftjax.main", required=True)
CONFIG = config_flags.DEFINE_config_file(
    "config", None, "evaluate this config's model untrained (zero-shot), not a checkpoint"
)
DATA = flags.DEFINE_string("data", None, "dataset to evaluate on (default: the run's test split)")
STEP = flags.DEFINE_string("step", "latest", "checkpoint: latest, best or a step number")


def evaluate(workdir: str | Path, data: str | None = None, step: str = "latest") -> dict:
    from ftjax.training import steps
    from ftjax.training.config import matmul_precision
    from ftjax.training.loop import restore_run, run_config

    workdir = Path(workdir)
    with matmul_precision(run_config(workdir)):  # as the run computed its results
        exp, restored, shardings, chosen = restore_run(workdir, step, data)
        metrics = steps.Steps(exp, shardings).evaluate(restored, "test")
    return _write(workdir, data, {"step": chosen, "data": data or exp.config.data.name}, metrics)


def evaluate_untrained(
    config: ml_collections.ConfigDict, workdir: str | Path, data: str | None = None
) -> dict:
    """Test metrics of `config`'s model with nothing trained (step 0), written to
    WORKDIR/eval[_NAME].json beside the config."""
    from ftjax.training import experiment, loop, state, steps
    from ftjax.training.config import matmul_precision

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with matmul_precision(config):
        exp = experiment.build(config, data_override=data or config.data.name)
        loop.save_config(config, workdir)
        initial, shardings = state.initial_state(exp)
        metrics = steps.Steps(exp, shardings).evaluate(initial, "test")
    return _write(workdir, data, {"step": 0, "data": data or config.data.name}, metrics)


def _write(workdir: Path, data: str | None, where: dict, metrics: dict) -> dict:
    from ftjax.training.loop import to_plain

    result = {"workdir": str(workdir), **where, "test": metrics}
    name = "eval.json" if data is None else f"eval_{Path(data).stem}.json"
    (workdir / name).write_text(json.dumps(result, indent=2, default=to_plain) + "\n")
    return result


def main(argv: list[str]) -> None:
    del argv
    cli.set_up_logging()
    cli.use_compilation_cache()
    if CONFIG.value is not None:
        result = cli.reporting_user_errors(
            lambda: evaluate_untrained(CONFIG.value, WORKDIR.value, DATA.value)
        )
    else:
        result = cli.reporting_user_errors(lambda: evaluate(WORKDIR.value, DATA.value, STEP.value))
    from ftjax.training.loop import format_metrics

    print(f"test {format_metrics(result['test'])} (step {result['step']}, data {result['data']})")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
