"""Step time, compile time, throughput and memory of every method, in one run.

    python benchmarks/methods.py [--models minilm,bert-base,smollm2] [--steps 6] [--out FILE]

Each (model, method) runs in its own process so peak memory (max RSS) is its own. The
batch is 32 real movie-review sentences padded to 64 tokens (the issue's 32 x 64), each
model's classification head on its own tokenizer's ids (a decoder pools its last token);
`bert-base` is a randomly initialised BERT-base-sized model (12 x 768, 110M params).
Reported: compile time of the train step, median step time over `--steps` steps after
it, tokens/s (32 * 64 / step), peak RSS, and the trainable share. Ratios are taken
within this one run (the machine is shared and noisy): LoRA vs full step time, and
cached-feature probe vs backbone-in-the-loop probe per epoch of the train split.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

BATCH, LENGTH = 32, 64
METHODS = [
    "full",
    "top_k",
    "layernorm",
    "bitfit",
    "lora",
    "adapter",
    "prefix",
    "prompt",
    "probe",
    "probe_cached",
]


def load_model(name: str):
    from ftjax.models import BertConfig, BertModel, from_pretrained, init_params

    if name == "bert-base":
        model = BertModel(BertConfig())
        return model, init_params(model, 0)
    return from_pretrained(name)


def tokenizer_of(model_name: str):
    from ftjax.models import load_tokenizer

    return load_tokenizer("minilm" if model_name == "bert-base" else model_name)


def real_batch(task, seed: int = 0) -> dict:
    """Sentences seed*32.. of the train split, encoded by `task`, padded to 64 tokens."""
    import numpy as np

    from ftjax.data import batching
    from ftjax.data.splits import load_splits

    rows = load_splits("sentiment")["train"].select(range(seed * BATCH, (seed + 1) * BATCH))
    encoded = task.encode(rows, "train")
    return batching.pad_batch(encoded, np.arange(BATCH), BATCH, {"source": [LENGTH]})


def timed_steps(step, state, batches, rng_of):
    import jax

    start = time.perf_counter()
    compiled = step.lower(state, batches[0], rng_of(0)).compile()
    compile_s = time.perf_counter() - start
    state, _ = compiled(state, batches[0], rng_of(0))  # warm-up
    jax.block_until_ready(state)
    times = []
    for i, batch in enumerate(batches[1:], 1):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, rng_of(i))
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times)


def run_one(model_name: str, method_name: str, steps: int) -> dict:
    import jax
    import numpy as np
    import optax

    from ftjax import methods
    from ftjax.core import partition
    from ftjax.training.config import standalone_task
    from ftjax.training.experiment import unreached_params
    from ftjax.training.train import create_state, make_train_step

    model, params = load_model(model_name)
    method = methods.resolve("probe" if method_name == "probe_cached" else method_name, model)
    model, params = methods.apply(method, model, params)
    task = standalone_task("classification", model, tokenizer_of(model_name), head_dropout=0.0)
    params = {**params, **task.init_head(jax.random.PRNGKey(0))}
    mask = methods.trainable_mask(method, params, unreached_params(task, params))
    tx = optax.adamw(1e-4)
    state = create_state(params, mask, tx)
    batches = [real_batch(task, i % 4) for i in range(steps + 1)]
    result = {
        "model": model_name,
        "method": method_name,
        "trainable_pct": 100
        * sum(np.size(v) for v in state.trainable.values())
        / partition.count(params),
    }
    if method_name == "probe_cached":
        extract = jax.jit(task.features)
        inputs = {k: batches[0][k] for k in ("input_ids", "attention_mask")}
        jax.block_until_ready(extract(params, inputs))
        start = time.perf_counter()
        for batch in batches[1:]:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
            jax.block_until_ready(extract(params, inputs))
        result["extract_s_per_batch"] = (time.perf_counter() - start) / steps
        batches = [
            {
                "features": np.asarray(
                    extract(params, {k: b[k] for k in ("input_ids", "attention_mask")})
                ),
                "labels": b["labels"],
                "example_mask": b["example_mask"],
            }
            for b in batches
        ]
    step = jax.jit(make_train_step(task.loss, tx), donate_argnums=0)
    compile_s, step_s = timed_steps(step, state, batches, jax.random.PRNGKey)
    result.update(
        compile_s=compile_s,
        step_s=step_s,
        tokens_per_s=BATCH * LENGTH / step_s,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    return result


def report(rows: list[dict], train_rows: int) -> str:
    lines = [
        "| model | method | trainable % | compile s | median step ms | tokens/s | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['trainable_pct']:.3f} | {r['compile_s']:.1f} "
            f"| {1000 * r['step_s']:.1f} | {r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    lines.append("")
    steps_per_epoch = -(-train_rows // BATCH)
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["method"]: r for r in rows if r["model"] == model}
        if "lora" in by and "full" in by:
            ratio = by["lora"]["step_s"] / by["full"]["step_s"]
            lines.append(f"- {model}: LoRA step / full step = {ratio:.2f} (target <= 0.75)")
        if "probe" in by and "probe_cached" in by:
            loop = steps_per_epoch * by["probe"]["step_s"]
            cached = steps_per_epoch * by["probe_cached"]["step_s"]
            once = steps_per_epoch * by["probe_cached"]["extract_s_per_batch"]
            lines.append(
                f"- {model}: probe epoch ({steps_per_epoch} steps) with the backbone in the loop "
                f"{loop:.1f} s, on cached features {cached:.2f} s: {loop / cached:.0f}x faster "
                f"per epoch (target >= 20x); caching costs one forward pass, {once:.1f} s"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="minilm,bert-base")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.steps)))
        return 0
    rows = []
    for model in args.models.split(","):
        for method in args.methods.split(","):
            proc = subprocess.run(
                [sys.executable, __file__, "--one", model, method, "--steps", str(args.steps)],
                capture_output=True,
                text=True,
            )
            if proc.returncode:
                print(f"{model} {method} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                return 1
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    from ftjax.data.splits import load_splits

    table = report(rows, len(load_splits("sentiment")["train"]))
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
