"""Where one train step's time goes, by op family: XLA's own per-op timings, classified.

    python benchmarks/profile_step.py [--model minilm] [--method full] [--steps 5]
        [--length 64] [--dropout 0.1] [--out FILE.json]

Builds ftjax's train step (forward, backward, clipping, AdamW) for `--method` on the
bundled MiniLM and a batch of 32 real movie-review sentences padded to `--length`,
traces `--steps` steps with `jax.profiler` and sums the time of every XLA:CPU thunk
(one per HLO instruction or fusion) in the trace. Each instruction is classified from
the optimised HLO (`compiled.as_text()`): its phase from the JAX name stack in its
metadata (`jvp(...)` forward, `transpose(jvp(...))` backward, neither: the optimizer
update) and its family from the ops it fuses and the module path (matmuls, attention
softmax and mask, layer norms, GELU, dropout, embedding gradient scatter, AdamW, ...).

Thunks run concurrently on the cores' executor threads, and XLA's Eigen dot thunks
(the weight gradients' transposed-operand dots) finish asynchronously, so their time
is not in the trace: the family sums are traced op time, not wall time, and they
undercount the backward matmuls. The step's FLOPs (XLA's cost analysis) against a
plain matmul's rate measured in the same process bound what any op work can gain.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

FAMILIES = (
    "dense matmuls",
    "attention matmuls",
    "attention softmax + mask",
    "layer norms",
    "GELU",
    "dropout",
    "embedding gradient",
    "optimizer (AdamW, clipping)",
    "loss + head",
    "other elementwise / copies",
)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?\b([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{\s*$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%([\w.\-]+)")


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    op_name: str  # the JAX name stack, e.g. jit(train_step)/jvp(BertModel)/encoder/...
    calls: str | None  # the fused computation, for fusions
    shape: str


def parse_hlo(text: str) -> tuple[dict[str, Instruction], dict[str, list[Instruction]]]:
    """(instruction by name, instructions of each computation) of an HLO module's text."""
    instructions: dict[str, Instruction] = {}
    computations: dict[str, list[Instruction]] = collections.defaultdict(list)
    current = None
    for line in text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if not match or current is None:
            continue
        op_name = _OP_NAME.search(line)
        calls = _CALLS.search(line)
        shape = line.split("=", 1)[1].strip().split(" ", 1)[0]
        instruction = Instruction(
            match.group(1),
            match.group(2),
            op_name.group(1) if op_name else "",
            calls.group(1) if calls else None,
            shape,
        )
        instructions[instruction.name] = instruction
        computations[current].append(instruction)
    return instructions, computations


def fused(instruction: Instruction, computations: dict) -> list[Instruction]:
    """The instruction itself, or every instruction of its fused computation (nested too)."""
    if not instruction.calls or instruction.calls not in computations:
        return [instruction]
    out = []
    for inner in computations[instruction.calls]:
        out += fused(inner, computations) if inner.calls else [inner]
    return out


def phase_of(op_names: list[str]) -> str:
    if any("transpose(jvp(" in n for n in op_names):
        return "backward"
    if any("jvp(" in n for n in op_names):
        return "forward"
    return "update"


def family_of(instruction: Instruction, computations: dict) -> str:
    """The op family one thunk belongs to (see FAMILIES), from what it computes."""
    body = fused(instruction, computations)
    opcodes = {i.opcode for i in body}
    names = [i.op_name for i in body if i.op_name]
    text = " ".join(names).lower()
    dots = [i.op_name for i in body if i.opcode in ("dot", "convolution")]
    if "scatter" in opcodes and "embeddings" in text:
        return "embedding gradient"
    root = instruction.op_name
    if "word_embeddings" in root and "_take" in root and "transpose(" in root:
        return "embedding gradient"  # zeroing the table-sized gradient before the scatter
    if dots and any("/head/" in n for n in dots):
        return "loss + head"
    if dots:
        # The score and weighted-sum einsums; the q/k/v/output projections are dense.
        projection = re.compile(r"/(query|key|value|output)/")
        if any("/attention/" in n and not projection.search(n) for n in dots):
            return "attention matmuls"
        return "dense matmuls"
    if phase_of(names) == "update":
        return "optimizer (AdamW, clipping)"
    if re.search(r"dropout|threefry|random|bernoulli|lowbias", text):
        return "dropout"
    if "gelu" in text or "erf" in text or "/mlp/" in text and "intermediate" not in text:
        return "GELU"
    if "_norm/" in text or "layer_norm" in text:
        return "layer norms"
    if "/attention/" in text and opcodes & {"exponential", "reduce", "select", "divide", "maximum"}:
        return "attention softmax + mask"
    if "/head/" in text or "softmax_cross_entropy" in text or "take_along_axis" in text:
        return "loss + head"
    return "other elementwise / copies"


