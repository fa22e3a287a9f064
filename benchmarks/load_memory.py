"""Peak host memory (RSS) of loading a checkpoint: today's host path against the sharded
loader, each in its own fresh process.

    python benchmarks/load_memory.py                       # SmolLM2, every row below
    python benchmarks/load_memory.py --model PATH --rows host,sharded-1

Rows: `baseline` (imports and the CPU backend, nothing loaded), `host`
(`from_pretrained(name)`: the whole checkpoint in a host dict, then on the device),
`sharded-1` (`streaming.from_pretrained(name, shardings)` onto one device) and `sharded-fsdp8`
(onto 8 simulated CPU devices, params split over fsdp). On a CPU the devices' buffers
are host memory too, so the floor of every row is one float32 copy of the model: what
the sharded loader adds above it is the tensor being placed, not a second model.
`--check` loads both ways in one process and compares every param bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROWS = {"baseline": 1, "host": 1, "sharded-1": 1, "sharded-fsdp8": 8}  # row -> devices
MESHES = {"sharded-1": {"data": 1}, "sharded-fsdp8": {"fsdp": 8}}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(model: str, row: str) -> dict:
    """Loads `model` the way `row` says, in this process; returns its figures."""
    import jax
    import numpy as np

    from ftjax.core import partition
    from ftjax.models import from_pretrained, streaming
    from ftjax.training import sharding

    jax.devices()  # the backend's own memory belongs to the baseline
    before = current_rss_mb()
    start = time.perf_counter()
    params = None
    if row == "host":
        _, params = from_pretrained(model)
    elif row in MESHES:
        mesh = sharding.make_mesh(MESHES[row])
        _, params = streaming.from_pretrained(model, sharding.model_shardings(mesh))
    leaves = partition.flatten(params or {})
    jax.block_until_ready(leaves)
    return {
        "row": row,
        "devices": jax.device_count(),
        "load_s": round(time.perf_counter() - start, 2),
        "param_mb": round(
            sum(np.prod(v.shape) * v.dtype.itemsize for v in leaves.values()) / 2**20, 1
        ),  # fmt: skip
        "largest_param_mb": round(max((v.nbytes for v in leaves.values()), default=0) / 2**20, 1),
        "rss_before_load_mb": round(before, 1),
        "rss_after_load_mb": round(current_rss_mb(), 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def check(model: str) -> int:
    """Every param loaded both ways, compared bit for bit (one device)."""
    import numpy as np

    from ftjax.core import partition
    from ftjax.models import from_pretrained, streaming
    from ftjax.training import sharding

    _, host = from_pretrained(model)
    mesh = sharding.make_mesh({"data": 1})
    _, sharded = streaming.from_pretrained(model, sharding.model_shardings(mesh))
    host, sharded = partition.flatten(host), partition.flatten(sharded)
    differ = [p for p in host if not np.array_equal(np.asarray(host[p]), np.asarray(sharded[p]))]
    print(f"{len(host)} params compared; {len(differ)} differ: {differ[:5]}")
    return 1 if differ or host.keys() != sharded.keys() else 0


def run_row(model: str, row: str) -> dict:
    """`measure` in a fresh process with the row's device count."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={ROWS[row]}")
    env = dict(os.environ, XLA_FLAGS=" ".join(flags), HF_HUB_OFFLINE="1")
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, __file__, "--model", model, "--one", row],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"row {row} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="asset name, folder or hub id")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"of {list(ROWS)}")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a row, in this process
    parser.add_argument("--check", action="store_true", help="compare both loads bit for bit")
    args = parser.parse_args()
    if args.check:
        raise SystemExit(check(args.model))
    if args.one:
        print(json.dumps(measure(args.model, args.one)))
        return
    results = [run_row(args.model, row) for row in args.rows.split(",")]
    print(json.dumps(results))
    keys = list(results[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for result in results:
        print("| " + " | ".join(str(result[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
