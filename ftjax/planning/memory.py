"""The planner's arithmetic: per-device bytes and FLOPs of a train step from shapes.

Exact (from the shardings the run uses): params (trainable, frozen, by dtype), optimizer
state, gradients (one per trainable param, as sharded; twice with gradient
accumulation: the micro-batch's and the running sum), the batch.

Estimated from the model's shapes, the rows per device and `model.remat`:
- saved activations, per layer of each stack the loss runs: remat "full" keeps the
  layer's input (the residual stream; with dropout also a copy in the compute dtype);
  "dots_no_batch" also every projection's output (q, k, v, attention output, the
  feed-forward's matmuls; f32, as the matmuls accumulate); "dots" also the attention
  scores and context; "none" what autodiff keeps: the softmax output (f32), the
  attention weights in the compute dtype and the mask per score, q/k/v/context, four
  hidden-sized and three (plain) or six (gated) feed-forward-sized tensors;
- the working set at the peak, the larger of (a) one layer's backward: the attention's
  scores, probabilities and their gradients (two f32 and two compute-dtype buffers of
  rows x heads x queries x keys, and with attention dropout two uint32 of its hashed
  bits), the layer's weights gathered whole when FSDP shards them, and the LM head's
  table gathered (XLA keeps it through the layers' backward), and (b) the loss: its
  logits (three f32 buffers and one in the compute dtype per row x position x
  vocabulary entry) with the table gathered in the compute dtype and twice in the
  matmuls' operand dtype (as is and transposed);
- without `scan_layers`, FSDP's gathered weights of every layer, kept from its forward
  to its backward (an unrolled stack shares one gather between them).

The counts were read off XLA's buffer assignment for ftjax's layers (attention is
materialised, softmax in f32) and checked against `memory_analysis()` for Llama-2-7B,
BERT-large and T5-XL shapes (benchmarks/RESULTS.md). `Target` says how the backend
stores things: XLA:CPU has no bf16 arithmetic, so it runs bf16 matmuls and elementwise
ops in f32 and keeps their results in f32 (excess precision), converts bf16 weight
shards to f32 before gathering them and holds an f32 copy of every bf16 frozen shard.
TPUs and GPUs keep the compute dtype. `--check` compiles on XLA:CPU and so compares
with the "cpu" target; the accelerator targets drop exactly those copies, unchecked.

FLOPs (analytic, per step, the whole batch): matmuls 2 x tokens x the weights they read,
attention 4 x tokens x keys x heads x head_dim per layer, the logits; the backward
costs the forward again (gradients of the activations, taken through every layer the
loss runs) plus 2 x tokens x trainable matmul weights (frozen weights need no weight
gradient); remat "full" recomputes the layers' forward, "dots_no_batch" the attention.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

from ftjax.models import hub
from ftjax.planning.abstract import Setup, abstract_batch, abstract_state
from ftjax.training import sharding
from ftjax.training.train import TrainState

F32 = 4


@dataclasses.dataclass(frozen=True)
class Target:
    """How a backend stores what the step computes (see the module docstring)."""

    name: str
    f32_arithmetic: bool  # bf16 matmuls / elementwise ops run and are kept in f32


TARGETS = {
    "cpu": Target("cpu", f32_arithmetic=True),
    "tpu": Target("tpu", f32_arithmetic=False),
    "gpu": Target("gpu", f32_arithmetic=False),
}


@dataclasses.dataclass(frozen=True)
class Stack:
    """One layer stack the loss runs, per device: its shapes and its per-layer weights."""

    name: str
    depth: int
    rows: int  # examples per device (per micro-batch)
    queries: int  # sequence length (with a soft prompt's positions)
    keys: int  # self-attention keys (with a prefix's)
    cross: int  # encoder positions a decoder layer attends to (T5), else 0
    hidden: int
    heads: int  # per device (tensor parallelism splits heads)
    qkv: int  # widths of q + k + v per device
    head_dim: int
    ffn: int  # per device
    ffn_inputs: int  # 2: gated (two input matmuls), 1: plain
    layer_weights: int  # elements of one layer's weights, per device after gathering


@dataclasses.dataclass
class Plan:
    """Per-device bytes (`parts`, `total`) and whole-step FLOPs of one train step."""

    target: str
    parts: dict[str, float]
    params_by_dtype: dict[str, float]  # "trainable float32": bytes, "frozen bfloat16": ...
    flops: dict[str, float]
    stacks: list[Stack]

    @property
    def total(self) -> float:
        return sum(self.parts.values())


# ---------------------------------------------------------------------------- exact


def shard_bytes(leaf: Any) -> float:
    """Bytes one device holds of an abstract array placed by its sharding."""
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    return float(math.prod(shape) * np.dtype(leaf.dtype).itemsize)


def _sum_bytes(leaves: Iterable[Any]) -> float:
    return sum(shard_bytes(leaf) for leaf in leaves)


def state_bytes(state: TrainState) -> dict[str, Any]:
    """Per-device bytes of params by role and dtype, and of the optimizer state."""
    by_dtype: dict[str, float] = defaultdict(float)
    for role, leaves in (("trainable", state.trainable), ("frozen", state.frozen)):
        for leaf in leaves.values():
            by_dtype[f"{role} {np.dtype(leaf.dtype).name}"] += shard_bytes(leaf)
    return {
        "trainable": _sum_bytes(state.trainable.values()),
        "frozen": _sum_bytes(state.frozen.values()),
        "optimizer": _sum_bytes(jax.tree.leaves(state.opt_state)),
        "by_dtype": dict(by_dtype),
    }


# ---------------------------------------------------------------------------- shapes


def _unreached(setup: Setup) -> list[re.Pattern]:
    return [re.compile(p) for p in setup.task.unreached()]


def stacks(setup: Setup) -> list[Stack]:
    """The layer stacks the task's loss runs (T5's decoder is skipped by tasks that pool
    encoder features), with the per-device sizes the estimate needs."""
    cfg, mesh = setup.model.config, setup.mesh
    family = hub.family_of(setup.model)
    tensor = mesh.shape["tensor"]
    rows = setup.config.data.batch_size // setup.accumulate // sharding.batch_divisor(mesh)
    limits = setup.task.group_limits()
    peft = cfg.peft
    unreached = _unreached(setup)
    params = {**setup.trainable, **setup.frozen}
    found = family.stacks(cfg)
    out = []
    for name, depth in found:
        inside = {p: v for p, v in params.items() if p.startswith(f"{name}/")}
        if all(any(r.fullmatch(p) for r in unreached) for p in inside):
            continue  # the loss never runs this stack
        decoder = len(found) == 2 and name == found[1][0]
        length = limits["target"] if decoder else limits["source"]
        queries = length + (0 if decoder else peft.prompt_length)
        weights = sum(math.prod(v.shape) for p, v in inside.items() if v.ndim >= 2)
        heads, kv = cfg.num_heads, cfg.num_kv_heads
        out.append(
            Stack(
                name=name,
                depth=depth,
                rows=rows,
                queries=queries,
                keys=queries + peft.prefix_length,
                cross=limits["source"] + peft.prompt_length if decoder else 0,
                hidden=cfg.hidden_size,
                heads=max(heads // tensor, 1),
                qkv=(heads + 2 * kv) * cfg.head_dim // tensor,
                head_dim=cfg.head_dim,
                ffn=cfg.intermediate_size // tensor,
                ffn_inputs=2 if _gated(cfg) else 1,
                layer_weights=weights // depth // tensor,
            )
        )
    return out


def _gated(cfg: Any) -> bool:
    """Llama's SwiGLU and T5 v1.1's gated GELU read two input matmuls."""
    return bool(getattr(cfg, "gated_mlp", type(cfg).__name__ == "LlamaConfig"))


def _vocab(setup: Setup) -> tuple[int, int]:
    """(vocabulary size per device, positions whose logits the loss reads); 0 positions
    for tasks that pool features (XLA drops the unused LM head)."""
    cfg = setup.model.config
    vocab = cfg.vocab_size // setup.mesh.shape["tensor"]
    if setup.task.name in ("classification", "regression"):
        return vocab, 0
    limits = setup.task.group_limits()
    return vocab, limits["target"] if "target" in limits else limits["source"]


# ---------------------------------------------------------------------------- estimate


def saved_per_layer(s: Stack, remat: str, act: int, compute: int, dropout: bool) -> float:
    """Bytes one layer keeps for its backward under `remat` (module docstring)."""
    tokens = s.rows * s.queries
    carry = tokens * s.hidden * (act + (compute if dropout else 0))
    if remat == "full":
        return carry
    scores = s.rows * s.heads * s.queries * (s.keys + s.cross)
    context = tokens * s.heads * s.head_dim
    projections = tokens * (s.qkv + 2 * s.hidden + s.ffn_inputs * s.ffn) * F32
    if s.cross:  # cross-attention's query, output and its keys / values over the source
        projections += (2 * tokens + 2 * s.rows * s.cross) * s.hidden * F32
    if remat == "dots_no_batch":
        return carry + projections
    if remat == "dots":
        return carry + projections + (scores + context) * F32
    if remat != "none":
        raise ValueError(f"model.remat={remat!r}: none, full, dots or dots_no_batch")
    ffn_tensors = 3 * s.ffn_inputs
    kept = scores * (F32 + compute + 1) + tokens * (s.qkv + s.heads * s.head_dim) * act
    return carry + kept + tokens * (4 * s.hidden + ffn_tensors * s.ffn) * act


def layer_working_set(s: Stack, compute: int, weight: int, gathered: bool, dropout: bool) -> float:
    """Bytes of one layer's backward at its peak: the larger attention's scores,
    probabilities and their gradients (and, with attention dropout, its hashed bits:
    one uint32 per score), and the layer's weights when gathered."""
    largest = s.rows * s.heads * s.queries * max(s.keys, s.cross)
    per_score = 2 * F32 + 2 * compute + (2 * F32 if dropout else 0)
    return largest * per_score + (s.layer_weights * weight if gathered else 0)


