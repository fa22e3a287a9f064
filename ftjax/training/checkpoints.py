"""Orbax checkpoints of what trains, and the check that the frozen rest is unchanged.

A checkpoint holds the trainable params, the optimizer state and the step (arrays), plus
JSON: data position, seed and a sha256 of the frozen params. The frozen backbone is not
saved (for LoRA on MiniLM that is 99.7% of the bytes); on resume it is reloaded from its
source and must hash the same. Saves are asynchronous; the manager keeps the `keep`
latest checkpoints plus the best one by an eval metric.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from ftjax.core import partition


class ResumeError(RuntimeError):
    """A checkpoint that does not belong to this run's backbone or config."""


def frozen_hash(frozen: dict[str, Any]) -> str:
    """sha256 over the frozen params' paths, shapes, dtypes and bytes. Host or global
    arrays: a sharded one is gathered one param at a time (from every process when it
    spans several), so the host holds one tensor, not the model."""
    digest = hashlib.sha256()
    for path in sorted(frozen):
        array = _on_host(frozen[path])
        digest.update(f"{path}:{array.shape}:{array.dtype};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _on_host(value: Any) -> np.ndarray:
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(value)


def manager(
    directory: str | Path, keep: int, best_metric: str, higher_is_better: bool = True
) -> ocp.CheckpointManager:
    policy = policies.AnyPreservationPolicy(
        [
            policies.LatestN(n=keep),
            policies.BestN(
                get_metric_fn=lambda metrics: metrics[best_metric],
                reverse=not higher_is_better,
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    # best_fn as well: it makes orbax persist each checkpoint's metrics (so the best one
    # survives a restart) and answer best_step().
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        create=True,
        enable_async_checkpointing=True,
        best_fn=lambda metrics: metrics[best_metric],
        best_mode="max" if higher_is_better else "min",
    )
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def _arrays(state) -> dict[str, Any]:
    # Params keep their readable nested paths; optimizer state is saved as its leaves
    # (its structure comes back from the optimizer on restore).
    return {
        "params": partition.unflatten(state.trainable),
        "opt_state": jax.tree.leaves(state.opt_state),
        "step": state.step,
    }


def save(
    mngr: ocp.CheckpointManager,
    state,
    meta: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> None:
    step = int(state.step)
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(_arrays(state)), meta=ocp.args.JsonSave(meta)
        ),
        metrics=metrics,
    )


@contextlib.contextmanager
def _quiet_absl():
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_same_params(mngr: ocp.CheckpointManager, step: int, state) -> None:
    """Refuses, naming them, trained params the checkpoint and this run do not share
    (e.g. a head built differently by another ftjax version), before orbax would fail
    on the trees with a message about partial restores."""
    where = Path(mngr.directory) / str(step) / "state"
    try:
        with _quiet_absl():  # orbax warns that the step has no _CHECKPOINT_METADATA file
            saved = ocp.StandardCheckpointer().metadata(where).item_metadata["params"]
    except (KeyError, TypeError, ValueError, OSError):
        return  # no readable metadata: the restore itself speaks
    have, want = set(partition.flatten(dict(saved))), set(state.trainable)
    if have != want:
        extra, missing = sorted(have - want), sorted(want - have)
        raise ResumeError(
            f"checkpoint {step} trained params this run does not build ({extra[:4]}) and "
            f"lacks some it does ({missing[:4]}): it was written by a run of other code or "
            "config (since issue 23, GPT-2 and Llama sequence heads have no bias, as "
            "transformers' score); rerun it, or restore it with the ftjax that wrote it"
        )


def restore(mngr: ocp.CheckpointManager, state, step: int | None = None):
    """(state, meta) from checkpoint `step` (default: latest), laid out like `state`."""
    step = mngr.latest_step() if step is None else step
    _check_same_params(mngr, step, state)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _arrays(state)
    )
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
        ),
    )
    arrays, meta = restored["state"], restored["meta"]
    treedef = jax.tree.structure(state.opt_state)
    new_state = state.replace(
        trainable=partition.flatten(arrays["params"]),
        opt_state=jax.tree.unflatten(treedef, arrays["opt_state"]),
        step=arrays["step"],
    )
    return new_state, meta
