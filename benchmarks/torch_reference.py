"""The PyTorch reference: Hugging Face transformers + PEFT on ftjax's default task.

    python benchmarks/torch_reference.py [--methods full,lora,prefix,prompt,probe]
        [--epochs 2] [--max-steps N] [--model DIR] [--data sentiment] [--threads N]
        [--bf16] [--out FILE.json]

Needs the `test` extra (torch, peft). The setting is ftjax's default run, so the
figures sit beside experiments/RESULTS.md's methods table: the bundled MiniLM as
`AutoModelForSequenceClassification` (BERT's [CLS] pooler + dropout + linear
classifier), the `sentiment` splits, max length 64, batch 32 padded to the batch's
longest row (dynamic padding, the usual PyTorch recipe), 2 epochs, seed 0, AdamW
(weight decay 0.01, not on biases and LayerNorm, as ftjax), linear schedule with 6%
warmup, global-norm clipping 1.0, each method at ftjax's default learning rate; float32,
or with `--bf16` under `torch.autocast("cpu", torch.bfloat16)`, PyTorch's mixed precision
(beside ftjax's `--config.model.matmul_precision=bfloat16`).

Methods: `full`; `lora` (PEFT, r=8, alpha=16, dropout 0 on query/value: ftjax's
defaults); `prefix` (PEFT prefix tuning, 20 virtual tokens, no reparameterisation);
`prompt` (PEFT prompt tuning, 20 random virtual tokens); `probe` (the pretrained
backbone and pooler frozen, only the linear classifier trains on the pooler's output;
the backbone runs every step). PEFT methods also train the classifier
(`modules_to_save`), as ftjax trains its head.

Each method runs in its own forked process (after the imports), so its peak RSS is its
own. Reported per method: test accuracy, median step time (forward, backward, clipping
and the optimizer; the first step excluded as warm-up), padded tokens per row, ms per
1k padded tokens (median step / padded tokens of a full batch), peak RSS and wall
seconds (data, model, training, validation after each epoch, test; not the imports).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import datasets
import peft
import torch
import transformers
from torch.utils.data import DataLoader

from ftjax.training.config import METHOD_LEARNING_RATES

METHODS = ("full", "lora", "prefix", "prompt", "probe")
BATCH, EVAL_BATCH, MAX_LENGTH, NUM_LABELS = 32, 64, 64, 2
WEIGHT_DECAY, BETAS, EPS, WARMUP_RATIO, GRAD_CLIP = 0.01, (0.9, 0.999), 1e-8, 0.06, 1.0
VIRTUAL_TOKENS = 20
LOG_EVERY = 50
Tokenizer = transformers.PreTrainedTokenizerBase


def peft_config(method: str) -> peft.PeftConfig | None:
    """The PEFT config of `method`; None for methods PEFT does not wrap."""
    task = peft.TaskType.SEQ_CLS
    if method == "lora":
        return peft.LoraConfig(
            task_type=task, r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"]
        )
    if method == "prefix":
        return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=VIRTUAL_TOKENS)
    if method == "prompt":
        return peft.PromptTuningConfig(
            task_type=task,
            num_virtual_tokens=VIRTUAL_TOKENS,
            prompt_tuning_init=peft.PromptTuningInit.RANDOM,
        )
    return None


def build_model(method: str, model_dir: str) -> torch.nn.Module:
    """The classifier with `method`'s parameters trainable."""
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=NUM_LABELS
    )
    if method == "probe":
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("classifier.")
        return model
    config = peft_config(method)
    return peft.get_peft_model(model, config) if config else model


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW over the trainable params; no weight decay on biases and norms (as ftjax)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            no_wd = name.endswith("bias") or "LayerNorm" in name or param.ndim < 2
            (no_decay if no_wd else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=EPS)


def encode(split: datasets.Dataset, tokenizer: Tokenizer) -> list[dict]:
    """Rows -> token ids (truncated, unpadded) and labels."""
    encoded = tokenizer(list(split["text"]), truncation=True, max_length=MAX_LENGTH)
    keys = list(encoded.keys())
    return [
        {**{k: encoded[k][i] for k in keys}, "labels": int(label)}
        for i, label in enumerate(split["label"])
    ]


def loaders(data: str, tokenizer: Tokenizer, seed: int) -> dict[str, DataLoader]:
    """Train (shuffled, seeded) and eval loaders; each batch padded to its longest row."""
    from ftjax.data.splits import load_splits

    splits = load_splits(data)
    collate = transformers.DataCollatorWithPadding(tokenizer)
    shuffle = torch.Generator().manual_seed(seed)
    return {
        name: DataLoader(
            encode(splits[name], tokenizer),
            batch_size=BATCH if name == "train" else EVAL_BATCH,
            shuffle=name == "train",
            generator=shuffle if name == "train" else None,
            collate_fn=collate,
        )
        for name in ("train", "validation", "test")
    }


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for batch in loader:
        labels = batch.pop("labels")
        correct += int((model(**batch).logits.argmax(-1) == labels).sum())
        total += len(labels)
    model.train()
    return correct / total