def attention_dropout(cfg: Any) -> bool:
    """Whether the attention probabilities see dropout (each family names its rate)."""
    return any(getattr(cfg, f, 0.0) > 0 for f in ("attention_dropout", "dropout"))


def estimate(setup: Setup, target: Target) -> Plan:
    """The planner's per-device bytes and whole-step FLOPs for `setup` on `target`."""
    cfg = setup.model.config
    state, _ = abstract_state(setup)
    held = state_bytes(state)
    compute = np.dtype(cfg.dtype).itemsize
    f32_arith = target.f32_arithmetic and compute < F32
    act = F32 if f32_arith else compute  # bytes per stored activation element
    weight = F32 if f32_arith else compute  # bytes per matmul weight operand
    remat = getattr(cfg, "remat", "none")
    gathered = setup.mesh.shape["fsdp"] > 1  # FSDP gathers each layer's weights for use
    found = stacks(setup)

    dropout = attention_dropout(cfg)
    saved = sum(s.depth * saved_per_layer(s, remat, act, compute, dropout) for s in found)
    layer_peak = max(
        (layer_working_set(s, compute, weight, gathered, dropout) for s in found), default=0
    )
    vocab, positions = _vocab(setup)
    rows = found[0].rows if found else 0
    # The LM head's table gathered: kept through the layers' backward (in the matmul
    # operands' dtype); at the logits also in the compute dtype and transposed.
    table = vocab * cfg.hidden_size if gathered and positions else 0
    logits = rows * positions * vocab * (3 * F32 + compute) + table * (compute + 2 * weight)
    grads = held["trainable"] * (2 if setup.accumulate > 1 else 1)
    parts = {
        "params trainable": held["trainable"],
        "params frozen": held["frozen"],
        "optimizer state": held["optimizer"],
        "gradients": grads,
        "batch": sum(shard_bytes(v) for v in abstract_batch(setup).values()),
        "activations saved": saved,
        "working set": max(layer_peak + table * weight, logits),
    }
    if gathered and not cfg.scan_layers:
        # Unrolled, each layer's gathered weights serve its forward and its backward, so
        # XLA keeps every layer's (on XLA:CPU also their f32 and transposed copies).
        kept = compute + 2 * weight if f32_arith else compute
        parts["gathered weights (unrolled)"] = sum(s.depth * s.layer_weights for s in found) * kept
    if target.f32_arithmetic:  # an f32 copy of each bf16 frozen shard (module docstring)
        low = sum(v for k, v in held["by_dtype"].items() if k.startswith("frozen") and "16" in k)
        parts["f32 copies of bf16 frozen params"] = 2 * low
    return Plan(target.name, parts, held["by_dtype"], flops(setup, found, remat), found)


