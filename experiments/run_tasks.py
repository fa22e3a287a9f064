"""Task kinds on real data through the CLI: each config × method, one process each.

    python experiments/run_tasks.py [--model minilm] [--runs sentiment_regression:lora,...]
                                    [--out experiments/tasks.md] [-- extra flags]

Each config's defaults (configs/*.py), each method's default learning rate, seed 0;
extra flags go to every run. Method `zero` trains nothing: the pretrained model is
evaluated as it is (`ftjax.evaluate --config`, with LoRA's identity start). Workdirs are
experiments/runs/tasks/[<model>-]<config>-<method> (no prefix for MiniLM). A run whose
workdir already holds its results is read, not rerun, so the script resumes where it
stopped. Writes a markdown table of every test metric, trainable share, median step
time, peak memory and wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = [
    f"{config}:{method}"
    for config in ("sentiment_regression", "ner", "bbc_news")
    for method in ("lora", "full")
]


def run(model: str, config: str, method: str, extra: list[str]) -> dict:
    prefix = "" if model == "minilm" else f"{model}-"
    workdir = ROOT / "experiments" / "runs" / "tasks" / f"{prefix}{config}-{method}"
    zero_shot = method == "zero"
    results = workdir / ("eval.json" if zero_shot else "results.json")
    if not results.is_file():
        start = time.perf_counter()
        trained = "lora" if zero_shot else method
        spec = f"{ROOT / 'configs' / config}.py:model={model},method={trained}"
        module = "ftjax.evaluate" if zero_shot else "ftjax.main"
        command = [sys.executable, "-m", module, "--config", spec, "--workdir", str(workdir)]
        proc = subprocess.run([*command, *extra], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            raise SystemExit(f"{config}/{method} failed:\n{proc.stderr[-3000:]}")
        summary = json.loads(results.read_text())
        summary["wall_seconds"] = time.perf_counter() - start
        results.write_text(json.dumps(summary, indent=2) + "\n")
    summary = json.loads(results.read_text())
    summary.update(config=config, method=method, model=model)
    return summary


def table(rows: list[dict]) -> str:
    lines = [
        "| config | method | test metrics | trainable % | median step ms | peak RSS MB | wall s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        metrics = ", ".join(
            f"{k} {v:.3f}" for k, v in r["test"].items() if isinstance(v, float) and k != "loss"
        )
        share = r["trainable"].split()[2] if "trainable" in r else "0"
        step_ms = 1000 * (r.get("median_step_seconds") or float("nan"))
        lines.append(
            f"| {r['config']} | {r['method']} | {metrics} | {share} | {step_ms:.0f} "
            f"| {r.get('peak_rss_mb', float('nan')):.0f} "
            f"| {r.get('wall_seconds', float('nan')):.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm", help="asset, folder or hub id")
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--out", default=str(ROOT / "experiments" / "tasks.md"))
    args, extra = parser.parse_known_args()
    # A "--" before the extra flags would make absl stop reading flags there, silently.
    extra = [flag for flag in extra if flag != "--"]
    rows = []
    for spec in args.runs.split(","):
        config, method = spec.split(":")
        rows.append(run(args.model, config, method, extra))
        print(json.dumps({k: rows[-1][k] for k in ("config", "method", "test")}), flush=True)
        Path(args.out).write_text(table(rows) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
