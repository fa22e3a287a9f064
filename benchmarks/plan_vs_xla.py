"""The planner (`python -m ftjax.plan`) against XLA on large shapes, nothing materialised.

Each case builds a run's train step from a bundled config.json (Llama-2-7B, BERT-large,
T5-v1.1-XL shapes), compiles it ahead of time on abstract params over a simulated mesh
of CPU devices (its own subprocess, XLA_FLAGS=--xla_force_host_platform_device_count=N)
and compares the planner's per-device total (target "cpu", the backend compiled here)
with XLA's `memory_analysis()`; it also records the planner's TPU / GPU totals, which
drop what only XLA:CPU holds (f32 copies of bf16 weights and activations).

    python benchmarks/plan_vs_xla.py                  # every case, one at a time
    python benchmarks/plan_vs_xla.py --cases llama-lora-8 --json out.json
    python benchmarks/plan_vs_xla.py --case llama-lora-8   # one case, in this process

The batch is 8 rows per 8 devices (one row per device) at each model's length, bf16
compute, remat "full", scanned layers; LoRA stores its frozen backbone in bf16. The
"no-remat" cases compile the 7B steps without remat, for the temp bytes remat saves; the
"unrolled" ones without scan, for its compile time and memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30

# (config file, model, length fields) per model shape
MODELS = {
    "llama": ("lm.py", "llama2-7b-shape", {"max_length": 2048}),
    "bert": ("sentiment.py", "bert-large-uncased-shape", {"max_length": 512}),
    "t5": ("seq2seq.py", "t5-v1_1-xl-shape", {"max_length": 512, "max_target_length": 128}),
}
COMMON = {"dtype": "bfloat16", "remat": "full", "scan_layers": True}


def case_list() -> dict[str, dict]:
    cases = {}
    for model in MODELS:
        for method in ("lora", "full"):
            for devices in (8, 64):
                cases[f"{model}-{method}-{devices}"] = {
                    "model": model,
                    "method": method,
                    "devices": devices,
                    "fields": dict(COMMON),
                }
    for method in ("lora", "full"):  # remat's effect on the 7B step
        cases[f"llama-{method}-8-no-remat"] = {
            "model": "llama",
            "method": method,
            "devices": 8,
            "fields": {**COMMON, "remat": "none"},
        }
        cases[f"llama-{method}-8-unrolled"] = {  # scan's effect: the 32 layers unrolled
            "model": "llama",
            "method": method,
            "devices": 8,
            "fields": {**COMMON, "scan_layers": False},
        }
    return cases


CASES = case_list()


def config_for(case: dict):
    """The experiment config of a case (as `python -m ftjax.plan` would build it)."""
    import importlib.util

    file, model, lengths = MODELS[case["model"]]
    spec = importlib.util.spec_from_file_location("config", ROOT / "configs" / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(f"model={model},method={case['method']}")
    config.data.update(batch_size=case["devices"], **lengths)
    config.mesh.update(data=1, fsdp=case["devices"], tensor=1)
    fields = dict(case["fields"])
    if case["method"] != "full":
        fields["param_dtype"] = "bfloat16"  # a frozen backbone stored in bf16
    for name, value in fields.items():
        if name not in config.model:
            raise KeyError(f"config.model.{name}: not in this version of ftjax")
        config.model[name] = value
    return config


def run_case(name: str) -> dict:
    """One case in this process (its XLA_FLAGS must give the devices)."""
    import jax

    from ftjax.planning import abstract, memory

    case = CASES[name]
    config = config_for(case)
    tic = time.perf_counter()
    setup = abstract.build(config, devices=jax.devices("cpu")[: case["devices"]])
    plans = {target: memory.estimate(setup, memory.TARGETS[target]) for target in ("cpu", "tpu")}
    compiled = abstract.compile_step(setup)
    seconds = time.perf_counter() - tic
    xla = abstract.xla_memory(compiled)
    return {
        "case": name,
        **{k: v for k, v in case.items() if k != "fields"},
        **case["fields"],
        "params": sum(math.prod(v.shape) for v in {**setup.trainable, **setup.frozen}.values()),
        "trainable": sum(math.prod(v.shape) for v in setup.trainable.values()),
        "planned": plans["cpu"].total,
        "planned_parts": plans["cpu"].parts,
        "planned_tpu": plans["tpu"].total,
        "xla": xla,
        "ratio": plans["cpu"].total / xla["total"],
        "flops": plans["cpu"].flops["total"],
        "compile_seconds": round(seconds, 1),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def in_subprocess(name: str) -> dict:
    devices = CASES[name]["devices"]
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = dict(
        os.environ,
        XLA_FLAGS=" ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]),
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--case", name],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode:
        return {"case": name, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(results: list[dict]) -> str:
    columns = (
        "case", "devices", "params / trainable", "planned (cpu)", "XLA total", "planned / XLA",
        "XLA argument", "XLA temp", "planned (TPU/GPU)", "compile",
    )  # fmt: skip
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['case']} | error: {' '.join(r['error'])} |")
            continue
        x = r["xla"]
        rows.append(
            f"| {r['case']} | {r['devices']} "
            f"| {r['params'] / 1e9:.2f}B / {r['trainable'] / 1e6:.1f}M "
            f"| {r['planned'] / GIB:.2f} GiB | {x['total'] / GIB:.2f} GiB | {r['ratio']:.3f} "
            f"| {x['argument'] / GIB:.2f} GiB | {x['temp'] / GIB:.2f} GiB "
            f"| {r['planned_tpu'] / GIB:.2f} GiB | {r['compile_seconds']:.0f} s |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", help="run one case in this process (prints one JSON line)")
    parser.add_argument("--cases", nargs="*", default=list(CASES), help=f"of {list(CASES)}")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)))
        return 0
    results = []
    for name in args.cases:  # one at a time: each large compile takes GBs of host memory
        results.append(in_subprocess(name))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