# ---------------------------------------------------------------------------- FLOPs


def flops(setup: Setup, found: list[Stack], remat: str) -> dict[str, float]:
    """Whole-step FLOPs (all devices, whole batch): forward, backward, remat's recompute."""
    cfg = setup.model.config
    whole = sharding.batch_divisor(setup.mesh) * setup.accumulate  # per-device rows -> batch
    tensor = setup.mesh.shape["tensor"]
    params = {**setup.trainable, **setup.frozen}
    matmul = {p for p, v in params.items() if v.ndim >= 2 and not p.endswith("embedding")}
    dense = attention = weight_grads = 0.0
    for s in found:
        tokens = s.rows * whole * s.queries
        in_stack = [p for p in matmul if p.startswith(f"{s.name}/")]
        dense += 2 * tokens * sum(math.prod(params[p].shape) for p in in_stack)
        trained = sum(math.prod(params[p].shape) for p in in_stack if p in setup.trainable)
        weight_grads += 2 * tokens * trained
        keys = s.keys + s.cross
        attention += 4 * tokens * s.heads * tensor * keys * s.head_dim * s.depth
    vocab, positions = _vocab(setup)
    logits = 2 * setup.config.data.batch_size * positions * vocab * tensor * cfg.hidden_size
    if any(p.startswith("lm_head/") or p.endswith("embedding") for p in setup.trainable):
        weight_grads += logits
    recompute = {"full": dense + attention, "dots_no_batch": attention}.get(remat, 0.0)
    forward = dense + attention + logits
    out = {"forward": forward, "backward": forward + weight_grads, "remat recompute": recompute}
    out["total"] = sum(out.values())
    return out


def table_rows(plan: Plan, xla: Mapping[str, int] | None = None) -> list[tuple[str, str]]:
    """(name, bytes) rows of a plan, and XLA's next to them when given."""
    rows = [(name, gib(value)) for name, value in plan.parts.items()]
    rows.append(("total (planned)", gib(plan.total)))
    if xla:
        for name in ("argument", "output", "alias", "temp", "code"):
            rows.append((f"XLA {name}", gib(xla[name])))
        rows.append(("XLA total", gib(xla["total"])))
        rows.append(("planned / XLA", f"{plan.total / xla['total']:.3f}"))
    return rows


def gib(value: float) -> str:
    """Bytes in GiB, or MiB below one GiB."""
    if value < 2**30:
        return f"{value / 2**20:.1f} MiB"
    return f"{value / 2**30:.3f} GiB"
