"""Task kinds on real data through the CLI: each config × method, one process each.

    python experiments/run_tasks.py [--runs sentiment_regression:lora,ner:full,...]
                                    [--out experiments/tasks.md] [-- extra flags]

MiniLM, each config's defaults (configs/*.py) and each method's default learning rate,
seed 0; workdirs under experiments/runs/tasks/<config>-<method>. A run whose workdir
already holds results.json is read, not rerun, so the script resumes where it stopped.
Writes a markdown table of every test metric, trainable share, median step time, peak
memory and wall time.
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


def run(config: str, method: str, extra: list[str]) -> dict:
    workdir = ROOT / "experiments" / "runs" / "tasks" / f"{config}-{method}"
    results = workdir / "results.json"
    if not results.is_file():
        start = time.perf_counter()
        command = [
            sys.executable, "-m", "ftjax.main",
            "--config", f"{ROOT / 'configs' / config}.py:model=minilm,method={method}",
            "--workdir", str(workdir), *extra,
        ]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            raise SystemExit(f"{config}/{method} failed:\n{proc.stderr[-3000:]}")
        summary = json.loads(results.read_text())
        summary["wall_seconds"] = time.perf_counter() - start
        results.write_text(json.dumps(summary, indent=2) + "\n")
    summary = json.loads(results.read_text())
    summary["config"] = config
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
        share = r["trainable"].split()[2]
        lines.append(
            f"| {r['config']} | {r['method']} | {metrics} | {share} "
            f"| {1000 * r['median_step_seconds']:.0f} | {r['peak_rss_mb']:.0f} "
            f"| {r.get('wall_seconds', float('nan')):.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--out", default=str(ROOT / "experiments" / "tasks.md"))
    args, extra = parser.parse_known_args()
    rows = []
    for spec in args.runs.split(","):
        config, method = spec.split(":")
        rows.append(run(config, method, extra))
        print(json.dumps({k: rows[-1][k] for k in ("config", "method", "test")}), flush=True)
        Path(args.out).write_text(table(rows) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