def thunk_times(trace_dir: str) -> collections.Counter:
    """Microseconds per thunk name, summed over the trace's events."""
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    times: collections.Counter = collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            times[event["name"]] += event.get("dur", 0)
    return times


def breakdown(hlo_text: str, times: collections.Counter, steps: int) -> dict:
    """{(phase, family): ms per step} over the thunks named like HLO instructions."""
    instructions, computations = parse_hlo(hlo_text)
    table: collections.Counter = collections.Counter()
    for name, micros in times.items():
        instruction = instructions.get(name)
        if instruction is None:
            continue  # runtime events (executor, python), not an op
        body = fused(instruction, computations)
        phase = phase_of([i.op_name for i in body if i.op_name])
        table[(phase, family_of(instruction, computations))] += micros / 1000 / steps
    return table


def build_step(model_name: str, method_name: str, length: int, dropout: float, pack: int = 0):
    """(jitted train step, state, batches, rng_of) for ftjax's step on real rows: padded
    to `length`, or with `pack` > 0 packed into rows of `pack` tokens (mean pooling)."""
    import jax
    import numpy as np
    import optax

    from ftjax import methods
    from ftjax.data import batching
    from ftjax.data.splits import load_splits
    from ftjax.models import from_pretrained, load_tokenizer
    from ftjax.training.config import standalone_task
    from ftjax.training.experiment import unreached_params
    from ftjax.training.train import create_state, make_train_step

    model, params = from_pretrained(model_name)
    config = dataclasses.replace(model.config, hidden_dropout=dropout, attention_dropout=dropout)
    model = type(model)(config)
    method = methods.resolve(method_name, model)
    model, params = methods.apply(method, model, params)
    pooling = {"pooling": "mean"} if pack else {}
    task = standalone_task(
        "classification",
        model,
        load_tokenizer(model_name),
        head_dropout=dropout,
        max_length=pack or length,
        **pooling,
    )
    params = {**params, **task.init_head(jax.random.PRNGKey(0))}
    mask = methods.trainable_mask(method, params, unreached_params(task, params))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4, weight_decay=0.01))
    state = create_state(params, mask, tx)
    rows = load_splits("sentiment")["train"].select(range(4 * 32))
    encoded = task.encode(rows, "train")
    index = [np.arange(i * 32, (i + 1) * 32) for i in range(4)]
    if pack:  # one row count for all four, so one compile
        rows = max(len(batching.pack_rows(encoded.group_lengths("source")[i], pack)) for i in index)
        batches = [batching.pack_batch(encoded, i, 32, pack, 1, (rows,)) for i in index]
    else:
        batches = [batching.pad_batch(encoded, i, 32, {"source": [length]}) for i in index]
    step = jax.jit(make_train_step(task.loss, tx), donate_argnums=0)
    return step, state, batches, jax.random.PRNGKey


def matmul_peak(repeats: int = 20, dtype: str = "float32") -> float:
    """GFLOP/s of a plain 2048x384 @ 384x1536 matmul (MiniLM's FFN shape) here, its
    inputs in `dtype` and float32 out (bfloat16: what model.matmul_precision=bfloat16
    computes)."""
    import jax
    import jax.numpy as jnp

    a, b = jnp.ones((2048, 384), dtype), jnp.ones((384, 1536), dtype)
    mm = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    for _ in range(3):
        mm(a, b).block_until_ready()
    tic = time.perf_counter()
    for _ in range(repeats):
        mm(a, b).block_until_ready()
    return 2 * 2048 * 384 * 1536 * repeats / (time.perf_counter() - tic) / 1e9


