"""The train state placed on the mesh: params by their logical-axis rules, optimizer
state beside the params it belongs to."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax.core import partition
from ftjax.models import param_axes, stacking
from ftjax.models.base import frozen_dtype
from ftjax.models.hub import stack_depths
from ftjax.training import sharding
from ftjax.training.experiment import Experiment
from ftjax.training.train import TrainState


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


def stored_params(exp: Experiment) -> tuple[dict, dict, dict]:
    """(trainable, frozen, {storage path: (its canonical values, stacked?)}): the params as
    the compiled steps hold them, abstract (`jax.ShapeDtypeStruct`): in the model's own
    layout (a scanned stack's layers stacked, `models.stacking`), frozen ones stored as
    `model.param_dtype` (trainable ones stay float32 master weights). The sources say
    what each is made of (one canonical param, or a stack's layers in order)."""
    model = exp.task.model
    stacks = stack_depths(model)
    layers_of: dict[str, list] = {}

    def collect(path: str, layers: list) -> jax.ShapeDtypeStruct:
        layers_of[path] = layers
        return jax.ShapeDtypeStruct((len(layers), *np.shape(layers[0])), layers[0].dtype)

    flat = stacking.to_storage(model, stacks, partition.flatten(exp.params), stack=collect)
    mask, _ = stacking.layer_masks(model, stacks, exp.mask)
    abstract, sources = {}, {}
    for path, value in flat.items():
        dtype = np.float32 if mask[path] else frozen_dtype(model.config, value.dtype)
        abstract[path] = jax.ShapeDtypeStruct(np.shape(value), dtype)
        sources[path] = (layers_of[path], True) if path in layers_of else ([value], False)
    trainable, frozen = partition.split(abstract, mask)
    return trainable, frozen, sources


@functools.cache
def _converter(stacked: bool, dtype: np.dtype, target: jax.sharding.Sharding):
    """A jit building one stored param from its canonical value(s) on their devices."""

    def convert(values: list) -> jax.Array:
        return (jnp.stack(values) if stacked else values[0]).astype(dtype)

    return jax.jit(convert, out_shardings=target)


def _store(values: list, stacked: bool, dtype: np.dtype, target: jax.sharding.Sharding):
    """One stored param in `target`. A canonical param already in place (loaded sharded,
    unstacked, its dtype kept) is used as it is: no copy; a host value (a task head) is
    handed over slice by slice; the rest (stacked or cast) is built on the devices, the
    host zeros of a stack's inert LoRA layers beside global arrays."""
    first = values[0]
    if not stacked and np.dtype(first.dtype) == dtype:
        if isinstance(first, jax.Array) and first.sharding.device_set == target.device_set:
            return jax.device_put(first, target)  # a no-op when it is laid out so already
        return sharding.place(np.asarray(first), target)
    return _converter(stacked, dtype, target)(values)


def canonical_params(exp: Experiment, state: TrainState) -> dict:
    """A state's params on the host at their per-layer paths (`stored_params` undone)."""
    every = {**state.trainable, **state.frozen}
    flat = {p: np.asarray(jax.device_get(v)) for p, v in every.items()}
    model = exp.task.model
    return partition.unflatten(stacking.to_canonical(model, stack_depths(model), flat))


def initial_state(exp: Experiment) -> tuple[TrainState, TrainState]:
    """(state, its shardings): params laid out by the rules, optimizer state beside them.
    Built on the devices the params were loaded onto: nothing is gathered to a host.

    The state takes over the experiment's params: their device buffers become the state's
    (no second copy of the model on the devices; the train step donates them), and
    `exp.params` keeps their shapes and dtypes (`jax.ShapeDtypeStruct`), which is what
    counts and tables read. Values live in the state from here on (`state.params`)."""
    if any(isinstance(v, jax.ShapeDtypeStruct) for v in partition.flatten(exp.params).values()):
        raise ValueError(
            "initial_state: this experiment's params were moved into a train state already "
            "(exp.params holds only their shapes); build the experiment again for a new one"
        )
    trainable, frozen, sources = stored_params(exp)
    shardings = state_shardings(exp, trainable, frozen)
    targets = {**shardings.trainable, **shardings.frozen}
    abstract = {**trainable, **frozen}
    stored = {
        path: _store(values, stacked, np.dtype(abstract[path].dtype), targets[path])
        for path, (values, stacked) in sources.items()
    }
    trainable = {p: stored[p] for p in trainable}
    frozen = {p: stored[p] for p in frozen}
    opt_state = jax.jit(exp.tx.init, out_shardings=shardings.opt_state)(trainable)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
    exp.params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(np.shape(v), v.dtype), exp.params)
    return TrainState(step, trainable, frozen, opt_state), shardings
