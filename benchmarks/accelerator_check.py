"""What ftjax does on this host's accelerator, in one JSON (run by accelerator_check.sh).

    python benchmarks/accelerator_check.py --out accelerator_check.json [--fast]

On a GPU or TPU: the model parity tests and the default run on the device, then a bf16
LoRA and a bf16 full fine-tuning train step of SmolLM2 (32 x 256 tokens) with their MFU
against the chip's bf16 peak. On a CPU every device part is skipped, saying why, and
the steps are timed on the CPU (`--fast`: a tiny random Llama, 2 steps; for tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets (no sparsity).
PEAK_BF16 = {
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
}
PARITY_TESTS = ("tests/test_model_parity.py", "tests/test_llama.py")


def peak_of(kind: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16.items() if name.lower() in kind.lower()), None)


def run(cmd: list[str], timeout: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    tic = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    return {
        "ok": proc.returncode == 0,
        "seconds": round(time.perf_counter() - tic, 1),
        "tail": tail,
    }


def step_model(fast: bool):
    from ftjax.models import from_pretrained, init_params
    from tests.helpers.tiny import tiny_model

    if fast:
        model = tiny_model("llama")
        return model, init_params(model, 0), (4, 32)
    model, params = from_pretrained("smollm2")
    return model, params, (32, 256)


def time_step(model, params, method: str, shape: tuple[int, int], steps: int) -> dict:
    """Median seconds of a jitted bf16 train step (loss, gradients of the trainable params,
    an AdamW update) and its FLOPs from XLA's cost analysis."""
    import optax

    from ftjax import methods, partition

    model = type(model)(dataclasses.replace(model.config, dtype="bfloat16"))
    chosen = methods.resolve(method, model, {})
    model, params = methods.apply(chosen, model, params, rng=0)
    mask = methods.trainable_mask(chosen, params, set(), training=True)
    trainable, frozen = partition.split(params, mask)
    frozen = {p: v.astype(jnp.bfloat16) for p, v in frozen.items()}
    tx = optax.adamw(1e-4)
    ids = jnp.ones(shape, jnp.int32)

    def loss(t):
        logits = model.apply({"params": partition.merge(t, frozen)}, ids).logits
        return optax.softmax_cross_entropy_with_integer_labels(
            logits[:, :-1].astype(jnp.float32), ids[:, 1:]
        ).mean()

    def step(t, opt):
        value, grads = jax.value_and_grad(loss)(t)
        updates, opt = tx.update(grads, opt, t)
        return optax.apply_updates(t, updates), opt, value

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(trainable, tx.init(trainable)).compile()
    cost = compiled.cost_analysis()
    flops = float(((cost[0] if isinstance(cost, list) else cost) or {}).get("flops", 0.0))
    state = (trainable, tx.init(trainable))
    times = []
    for _ in range(steps + 1):
        tic = time.perf_counter()
        *state, value = compiled(*state)
        jax.block_until_ready(value)
        times.append(time.perf_counter() - tic)
    seconds = statistics.median(times[1:])
    return {"step_s": round(seconds, 4), "flops": flops, "loss": float(value)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="accelerator_check.json")
    parser.add_argument("--fast", action="store_true", help="tiny model, 2 steps (tests)")
    args = parser.parse_args()
    device = jax.devices()[0]
    kind = device.device_kind
    report: dict = {"platform": device.platform, "device_kind": kind, "devices": jax.device_count()}
    on_device = device.platform in ("gpu", "tpu")
    skipped = f"skipped: no GPU or TPU here (jax backend {device.platform!r})"
    if on_device:
        report["parity_tests"] = run([sys.executable, "-m", "pytest", "-q", *PARITY_TESTS], 900)
        report["default_run"] = run([sys.executable, "-m", "ftjax.main", "--workdir",
                                     str(ROOT / "runs" / "accelerator_check")], 900)  # fmt: skip
    else:
        report["parity_tests"] = report["default_run"] = skipped
    model, params, shape = step_model(args.fast)
    peak = peak_of(kind) if on_device else None
    report["steps"] = {"model": "tiny random llama" if args.fast else "smollm2", "batch": shape}
    for method in ("lora", "full"):
        result = time_step(model, params, method, shape, 2 if args.fast else 10)
        result["mfu"] = (
            round(result["flops"] / result["step_s"] / peak, 4)
            if peak
            else f"skipped: no bf16 peak known for {kind!r}"
        )
        report["steps"][method] = result
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
