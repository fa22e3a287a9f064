"""Evaluate a pretrained model as it is, by prompting, over several demonstration seeds.

    python -m ftjax.prompt --config configs/sentiment_prompt.py:model=smollm2 \\
        --workdir runs/k4 --seeds 5 --config.task.shots=4 [--config.task.calibrate=True]

Seed s draws the demonstrations with `task.shot_seed` = first seed + s; each seed's test
metrics go to WORKDIR/seed_<n>/eval.json (as `ftjax.evaluate --config` writes them), and
WORKDIR/eval.json holds them all with each metric's mean and sample standard deviation
(`<metric>_std`), in the same place a fine-tuning run's results have them. Zero-shot
(`task.shots=0`) has nothing to draw: one seed is run whatever `--seeds` says. `--data`
evaluates on another dataset's test split, as `ftjax.evaluate` does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ml_collections
import numpy as np
from absl import app, flags

from ftjax import cli
from ftjax import evaluate as evaluation  # its --config, --workdir and --data flags

SEEDS = flags.DEFINE_integer("seeds", 5, "demonstration seeds (task.shot_seed onwards)")


def over_seeds(
    config: ml_collections.ConfigDict, workdir: str | Path, seeds: int, data: str | None = None
) -> dict:
    """Test metrics of `config` untrained (on `data`'s test split if given), once per
    demonstration seed, and their mean and standard deviation; written to
    WORKDIR/eval.json."""
    from ftjax.training.loop import to_plain

    if seeds < 1:
        raise ValueError(f"--seeds={seeds}: at least 1")
    workdir = Path(workdir)
    shots = config.task.get("shots", None)
    if shots is None:
        raise ValueError(
            f"config.task.name={config.task.name!r} has no demonstrations (task.shots); "
            "use task prompting, or ftjax.evaluate --config for a single zero-shot run"
        )
    seeds = seeds if shots else 1
    first = config.task.shot_seed
    runs = []
    for s in range(seeds):
        seeded = ml_collections.ConfigDict(config.to_dict())
        seeded.task.shot_seed = first + s
        result = evaluation.evaluate_untrained(seeded, workdir / f"seed_{first + s}", data)
        runs.append({"shot_seed": first + s, **result["test"]})
    summary = {"workdir": str(workdir), "step": 0, "seeds": runs, "test": summarize(runs)}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "eval.json").write_text(json.dumps(summary, indent=2, default=to_plain) + "\n")
    return summary


def summarize(runs: list[dict]) -> dict:
    """Mean and sample standard deviation (0 for one run) of every numeric metric."""
    out = {}
    for key, value in runs[0].items():
        if key == "shot_seed" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        values = np.asarray([run[key] for run in runs], np.float64)
        out[key] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    out["seeds"] = len(runs)
    return out


def main(argv: list[str]) -> None:
    del argv
    cli.set_up_logging()
    cli.use_compilation_cache()
    if evaluation.CONFIG.value is None:
        raise app.UsageError("--config is required")
    config, workdir = evaluation.CONFIG.value, evaluation.WORKDIR.value
    summary = cli.reporting_user_errors(
        lambda: over_seeds(config, workdir, SEEDS.value, evaluation.DATA.value)
    )
    test = summary["test"]
    shown = ", ".join(
        f"{k} {test[k]:.4f} ± {test[k + '_std']:.4f}" for k in test if f"{k}_std" in test
    )
    print(f"test over {test['seeds']} seed(s): {shown}")
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
