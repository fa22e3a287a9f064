"""What ftjax does on this host's accelerator, in one JSON (run by accelerator_check.sh).

    python benchmarks/accelerator_check.py [--out accelerator_check.json] [--fast]
        [--model smollm2] [--data sentiment] [--accelerator cuda12|tpu|none]
    python benchmarks/accelerator_check.py --detect    # the jax extra this host needs

On a GPU or TPU: the model parity tests (ftjax against transformers, float32 matmuls at
full precision) and the default run (`python -m ftjax.main`) on the device, then a bf16
LoRA and a bf16 full fine-tuning train step of SmolLM2 (causal LM on packed rows of 512
tokens, ftjax's own step from `experiment.build`) with MFU against the chip's dense bf16
peak: the step's FLOPs from XLA's cost analysis (`Steps.step_flops`) / the median step
time / (peak x devices). On a CPU the device parts are skipped, saying so, and the steps
run small (`--fast`: 8 examples in rows of 64 tokens, 2 timed steps; for the tests,
with a tiny `--model` / `--data`). Exit code 1 when a part failed or the host's
accelerator did not reach jax.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 FLOP/s per chip from the vendors' data sheets (no sparsity), matched against
# jax's device_kind ("NVIDIA H100 80GB HBM3", "TPU v5 lite" for v5e, ...), first match.
PEAK_BF16 = (
    (r"H100 PCIe", 756e12),
    (r"H100 NVL", 835e12),
    (r"H100|H200", 989e12),
    (r"A100", 312e12),
    (r"L40S", 362e12),
    (r"L40\b", 181e12),
    (r"L4\b", 121e12),
    (r"A10\b", 125e12),
    (r"TPU v6 ?lite|TPU v6e", 918e12),
    (r"TPU v5 ?lite|TPU v5e", 197e12),
    (r"TPU v5p?$", 459e12),
    (r"TPU v4$", 275e12),
    (r"TPU v3", 123e12),
)
PARITY_TESTS = (
    "tests/test_model_parity.py",
    "tests/test_llama.py",
    "tests/test_minilm.py",
    "tests/test_smollm2.py",
)
# (examples per batch, tokens per packed row, timed steps)
SHAPES = {"device": (256, 512, 10), "cpu": (32, 128, 3), "fast": (8, 64, 2)}


def peak_flops(device_kind: str) -> float | None:
    return next((peak for pattern, peak in PEAK_BF16 if re.search(pattern, device_kind)), None)


def detect_accelerator(env: Mapping[str, str] | None = None, dev: Path = Path("/dev")) -> str:
    """The jax extra this host needs: cuda12 (nvidia-smi lists a GPU), tpu (TPU device
    nodes, or a TPU VM's environment), else none."""
    env = os.environ if env is None else env
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if smi and subprocess.run([smi, "-L"], capture_output=True, timeout=60).returncode == 0:
        return "cuda12"
    nodes = [*dev.glob("accel[0-9]*"), *dev.glob("vfio/[0-9]*")]  # v4 / v5e and later
    if nodes or any(name in env for name in ("TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID")):
        return "tpu"
    return "none"


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def run_part(cmd: list[str], timeout: int, **env: str) -> dict:
    """A subprocess of this repo: ok / failed, seconds, the last lines of its output."""
    tic = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"no result after {timeout} s", "command": cmd}
    return {
        "status": "ok" if proc.returncode == 0 else "failed",
        "seconds": round(time.perf_counter() - tic, 1),
        "command": cmd,
        "tail": (proc.stdout + proc.stderr).strip().splitlines()[-5:],
    }


def parity_tests() -> dict:
    # On GPUs float32 matmuls default to TF32 and on TPUs to one bf16 pass: the tests'
    # 1e-4 against PyTorch's float32 needs full precision.
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *PARITY_TESTS]
    return run_part(cmd, 600, JAX_DEFAULT_MATMUL_PRECISION="highest")


def default_run() -> dict:
    with tempfile.TemporaryDirectory(prefix="accelerator_check_") as workdir:
        part = run_part([sys.executable, "-m", "ftjax.main", "--workdir", workdir], 600)
        results = Path(workdir) / "results.json"
        if results.exists():
            figures = json.loads(results.read_text())
            part["test"] = figures.get("test")
            part["median_step_seconds"] = figures.get("median_step_seconds")
    return part


