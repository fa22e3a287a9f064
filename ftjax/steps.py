"""Compiled train and eval steps, and evaluation of a split into the task's metrics.

One executable per batch shape (few: lengths are bucketed). Neither step knows the task:
the train step differentiates `task.loss`, the eval step runs `task.eval_outputs`, and
`evaluate` adds up the sums, puts the per-row outputs in example order and lets
`task.finalize` turn them into metrics.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from ftjax import partition, sharding
from ftjax.config import compiler_options
from ftjax.experiment import Experiment
from ftjax.train import TrainState, make_train_step


def split_micro_batches(batch: dict, accumulate: int) -> dict:
    """(accumulate, rows / accumulate, ...) per field when accumulating gradients."""
    if accumulate == 1:
        return batch
    return {k: v.reshape(accumulate, -1, *v.shape[1:]) for k, v in batch.items()}


def to_global(exp: Experiment, batch: dict, accumulate: int = 1) -> dict:
    """The loader's whole batch (the same on every process) as global arrays on the mesh:
    train micro-batches and eval batches alike."""
    return sharding.global_batch(split_micro_batches(batch, accumulate), exp.mesh, accumulate > 1)


def shape_key(batch: dict) -> tuple:
    return tuple((k, np.shape(v)) for k, v in batch.items())


class Steps:
    def __init__(self, exp: Experiment, shardings: TrainState):
        self.exp, self.shardings = exp, shardings
        self.accumulate = exp.config.optimizer.grad_accum
        replicated = sharding.replicated(exp.mesh)
        self.compiler_options = compiler_options(exp.config)
        # Outputs replicated: every process reads whole sums and per-row outputs.
        self.eval_fn = jax.jit(
            self._eval_outputs, out_shardings=replicated, compiler_options=self.compiler_options
        )
        self.compiled: dict[tuple, Any] = {}
        self.flops: dict[tuple, float] = {}

    def _eval_outputs(self, state: TrainState, batch: dict):
        return self.exp.task.eval_outputs(partition.merge(state.trainable, state.frozen), batch)

    def train(self, state: TrainState, batch: dict, rng: jax.Array):
        key = shape_key(batch)
        if key not in self.compiled:
            global_batch = to_global(self.exp, batch, self.accumulate)
            replicated = sharding.replicated(self.exp.mesh)
            fn = jax.jit(
                make_train_step(self.exp.task.loss, self.exp.tx, self.accumulate),
                in_shardings=(
                    self.shardings,
                    {k: v.sharding for k, v in global_batch.items()},
                    replicated,
                ),
                out_shardings=(self.shardings, replicated),
                donate_argnums=0,
            )
            compiled = fn.lower(state, global_batch, rng).compile(self.compiler_options)
            self.compiled[key] = compiled
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            self.flops[key] = float((cost or {}).get("flops", 0.0))
        return self.compiled[key](state, to_global(self.exp, batch, self.accumulate), rng)

    def evaluate(self, state: TrainState, role: str) -> dict[str, Any]:
        """The task's metrics on split `role` (plus loss and the number of examples)."""
        examples = self.exp.loader.examples(role)
        sums: dict[str, float] = {}
        per_row: dict[str, list] = {}
        order: list[np.ndarray] = []
        for batch, index in self.exp.loader.eval_batches(role):
            batch_sums, rows = self.eval_fn(state, to_global(self.exp, batch))
            for key, value in batch_sums.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            for key, value in rows.items():
                per_row.setdefault(key, []).extend(np.asarray(value)[: len(index)])
            order.append(index)
        position = np.argsort(np.concatenate(order), kind="stable") if order else []
        per_row = {k: [v[i] for i in position] for k, v in per_row.items()}
        metrics = {"loss": sums["loss_sum"] / max(sums.get("count", 0.0), 1.0)}
        metrics.update(self.exp.task.finalize(sums, per_row, examples))
        metrics["examples"] = len(examples)
        return metrics
