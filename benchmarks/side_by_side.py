"""ftjax against Hugging Face transformers + PEFT in PyTorch, step for step, in one run.

    python benchmarks/side_by_side.py [--methods full,lora,prefix,prompt]
        [--padding equal,natural,packed] [--steps 8] [--threads 2] [--model DIR] [--bf16]
        [--out F]

Both sides train the same classifier (the bundled MiniLM by default; `--model` any
transformers BERT folder) on the same movie-review rows, batch 32, dropout on, global
norm clipping 1.0 and AdamW, each method with PEFT's settings (LoRA r=8, alpha 16 on
query/value; prefix and prompt tuning with 20 virtual tokens). Each (method, padding,
side) runs in its own process (its own peak RSS), the sides alternating, so a change in
the machine's load hits both. Padding modes:

- `equal`: both sides get the identical `--steps` batches of 32 rows padded to 64.
- `natural`: the same 32 x `--steps` rows, each side batching them its own way:
  PyTorch in random batches padded to each batch's longest row (DataCollatorWithPadding,
  the usual recipe); ftjax as its trainer does (shuffled, grouped by length, bucketed).
- `packed` (ftjax only; PyTorch's row is its natural one): ftjax packing the rows into
  rows of 64 tokens (`data.pack_length`).

Reported per run: the train step's compile time (PyTorch: its first step), median step
ms after one warm-up step, ms per 1k real tokens (all timed steps' time over their real
tokens), real and computed tokens per example, peak RSS. Then the ratios: PyTorch time
over ftjax time per step (equal padding) and per real token (natural, packed), and the
LoRA step over the full step on each side. `--bf16`: each side in its bf16 mixed
precision (ftjax `model.matmul_precision=bfloat16`, PyTorch `torch.autocast`); float32
otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

BATCH, LENGTH = 32, 64
METHODS = ("full", "lora", "prefix", "prompt")
PADDINGS = ("equal", "natural", "packed")


def sample_rows(steps: int, seed: int = 0):
    """32 x (steps + 1) rows of the movie-review train split (a fixed random draw)."""
    import numpy as np

    from ftjax.data.splits import load_splits

    train = load_splits("sentiment")["train"]
    chosen = np.random.default_rng(seed).choice(len(train), BATCH * (steps + 1), replace=False)
    return train.select(sorted(chosen))


def ftjax_batches(task, rows, padding: str) -> list[dict]:
    """The batches ftjax computes for `rows` under `padding`; one mode is one branch."""
    import numpy as np

    from ftjax.data import batching

    examples = task.encode(rows, "train")
    if padding == "equal":
        index = np.arange(len(examples))
        return [
            batching.pad_batch(examples, index[s : s + BATCH], BATCH, {"source": [LENGTH]})
            for s in range(0, len(index), BATCH)
        ]
    pack = LENGTH if padding == "packed" else 0
    return [b for b, _ in batching.batches(examples, BATCH, {"source": LENGTH}, pack_length=pack)]


def run_ftjax(model_dir: str, method_name: str, padding: str, steps: int) -> dict:
    import jax
    import optax

    from ftjax import methods
    from ftjax.models import from_pretrained, load_tokenizer
    from ftjax.training.config import standalone_task
    from ftjax.training.experiment import unreached_params
    from ftjax.training.train import create_state, make_train_step

    model, params = from_pretrained(model_dir)
    method = methods.resolve(method_name, model)
    model, params = methods.apply(method, model, params)
    task = standalone_task(
        "classification", model, load_tokenizer(model_dir), num_labels=2, pooling="pooler",
        max_length=LENGTH, head_dropout=0.1,
    )  # fmt: skip
    if padding == "packed":  # the pooler reads each row's first slot: pool by [CLS]
        task = standalone_task(
            "classification", model, load_tokenizer(model_dir), num_labels=2, pooling="cls",
            max_length=LENGTH, head_dropout=0.1, pack_length=LENGTH,
        )  # fmt: skip
    params = {**params, **task.init_head(jax.random.PRNGKey(0))}
    mask = methods.trainable_mask(method, params, unreached_params(task, params))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4, weight_decay=0.01))
    state = create_state(params, mask, tx)
    batches = ftjax_batches(task, sample_rows(steps), padding)
    step = jax.jit(make_train_step(task.loss, tx), donate_argnums=0)
    compiled, compile_s = {}, 0.0
    times, real, computed = [], 0.0, 0.0
    for i, batch in enumerate(batches):
        shape = batch["input_ids"].shape
        if shape not in compiled:
            tic = time.perf_counter()
            compiled[shape] = step.lower(state, batch, jax.random.PRNGKey(i)).compile()
            compile_s += time.perf_counter() - tic
        tic = time.perf_counter()
        state, metrics = compiled[shape](state, batch, jax.random.PRNGKey(i))
        jax.block_until_ready(metrics["loss"])
        if i:  # the first step warms up
            times.append(time.perf_counter() - tic)
            real += float(batch["attention_mask"].sum())
            computed += float(batch["attention_mask"].size)
    return summary(times, real, computed, compile_s, len(batches) - 1)


def run_torch(model_dir: str, method: str, padding: str, steps: int, threads: int) -> dict:
    import torch
    import transformers

    from benchmarks.torch_reference import GRAD_CLIP, build_model, make_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    rows = sample_rows(steps)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    texts, labels = list(rows["text"]), list(rows["label"])
    model = build_model(method, model_dir)
    model.train()
    optimizer = make_optimizer(model, 1e-4)
    trainable = [p for p in model.parameters() if p.requires_grad]
    times, real, computed, compile_s = [], 0.0, 0.0, 0.0
    for i, start in enumerate(range(0, len(rows), BATCH)):
        index = order[start : start + BATCH] if padding != "equal" else range(start, start + BATCH)
        batch = tokenizer(
            [texts[j] for j in index],
            truncation=True,
            max_length=LENGTH,
            padding="max_length" if padding == "equal" else "longest",
            return_tensors="pt",
        )
        batch["labels"] = torch.tensor([labels[j] for j in index])
        tic = time.perf_counter()
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - tic
        if i == 0:
            compile_s = seconds
            continue
        times.append(seconds)
        real += float(batch["attention_mask"].sum())
        computed += float(batch["attention_mask"].numel())
    return summary(times, real, computed, compile_s, len(times))


def summary(times: list[float], real: float, computed: float, compile_s: float, n: int) -> dict:
    examples = n * BATCH
    return {
        "compile_s": compile_s,
        "step_ms": 1000 * statistics.median(times),
        "ms_per_1k_real": 1000 * sum(times) / real * 1000,
        "real_per_example": real / examples,
        "computed_per_example": computed / examples,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_one(side: str, method: str, padding: str, args: argparse.Namespace) -> dict:
    """One side's run; with --bf16 each side's mixed precision: ftjax's matmul precision
    bfloat16 (model.matmul_precision), PyTorch's autocast to bfloat16."""
    if side == "ftjax":
        import jax

        with jax.default_matmul_precision("bfloat16" if args.bf16 else None):
            result = run_ftjax(args.model, method, padding, args.steps)
    else:
        from benchmarks.torch_reference import precision

        with precision(args.bf16):
            result = run_torch(args.model, method, padding, args.steps, args.threads)
    return {"side": side, "method": method, "padding": padding, "bf16": args.bf16, **result}


