"""The default run against transformers + PEFT, time to accuracy, alternating.

    python benchmarks/time_to_accuracy.py [--pairs 5] [--out FILE.json]
        [--compilation-cache] [--torch-flags "--model DIR ..."] [-- ftjax.main flags]

Each pair runs `python -m ftjax.main` (a fresh workdir: the whole process timed,
imports, data, compilation, validations and the test included; every step compiled
anew, as in a config's first run, unless --compilation-cache lets runs after the first
load them from ftjax's on-disk cache), then
`benchmarks/torch_reference.py --methods lora` (its own count, which leaves out its
imports, and the whole process beside it), one process at a time, the order swapped
every pair so neither side always runs on a warmer machine. Prints one row per run and
the ratios: pair by pair (neighbouring runs), and median against median.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_ftjax(workdir: Path, flags: list[str], compilation_cache: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["FTJAX_COMPILATION_CACHE"] = "1" if compilation_cache else "0"
    tic = time.perf_counter()
    command = [sys.executable, "-m", "ftjax.main", "--workdir", str(workdir), *flags]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - tic
    results = json.loads((workdir / "results.json").read_text())
    return {
        "side": "ftjax",
        "seconds": wall,
        "process_seconds": wall,
        "test_accuracy": results["test"]["accuracy"],
        "median_step_s": results["median_step_seconds"],
    }


def run_torch(out: Path, flags: list[str]) -> dict:
    tic = time.perf_counter()
    command = [sys.executable, "benchmarks/torch_reference.py", "--methods", "lora", *flags]
    subprocess.run([*command, "--out", str(out)], cwd=ROOT, check=True, capture_output=True)
    wall = time.perf_counter() - tic
    (row,) = json.loads(out.read_text())["rows"]
    return {
        "side": "torch",
        "seconds": row["wall_s"],
        "process_seconds": wall,
        "test_accuracy": row["test_accuracy"],
        "median_step_s": row["median_step_ms"] / 1000,
    }


def sides(pairs: int) -> list[str]:
    """The run order: ftjax first in even pairs, PyTorch first in odd ones, so neither side
    always runs on a machine the other just warmed (or heated)."""
    return [
        side for pair in range(pairs) for side in (("ftjax", "torch"), ("torch", "ftjax"))[pair % 2]
    ]


def summary(runs: list[dict]) -> list[str]:
    by_side = {s: [r["seconds"] for r in runs if r["side"] == s] for s in ("ftjax", "torch")}
    pairs = []
    for first, second in zip(runs[0::2], runs[1::2], strict=False):
        ftjax, torch = sorted((first, second), key=lambda r: r["side"])  # "ftjax" < "torch"
        pairs.append(torch["seconds"] / ftjax["seconds"])
    median = statistics.median(by_side["torch"]) / statistics.median(by_side["ftjax"])
    return [
        "pair ratios (torch s / ftjax s): " + ", ".join(f"{p:.2f}x" for p in pairs),
        f"median pair {statistics.median(pairs):.2f}x, worst pair {min(pairs):.2f}x, "
        f"median against median {median:.2f}x",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--out", help="also write the runs here as JSON")
    parser.add_argument(
        "--compilation-cache", action="store_true", help="ftjax runs load compiled steps"
    )
    parser.add_argument("--torch-flags", default="", help="for torch_reference.py, one string")
    parser.add_argument("flags", nargs="*", help="after --: flags for ftjax.main")
    args = parser.parse_args(argv)
    runs = []
    print("| run | side | seconds | process seconds | test accuracy | median step s |")
    print("|---:|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        for number, side in enumerate(sides(args.pairs), 1):
            if side == "ftjax":
                run = run_ftjax(
                    Path(scratch) / f"ftjax{number}", args.flags, args.compilation_cache
                )
            else:
                run = run_torch(
                    Path(scratch) / f"torch{number}.json", shlex.split(args.torch_flags)
                )
            runs.append(run)
            print(
                f"| {number} | {side} | {run['seconds']:.0f} | "
                f"{run['process_seconds']:.0f} | {run['test_accuracy']:.4f} | "
                f"{run['median_step_s']:.3f} |",
                flush=True,
            )
    for line in summary(runs):
        print(line)
    if args.out:
        Path(args.out).write_text(json.dumps({"runs": runs, "cpus": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
