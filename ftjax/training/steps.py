"""Compiled train and eval steps, and evaluation of a split into the task's metrics.

One executable per batch shape (few: lengths are bucketed). Neither step knows the task:
the train step differentiates `task.loss`, the eval step runs `task.eval_outputs`, and
`evaluate` adds up the sums, puts the per-row outputs in example order and lets
`task.finalize` turn them into metrics.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import jax
import numpy as np

from ftjax.core import partition
from ftjax.models import stacking
from ftjax.models.hub import stack_depths
from ftjax.training import sharding
from ftjax.training.config import compiler_options
from ftjax.training.experiment import Experiment
from ftjax.training.train import TrainState, make_train_step


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
        model = exp.task.model
        # Trainable stacked leaves of which only some layers train (scanned stacks).
        self.layer_masks = stacking.layer_masks(model, stack_depths(model), exp.mask)[1]
        self.compiled: dict[tuple, Any] = {}
        self.flops: dict[tuple, float] = {}  # per batch shape: global FLOPs of a step

    def _eval_outputs(self, state: TrainState, batch: dict):
        return self.exp.task.eval_outputs(partition.merge(state.trainable, state.frozen), batch)

    def compile_train(self, state: TrainState, batch: dict, rng: jax.Array) -> float:
        """Compiles the train step for this batch shape, once, apart from the timed steps;
        returns the seconds it took (0.0: compiled before)."""
        key = shape_key(batch)
        if key in self.compiled:
            return 0.0
        tic = time.perf_counter()
        global_batch = to_global(self.exp, batch, self.accumulate)
        replicated = sharding.replicated(self.exp.mesh)
        fn = jax.jit(
            make_train_step(self.exp.task.loss, self.exp.tx, self.accumulate, self.layer_masks),
            in_shardings=(
                self.shardings,
                {k: v.sharding for k, v in global_batch.items()},
                replicated,
            ),
            out_shardings=(self.shardings, replicated),
            donate_argnums=0,
        )
        with jax.set_mesh(self.exp.mesh):  # the models' activation constraints read it
            lowered = fn.lower(state, global_batch, rng)
        self.compiled[key] = lowered.compile(self.compiler_options)
        return time.perf_counter() - tic

    def step_flops(self, state: TrainState, batch: dict, rng: jax.Array) -> float:
        """FLOPs of one train step over the whole batch, all devices together (once per
        batch shape). The compiled executable's cost analysis is per device (after
        partitioning) and counts a loop's body once (a gradient-accumulation scan, a
        scanned layer stack), so the step is lowered (not compiled) without mesh or
        micro-batches, a scanned model through its unrolled twin: the same arithmetic,
        whole."""
        key = shape_key(batch)
        if key not in self.flops:
            task, whole_state, layer_masks = self._unrolled(state)
            whole = jax.jit(make_train_step(task.loss, self.exp.tx, 1, layer_masks))
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), batch)
            cost = whole.lower(whole_state, abstract, rng).cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            self.flops[key] = float((cost or {}).get("flops", 0.0))
        return self.flops[key]

    def _unrolled(self, state: TrainState) -> tuple[Any, TrainState, dict]:
        """(task, abstract state, per-layer masks) of the same step with its layers
        unrolled: for a scanned model a twin of the task on the unscanned model and the
        state's params at their canonical paths; else the experiment's own."""
        model = self.exp.task.model
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), state)
        if not stacking.is_scanned(model):
            return self.exp.task, abstract, self.layer_masks
        stacks = stack_depths(model)
        stored = {**abstract.trainable, **abstract.frozen}
        flat = jax.eval_shape(lambda f: stacking.to_canonical(model, stacks, f), stored)
        trainable, frozen = partition.split(flat, self.exp.mask)
        twin = copy.copy(self.exp.task)
        twin.model = stacking.unscanned(model)
        opt_state = jax.eval_shape(self.exp.tx.init, trainable)
        return twin, TrainState(abstract.step, trainable, frozen, opt_state), {}

    def train(self, state: TrainState, batch: dict, rng: jax.Array):
        self.compile_train(state, batch, rng)
        return self.compiled[shape_key(batch)](
            state, to_global(self.exp, batch, self.accumulate), rng
        )

    def evaluate(self, state: TrainState, role: str) -> dict[str, Any]:
        """The task's metrics on split `role` (plus loss and the number of examples)."""
        examples = self.exp.loader.examples(role)
        sums: dict[str, float] = {}
        per_row: dict[str, list] = {}
        order: list[np.ndarray] = []
        for batch, index in self.exp.loader.eval_batches(role):
            with jax.set_mesh(self.exp.mesh):
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
