"""What scanning and rematerialising the layer stack cost and save, measured in one run.

    python benchmarks/scale_costs.py            # both parts
    python benchmarks/scale_costs.py --part compile
    python benchmarks/scale_costs.py --part remat --steps 6

compile: the train-step gradient of a 24-layer tiny Llama, lowered and compiled with the
layers unrolled and scanned (seconds, and the ratio). remat: MiniLM's LoRA train step
(32 x 64 tokens) with model.remat none / full / dots_no_batch, scanned and unrolled:
the median step time as a ratio to the plain step, and XLA's temp bytes for each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp

from ftjax import methods
from ftjax.core import partition
from ftjax.models import from_pretrained, init_params, stacking
from ftjax.models.hub import stack_depths
from ftjax.models.llama import LlamaConfig, LlamaModel


def variant(model, **fields):
    return type(model)(dataclasses.replace(model.config, **fields))


def grad_fn(model, ids):
    def loss(p):
        out = model.apply(
            {"params": p}, ids, deterministic=False, rngs={"dropout": jax.random.key(0)}
        )
        return jnp.mean(jnp.square(out.last_hidden_state))

    return jax.jit(jax.value_and_grad(loss))


def stored(model, flat):
    return partition.unflatten(stacking.to_storage(model, stack_depths(model), flat))


def compile_times(depth: int = 24) -> dict:
    base = LlamaModel(
        LlamaConfig(vocab_size=256, hidden_size=64, num_layers=depth, num_heads=4,
                    num_kv_heads=2, head_dim=16, intermediate_size=128)
    )  # fmt: skip
    flat = partition.flatten(init_params(base, 0))
    ids = jnp.zeros((4, 64), jnp.int32)
    out = {"layers": depth}
    for scan in (False, True):
        model = variant(base, scan_layers=scan)
        tic = time.perf_counter()
        grad_fn(model, ids).lower(stored(model, flat)).compile()
        out["scanned" if scan else "unrolled"] = round(time.perf_counter() - tic, 2)
    out["unrolled / scanned"] = round(out["unrolled"] / out["scanned"], 2)
    return out


def remat_costs(steps: int) -> list[dict]:
    model, params = from_pretrained("minilm")
    method = methods.resolve("lora", model, {})
    model, params = methods.apply(method, model, params, rng=0)
    flat = partition.flatten(params)
    lora = {p for p in flat if p.endswith(("lora_a", "lora_b"))}
    ids = jnp.ones((32, 64), jnp.int32)
    rows = []
    for scan in (False, True):
        for policy in ("none", "full", "dots_no_batch"):
            m = variant(model, remat=policy, scan_layers=scan)
            p = stacking.to_storage(m, stack_depths(m), flat)
            trainable = {k: v for k, v in p.items() if k.rsplit("/", 1)[-1] in ("lora_a", "lora_b")}
            frozen = {k: v for k, v in p.items() if k not in trainable}

            def loss(t, m=m, frozen=frozen):
                out = m.apply(
                    {"params": partition.merge(t, frozen)}, ids, deterministic=False,
                    rngs={"dropout": jax.random.key(0)},
                )  # fmt: skip
                return jnp.mean(jnp.square(out.last_hidden_state))

            fn = jax.jit(jax.value_and_grad(loss))
            compiled = fn.lower(trainable).compile()
            jax.block_until_ready(compiled(trainable))
            times = []
            for _ in range(steps):
                tic = time.perf_counter()
                jax.block_until_ready(compiled(trainable))
                times.append(time.perf_counter() - tic)
            rows.append({
                "scan": scan, "remat": policy, "step_s": round(statistics.median(times), 4),
                "temp_MiB": round(compiled.memory_analysis().temp_size_in_bytes / 2**20, 1),
            })  # fmt: skip
    assert lora  # LoRA switched on: the backbone is frozen, its activations still saved
    for row in rows:
        plain = next(r for r in rows if r["scan"] == row["scan"] and r["remat"] == "none")
        row["step / plain"] = round(row["step_s"] / plain["step_s"], 3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("compile", "remat", "all"), default="all")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    result = {}
    if args.part in ("compile", "all"):
        result["compile_seconds"] = compile_times()
    if args.part in ("remat", "all"):
        result["remat_minilm_lora"] = remat_costs(args.steps)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