def plan(methods: list[str], paddings: list[str]) -> list[tuple[str, str, str]]:
    """(side, method, padding) runs, ftjax and PyTorch alternating; PyTorch has no
    packed mode (its natural row stands beside ftjax's packed one), and ftjax refuses
    to pack a soft prompt (one per row)."""
    runs = []
    for padding in paddings:
        for method in methods:
            if padding == "packed" and method == "prompt":
                continue
            runs.append(("ftjax", method, padding))
            if padding != "packed":
                runs.append(("torch", method, padding))
    return runs


def ratios(rows: list[dict]) -> list[str]:
    """PyTorch time over ftjax time (per step at equal padding, per real token
    otherwise; > 1: ftjax faster), and LoRA over full on each side."""
    by = {(r["side"], r["method"], r["padding"]): r for r in rows}
    lines = []
    for (side, method, padding), r in by.items():
        if side != "ftjax":
            continue
        reference = by.get(("torch", method, "natural" if padding == "packed" else padding))
        if reference is None:
            continue
        if padding == "equal":
            speedup = reference["step_ms"] / r["step_ms"]
            lines.append(f"- {method}, equal padding: ftjax {speedup:.2f}x PyTorch + PEFT per step")
        else:
            speedup = reference["ms_per_1k_real"] / r["ms_per_1k_real"]
            lines.append(
                f"- {method}, ftjax {padding} vs PyTorch natural: {speedup:.2f}x per real token"
            )
    for side in ("ftjax", "torch"):
        for padding in PADDINGS:
            lora, full = by.get((side, "lora", padding)), by.get((side, "full", padding))
            if lora and full:
                lines.append(
                    f"- {side}, {padding} padding: LoRA step / full step = "
                    f"{lora['step_ms'] / full['step_ms']:.2f}"
                )
    return lines


def report(rows: list[dict]) -> str:
    lines = [
        "| method | padding | side | compile s | median step ms | ms per 1k real tokens "
        "| real / computed tokens per example | peak RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['padding']} | {r['side']} | {r['compile_s']:.1f} | "
            f"{r['step_ms']:.0f} | {r['ms_per_1k_real']:.0f} | "
            f"{r['real_per_example']:.1f} / {r['computed_per_example']:.1f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    return "\n".join([*lines, "", *ratios(rows)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--padding", default="equal,natural,packed")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--model", help="a transformers BERT folder (default: minilm)")
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--one", nargs=3, metavar=("SIDE", "METHOD", "PADDING"))
    parser.add_argument("--bf16", action="store_true", help="each side's bf16 mixed precision")
    args = parser.parse_args(argv)
    args.methods, args.padding = args.methods.split(","), args.padding.split(",")
    for name, chosen, known in (("methods", args.methods, METHODS),
                                ("padding", args.padding, PADDINGS)):  # fmt: skip
        if set(chosen) - set(known):
            parser.error(f"--{name} {sorted(set(chosen) - set(known))}: choose from {known}")
    if not args.model:
        from ftjax.data import assets

        args.model = str(assets.fetch("minilm"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_one(*args.one, args)))
        return 0
    rows = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for side, method, padding in plan(args.methods, args.padding):
        command = [sys.executable, "-m", "benchmarks.side_by_side", "--one", side, method,
                   padding, "--steps", str(args.steps), "--threads", str(args.threads),
                   "--model", args.model, *(["--bf16"] if args.bf16 else [])]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, cwd=root)
        if proc.returncode:
            print(f"{side} {method} {padding} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(report(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"settings": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