def train_step(model: str, data: str, method: str, shape: tuple, peak: float | None) -> dict:
    """ftjax's compiled train step for `method` (bf16 compute; LoRA's frozen weights
    stored bf16, full fine-tuning's float32 master weights), timed on one packed batch."""
    import jax

    from ftjax.training import experiment, loop, state, steps
    from ftjax.training.config import base_config

    examples, row_tokens, timed = shape
    arg = f"model={model},method={method},dtype=bfloat16"
    config = base_config(arg, task="language_modeling", data=data)  # configs/lm.py's run
    config.data.update(batch_size=examples, max_length=min(64, row_tokens), pack_length=row_tokens)
    if method == "lora":
        config.model.param_dtype = "bfloat16"
    exp = experiment.build(config)
    train_state, shardings = state.initial_state(exp)
    runner = steps.Steps(exp, shardings)
    batch = next(exp.loader.train_batches(0, 0))
    rng = jax.random.PRNGKey(0)
    flops = runner.step_flops(train_state, batch, rng)  # before the step donates the state
    compile_seconds = runner.compile_train(train_state, batch, rng)
    times = []
    for _ in range(timed + 1):  # the first call warms up
        tic = time.perf_counter()
        train_state, metrics = runner.train(train_state, batch, rng)
        loss = float(metrics["loss"])  # waits for the step
        times.append(time.perf_counter() - tic)
    seconds = statistics.median(times[1:])
    real, computed = loop.token_counts(batch)
    result: dict[str, Any] = {
        "status": "ok",
        "batch": list(batch["input_ids"].shape),
        "real_tokens": int(real),
        "compile_seconds": round(compile_seconds, 1),
        "step_seconds": seconds,
        "tokens_per_second": round(computed / seconds),
        "flops": flops,
        "loss": loss,
    }
    if peak:
        result["mfu"] = round(flops / seconds / (peak * jax.device_count()), 4)
    memory = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in memory:
        result["peak_gib_device_0"] = round(memory["peak_bytes_in_use"] / 2**30, 2)
    return result


def check(args: argparse.Namespace) -> dict:
    import jax

    device = jax.devices()[0]
    report: dict[str, Any] = {
        "accelerator": args.accelerator,
        "jax": jax.__version__,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "devices": jax.device_count(),
    }
    on_device = device.platform in ("gpu", "tpu")
    if args.accelerator != "none" and not on_device:
        report["error"] = (
            f"found {args.accelerator} hardware, but jax runs on {device.platform}: the "
            f"extra's runtime did not load (pip install -e '.[{args.accelerator}]')"
        )
        return report
    why_not = f"no GPU or TPU: jax's backend is {device.platform}"
    report["parity_tests"] = parity_tests() if on_device else skipped(why_not)
    report["default_run"] = default_run() if on_device else skipped(why_not)
    shape = SHAPES["fast" if args.fast else "device" if on_device else "cpu"]
    peak = peak_flops(device.device_kind) if on_device else None
    report["steps"] = {"model": args.model, "data": args.data, "compute_dtype": "bfloat16"}
    if peak is None:
        report["steps"]["mfu"] = skipped(
            f"no bf16 peak known for {device.device_kind!r}" if on_device else why_not
        )
    else:
        report["steps"]["peak_flops_per_chip"] = peak
    for method in ("lora", "full"):
        report["steps"][method] = train_step(args.model, args.data, method, shape, peak)
    return report


def summary(report: dict) -> str:
    lines = [f"accelerator_check: {report['device_kind']} x {report['devices']} ({report['jax']})"]
    for part in ("parity_tests", "default_run"):
        if part in report:
            got = report[part]
            lines.append(f"  {part}: {got['status']} {got.get('reason', '')}".rstrip())
    for method in ("lora", "full"):
        step = report.get("steps", {}).get(method)
        if step:
            mfu = f"MFU {step['mfu']:.1%}" if "mfu" in step else "MFU skipped"
            rows, length = step["batch"]
            lines.append(
                f"  {method} step: {rows} x {length} tokens, {1000 * step['step_seconds']:.1f} "
                f"ms, {step['tokens_per_second']} tokens/s, {mfu}"
            )
    if "error" in report:
        lines.append(f"  error: {report['error']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="accelerator_check.json")
    parser.add_argument("--fast", action="store_true", help="small steps (tests)")
    parser.add_argument("--model", default="smollm2", help="decoder for the timed steps")
    parser.add_argument("--data", default="sentiment", help="text for the timed steps")
    parser.add_argument("--accelerator", choices=("cuda12", "tpu", "none"), default=None)
    parser.add_argument("--detect", action="store_true", help="print the extra and exit")
    args = parser.parse_args()
    if args.detect:
        print(detect_accelerator())
        return 0
    args.accelerator = args.accelerator or detect_accelerator()
    report = check(args)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))
    print(f"accelerator_check: wrote {args.out}")
    parts = [report.get(p, {}) for p in ("parity_tests", "default_run")]
    failed = "error" in report or any(p.get("status") == "failed" for p in parts)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
