"""Wall time of evaluating one split, compile apart: the number a change to the eval
path (prompting's label scoring, generation) is judged by.

    python benchmarks/eval_speed.py [--config configs/sentiment_prompt.py:model=smollm2]
        [--set task.shots=4 --set data.test_examples=256] [--repeats 2]

Builds the experiment of `--config` (`--set field=value` overrides, parsed as the
config's own field types), then evaluates the test split `--repeats` + 1 times: the first
includes compiling the eval step for each batch shape, the others are warm. Prints one
JSON line: build seconds, first (cold) seconds, the median warm seconds, rows/s and the
split's metrics (so a faster path is seen to score the same). To compare two commits,
run it in a worktree of each, alternating, and divide the medians.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT = ("configs/sentiment_prompt.py:model=smollm2", ["task.shots=4", "data.test_examples=256"])


def load_config(spec: str, overrides: list[str]):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("bench_config", ROOT / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    for item in overrides:
        name, _, text = item.partition("=")
        node, *_, leaf = [config, *name.split(".")]
        for part in name.split(".")[:-1]:
            node = node[part]
        current = node[leaf]
        node[leaf] = type(current)(json.loads(text) if not isinstance(current, str) else text)
    return config


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=DEFAULT[0])
    parser.add_argument("--set", action="append", default=None, help="field=value")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    overrides = DEFAULT[1] if args.set is None and args.config == DEFAULT[0] else args.set or []

    from ftjax.training.experiment import build
    from ftjax.training.state import initial_state
    from ftjax.training.steps import Steps

    tic = time.perf_counter()
    config = load_config(args.config, overrides)
    exp = build(config, data_override=config.data.name)  # evaluation only: the test split
    state, shardings = initial_state(exp)
    steps = Steps(exp, shardings)
    built = time.perf_counter() - tic
    times, metrics = [], {}
    for _ in range(args.repeats + 1):
        tic = time.perf_counter()
        metrics = steps.evaluate(state, "test")
        times.append(time.perf_counter() - tic)
    warm = statistics.median(times[1:]) if args.repeats else times[0]
    rows = len(exp.loader.examples("test"))
    report = {
        "config": args.config,
        "set": overrides,
        "rows": rows,
        "build_seconds": round(built, 2),
        "cold_seconds": round(times[0], 2),
        "warm_seconds": round(warm, 3),
        "rows_per_second": round(rows / warm, 1),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
