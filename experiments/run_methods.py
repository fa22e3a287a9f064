"""Every method of ftjax.methods through the CLI on the default task, one after another.

    python experiments/run_methods.py [--methods lora,full,...] [--out experiments/methods.md]

Same data (sentiment asset splits), batch 32, max length 64, 2 epochs, seed 0, MiniLM,
each method at its config's default learning rate; one process per method (so peak
memory is its own), workdirs under experiments/runs/. Prints and writes a markdown table
of test accuracy, median step time, examples/s and peak memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["probe", "full", "top_k", "layernorm", "bitfit", "lora", "adapter", "prefix", "prompt"]


def run(method: str, extra: list[str], root: Path) -> dict:
    """One method's results; a workdir that already holds them (a finished run, rerun
    with the same flags) is reused: the CLI would only test it again."""
    workdir = root / method
    row_file = workdir / "run_methods.json"
    if row_file.is_file() and json.loads(row_file.read_text()).get("flags") == extra:
        print(f"{method}: finished in {workdir}, reusing its results", flush=True)
        return json.loads(row_file.read_text())["row"]
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftjax.main",
            "--config",
            f"{ROOT / 'configs' / 'sentiment.py'}:method={method}",
            "--workdir",
            str(workdir),
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    result = json.loads((workdir / "results.json").read_text())
    result["wall_seconds"] = time.perf_counter() - start
    config = json.loads((workdir / "config.json").read_text())
    result["learning_rate"] = config["optimizer"]["learning_rate"]
    row_file.write_text(json.dumps({"flags": extra, "row": result}, indent=2) + "\n")
    return result


def table(rows: list[dict]) -> str:
    lines = [
        "| method | lr | trainable % | test accuracy | median step ms | examples/s | "
        "peak RSS MB | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        share = r["trainable"].split()[2]
        step = r["median_step_seconds"]
        lines.append(
            f"| {r['method']} | {r['learning_rate']:g} | {share} | {r['test']['accuracy']:.3f} "
            f"| {1000 * step:.0f} | {32 / step:.0f} | {r['peak_rss_mb']:.0f} "
            f"| {r['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=str(ROOT / "experiments" / "methods.md"))
    parser.add_argument("--root", default=str(ROOT / "experiments" / "runs"), help="workdirs")
    args, extra = parser.parse_known_args()
    rows = []
    for method in args.methods.split(","):
        rows.append(run(method, extra, Path(args.root)))
        print(json.dumps(rows[-1]), flush=True)
    text = table(rows)
    print(text)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
