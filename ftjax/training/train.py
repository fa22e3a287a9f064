"""The method-agnostic train step: gradients for the trainable params only.

The trainer never asks which fine-tuning method runs. It gets a boolean mask over
parameter paths (from `ftjax.core.partition.trainable_mask`), keeps the params as two flat
pytrees, differentiates the loss with respect to the trainable one only (so XLA computes
no weight gradient for frozen params, which `optax.set_to_zero` would still pay for),
and gives the optimizer only the trainable leaves (so its state holds nothing else).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax
from flax import struct

from ftjax.core import partition

# (params, batch, rng) -> (loss, aux); rng None means evaluation (no dropout).
LossFn = Callable[[dict, dict, Any], tuple[jax.Array, dict]]


@struct.dataclass
class TrainState:
    step: jax.Array
    trainable: dict[str, jax.Array]  # flat {path: leaf}
    frozen: dict[str, jax.Array]  # flat {path: leaf}
    opt_state: Any

    @property
    def params(self) -> dict:
        return partition.merge(self.trainable, self.frozen)


def create_state(
    params: dict, mask: Mapping[str, bool], tx: optax.GradientTransformation
) -> TrainState:
    trainable, frozen = partition.split(params, mask)
    return TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32),
        trainable=trainable,
        frozen=frozen,
        opt_state=tx.init(trainable),
    )


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    accumulate: int = 1,
    layer_masks: Mapping[str, np.ndarray] | None = None,
):
    """(state, batch, rng) -> (state, metrics); jit it (with shardings) at the call site.

    With `accumulate > 1` every batch array has a leading micro-batch axis; gradients of
    the micro-batches are summed in a scan, each weighted by its number of real examples
    (`aux["weight"]`), so the update equals that of one big batch.

    `layer_masks` ({path: [depth] bool}) names the trainable leaves that stack several
    layers of which only some train (a scanned stack, `models.stacking.layer_masks`):
    their gradients and updates are zeroed on the other layers, so those stay as loaded.
    """
    layer_masks = dict(layer_masks or {})

    def masked(tree: dict) -> dict:
        return {
            path: (leaf * _along_first(layer_masks[path], leaf) if path in layer_masks else leaf)
            for path, leaf in tree.items()
        }

    def grads_of(trainable, frozen, batch, rng):
        def loss_of_trainable(t):
            return loss_fn(partition.merge(t, frozen), batch, rng)

        (loss, aux), grads = jax.value_and_grad(loss_of_trainable, has_aux=True)(trainable)
        return loss, aux["weight"], grads

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        if accumulate == 1:
            loss, _, grads = grads_of(state.trainable, state.frozen, batch, rng)
        else:

            def micro(carry, inputs):
                loss_sum, weight_sum, grad_sum = carry
                index, micro_batch = inputs
                loss, weight, grads = grads_of(
                    state.trainable, state.frozen, micro_batch, jax.random.fold_in(rng, index)
                )
                grad_sum = jax.tree.map(lambda a, g: a + weight * g, grad_sum, grads)
                return (loss_sum + weight * loss, weight_sum + weight, grad_sum), None

            zeros = jax.tree.map(jax.numpy.zeros_like, state.trainable)
            init = (0.0, 0.0, zeros)
            (loss_sum, weight_sum, grad_sum), _ = jax.lax.scan(
                micro, init, (jax.numpy.arange(accumulate), batch)
            )
            weight_sum = jax.numpy.maximum(weight_sum, 1.0)
            loss = loss_sum / weight_sum
            grads = jax.tree.map(lambda g: g / weight_sum, grad_sum)
        grads = masked(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        updates = masked(updates)  # weight decay would move the frozen layers too
        new_state = state.replace(
            step=state.step + 1,
            trainable=optax.apply_updates(state.trainable, updates),
            opt_state=opt_state,
        )
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return train_step


def _along_first(layers: np.ndarray, leaf: jax.Array) -> jax.Array:
    """A [depth] mask shaped to multiply a [depth, ...] leaf, in its dtype."""
    return jax.numpy.asarray(layers, leaf.dtype).reshape(-1, *([1] * (leaf.ndim - 1)))


def make_eval_step(loss_fn: LossFn):
    def eval_step(state: TrainState, batch: dict):
        loss, aux = loss_fn(partition.merge(state.trainable, state.frozen), batch, None)
        return {"loss": loss, **aux}

    return eval_step