def train_step(
    model: torch.nn.Module,
    batch: dict,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[float, torch.Tensor]:
    """One optimizer step; returns its seconds and loss."""
    tic = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], GRAD_CLIP)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - tic, loss.detach()


def train(model: torch.nn.Module, data: dict[str, DataLoader], lr: float, total: int) -> dict:
    """Trains `total` steps, validating after each epoch and at the end (as ftjax)."""
    optimizer = make_optimizer(model, lr)
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, round(WARMUP_RATIO * total), total
    )
    per_epoch = len(data["train"])
    step, step_times, padded, rows, validation = 0, [], 0, 0, None
    model.train()
    while step < total:
        for batch in data["train"]:
            padded += batch["input_ids"].numel()
            rows += len(batch["input_ids"])
            seconds, loss = train_step(model, batch, optimizer, scheduler)
            step_times.append(seconds)
            step += 1
            if step % LOG_EVERY == 0:  # a 2-epoch run takes minutes: show it is moving
                print(f"step {step}/{total} loss {float(loss):.4f}", file=sys.stderr, flush=True)
            if step % per_epoch == 0 or step == total:
                validation = accuracy(model, data["validation"])
            if step == total:
                break
    timed = step_times[1:] or step_times  # the first step warms up the allocator
    return {
        "steps": step,
        "median_step_ms": 1000 * statistics.median(timed),
        "padded_tokens_per_row": padded / rows,
        "validation_accuracy": validation,
    }


def run_method(method: str, args: argparse.Namespace) -> dict:
    """Everything for one method: data, model, training, test. Runs in its own process."""
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    transformers.set_seed(args.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    data = loaders(args.data, tokenizer, args.seed)
    model = build_model(method, args.model)
    total = args.max_steps or args.epochs * len(data["train"])
    lr = METHOD_LEARNING_RATES[method]
    result = {"method": method, "lr": lr, "trainable_pct": trainable_pct(model), "bf16": args.bf16}
    with precision(args.bf16):
        result.update(train(model, data, lr, total))
        result["test_accuracy"] = accuracy(model, data["test"])
    full_batch_k_tokens = BATCH * result["padded_tokens_per_row"] / 1000
    result["ms_per_1k_padded_tokens"] = result["median_step_ms"] / full_batch_k_tokens
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["wall_s"] = time.perf_counter() - start
    return result


def precision(bf16: bool):
    """PyTorch's mixed precision on CPU: linear layers (and so their gradients) in bf16."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def trainable_pct(model: torch.nn.Module) -> float:
    params = list(model.parameters())
    return 100 * sum(p.numel() for p in params if p.requires_grad) / sum(p.numel() for p in params)


def run_isolated(method: str, args: argparse.Namespace) -> dict:
    """`run_method` in a forked child: peak RSS is the method's own, imports are shared."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        return pool.submit(run_method, method, args).result()


def report(rows: list[dict]) -> str:
    lines = [
        "| method | lr | trainable % | test accuracy | median step ms | padded tokens/row "
        "| ms per 1k padded tokens | peak RSS MB | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['lr']:g} | {r['trainable_pct']:.3f}% | "
            f"{r['test_accuracy']:.3f} | {r['median_step_ms']:.0f} | "
            f"{r['padded_tokens_per_row']:.1f} | {r['ms_per_1k_padded_tokens']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=0, help=">0: stop after N steps")
    parser.add_argument("--model", help="a transformers checkpoint folder (default: minilm)")
    parser.add_argument("--data", default="sentiment", help="an ftjax data source")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--bf16", action="store_true",
        help="torch.autocast to bfloat16 (the counterpart of model.matmul_precision=bfloat16)",
    )  # fmt: skip
    parser.add_argument("--out", help="write the settings and rows here as JSON")
    args = parser.parse_args(argv)
    args.methods = args.methods.split(",")
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if not args.model:
        from ftjax.data import assets

        args.model = str(assets.fetch("minilm"))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for method in args.methods:
        rows.append(run_isolated(method, args))
        print(json.dumps(rows[-1]), flush=True)
    print(report(rows))
    if args.out:
        versions = {m.__name__: m.__version__ for m in (torch, transformers, peft)}
        with open(args.out, "w") as f:
            json.dump({"settings": {**vars(args), **versions}, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
