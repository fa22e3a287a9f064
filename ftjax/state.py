"""The train state placed on the mesh: params by their logical-axis rules, optimizer
state beside the params it belongs to."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax import partition, sharding
from ftjax.experiment import Experiment
from ftjax.models import param_axes, stacking
from ftjax.models.base import frozen_dtype
from ftjax.models.hub import stack_depths
from ftjax.train import TrainState


def param_specs(exp: Experiment) -> dict[str, tuple]:
    """Logical axes of every param (backbone and task head), flat."""
    backbone = partition.flatten(param_axes(exp.task.model))
    head = partition.flatten(exp.task.head_axes())
    return {path: tuple(spec) for path, spec in {**backbone, **head}.items()}


def state_shardings(exp: Experiment, trainable: dict, frozen: dict) -> TrainState:
    specs = param_specs(exp)
    shapes = {p: np.shape(v) for p, v in {**trainable, **frozen}.items()}
    shard = sharding.param_shardings(specs, shapes, exp.mesh)
    repl = sharding.replicated(exp.mesh)
    abstract_opt = jax.eval_shape(exp.tx.init, trainable)

    def opt_leaf(state_leaf, param_sharding, shape):
        # Adam moments mirror their param; Adafactor's factored rows/cols do not.
        return param_sharding if state_leaf.shape == shape else repl

    trainable_shard = {p: shard[p] for p in trainable}
    opt_shard = optax.tree_map_params(
        exp.tx,
        opt_leaf,
        abstract_opt,
        trainable_shard,
        {p: shapes[p] for p in trainable},
        transform_non_params=lambda _: repl,
    )
    return TrainState(
        step=repl,
        trainable=trainable_shard,
        frozen={p: shard[p] for p in frozen},
        opt_state=opt_shard,
    )


def stored_params(exp: Experiment) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """(trainable, frozen, per-layer update masks) as the compiled steps hold them: the
    experiment's canonical params in the model's own layout (stacked when it scans its
    layers, `models.stacking`), frozen ones stored as `model.param_dtype` (trainable
    ones stay float32 master weights)."""
    model = exp.task.model
    stacks = stack_depths(model)
    flat = stacking.to_storage(model, stacks, partition.flatten(exp.params))
    mask, layer_masks = stacking.layer_masks(model, stacks, exp.mask)
    trainable, frozen = partition.split(flat, mask)
    frozen = {
        p: np.asarray(v).astype(frozen_dtype(model.config, v.dtype), copy=False)
        for p, v in frozen.items()
    }
    return trainable, frozen, layer_masks


def canonical_params(exp: Experiment, state: TrainState) -> dict:
    """A state's params on the host at their per-layer paths (`stored_params` undone)."""
    every = {**state.trainable, **state.frozen}
    flat = {p: np.asarray(jax.device_get(v)) for p, v in every.items()}
    model = exp.task.model
    return partition.unflatten(stacking.to_canonical(model, stack_depths(model), flat))


def initial_state(exp: Experiment) -> tuple[TrainState, TrainState]:
    """(state, its shardings): params placed by the rules, optimizer state beside them."""
    trainable, frozen, _ = stored_params(exp)
    shardings = state_shardings(exp, trainable, frozen)
    trainable = {p: sharding.place(v, shardings.trainable[p]) for p, v in trainable.items()}
    frozen = {p: sharding.place(v, shardings.frozen[p]) for p, v in frozen.items()}
    opt_state = jax.jit(exp.tx.init, out_shardings=shardings.opt_state)(trainable)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
    return TrainState(step, trainable, frozen, opt_state), shardings