def profile(
    model: str, method: str, steps: int, length: int, dropout: float, pack: int = 0
) -> dict:
    import jax

    step, state, batches, rng_of = build_step(model, method, length, dropout, pack)
    start = time.perf_counter()
    compiled = step.lower(state, batches[0], rng_of(0)).compile()
    compile_s = time.perf_counter() - start
    for i in range(2):  # warm-up
        state, metrics = compiled(state, batches[i % 4], rng_of(i))
    jax.block_until_ready(metrics)
    wall = []
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for i in range(steps):
            tic = time.perf_counter()
            state, metrics = compiled(state, batches[i % 4], rng_of(i))
            jax.block_until_ready(metrics)
            wall.append(time.perf_counter() - tic)
        jax.profiler.stop_trace()
        times = thunk_times(trace_dir)
    table = breakdown(compiled.as_text(), times, steps)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "flops": float((cost or {}).get("flops", 0.0)),
        "matmul_peak_gflops": matmul_peak(),
        "matmul_peak_bf16_gflops": matmul_peak(dtype="bfloat16"),
        "model": model,
        "method": method,
        "length": length,
        "pack": pack,
        "shape": list(batches[0]["input_ids"].shape),
        "dropout": dropout,
        "compile_s": compile_s,
        "step_ms": 1000 * sorted(wall)[len(wall) // 2],
        "ops": [{"phase": p, "family": f, "ms": ms} for (p, f), ms in table.items()],
    }


def report(result: dict) -> str:
    by_family: collections.Counter = collections.Counter()
    by_phase: collections.Counter = collections.Counter()
    cells: dict = collections.defaultdict(float)
    for op in result["ops"]:
        by_family[op["family"]] += op["ms"]
        by_phase[op["phase"]] += op["ms"]
        cells[(op["family"], op["phase"])] += op["ms"]
    total = sum(by_family.values())
    lines = [
        f"{result['model']} {result['method']}, "
        f"{'packed ' if result.get('pack') else ''}{' x '.join(map(str, result['shape']))}, "
        "dropout "
        f"{result['dropout']}: median step {result['step_ms']:.0f} ms (wall), op time "
        f"{total:.0f} ms summed over thunks; compile {result['compile_s']:.1f} s",
        "",
        "| op family | forward ms | backward ms | update ms | total ms | share |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for family in sorted(by_family, key=lambda f: -by_family[f]):
        row = [cells[(family, p)] for p in ("forward", "backward", "update")]
        lines.append(
            f"| {family} | {row[0]:.0f} | {row[1]:.0f} | {row[2]:.0f} | "
            f"{by_family[family]:.0f} | {100 * by_family[family] / total:.1f}% |"
        )
    phases = [by_phase[p] for p in ("forward", "backward", "update")]
    lines.append(
        f"| **all** | {phases[0]:.0f} | {phases[1]:.0f} | {phases[2]:.0f} | {total:.0f} | 100% |"
    )
    lines.append("")
    lines.append(f"backward / forward (traced op time) = {phases[1] / max(phases[0], 1e-9):.2f}")
    rate = result["flops"] / (result["step_ms"] / 1000) / 1e9
    lines.append(
        f"step: {result['flops'] / 1e9:.1f} GFLOP (XLA's cost analysis) at {rate:.0f} GFLOP/s "
        f"= {100 * rate / result['matmul_peak_gflops']:.0f}% of the plain matmul's "
        f"{result['matmul_peak_gflops']:.0f} GFLOP/s measured in this process "
        f"(bf16 inputs, f32 out: {result.get('matmul_peak_bf16_gflops', 0):.0f} GFLOP/s)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--method", default="full")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--pack", type=int, default=0, help="> 0: pack the 32 rows this wide")
    parser.add_argument("--out", help="also write the breakdown here as JSON")
    args = parser.parse_args(argv)
    result = profile(args.model, args.method, args.steps, args.length, args.dropout, args.pack)
    print(report(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
